// `moe-serve serve`: the OpenAI-compatible HTTP and WebSocket server on the batching engine.
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { buildApp, type Serving } from '../api/build-app.js';
import { BatchEngine } from '../engine/batch-engine.js';
import { MoeModel } from '../engine/moe-model.js';
import type { TraceWriter } from '../experts/trace-writer.js';
import { argsFromEnv, blameEnv, ENV_PREFIX, unknownEnvVars } from './env-options.js';
import { loadProgressBar } from './load-progress.js';
import { intFlag, loadOptions, MODEL_OPTIONS, MODEL_OPTIONS_HELP, modelOptions, parseFlag, SCHEDULER_OPTIONS, SCHEDULER_OPTIONS_HELP, schedulerOptions } from './model-options.js';

export const SERVE_HELP = `Usage: moe-serve serve [options]

Serves the model over an OpenAI-compatible API: POST /v1/completions, POST /v1/chat/completions (SSE
streaming), GET /v1/models, WebSocket GET /v1/stream, GET /v1/experts, GET /metrics, GET /health.
openapi.yaml describes them.

  --host HOST        address to listen on (default 127.0.0.1)
  --port N           port; 0 picks a free one (default 8000)
  --api-key KEY      require Authorization: Bearer KEY on every route but /health and /metrics
  --model-name NAME  the model id clients send (default: the model directory's name)
  --cors ORIGINS     allow these origins (comma-separated), or * for any (default: no CORS headers)
  --trace FILE       write every request's routing trace (JSON Lines) for \`moe-serve replay\`
  --log              log every request (fastify's JSON logger, on stdout)
${MODEL_OPTIONS_HELP}

${SCHEDULER_OPTIONS_HELP}

Every option can also be set in the environment: ${ENV_PREFIX}<OPTION> with dashes as underscores,
e.g. ${ENV_PREFIX}PORT=9000, ${ENV_PREFIX}EXPERT_CACHE_MB=512, ${ENV_PREFIX}LOG=1. The command line wins.
`;

const SERVE_OPTIONS = {
  ...MODEL_OPTIONS,
  ...SCHEDULER_OPTIONS,
  host: { type: 'string', default: '127.0.0.1' },
  port: { type: 'string', default: '8000' },
  'api-key': { type: 'string' },
  'model-name': { type: 'string' },
  cors: { type: 'string' },
  trace: { type: 'string' },
  log: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

export async function serveCommand(argv: readonly string[]): Promise<void> {
  const env = argsFromEnv(SERVE_OPTIONS);
  try {
    await serve([...env.args, ...argv]);
  } catch (err) {
    throw blameEnv(err, argv, env.sources);
  }
}

async function serve(args: readonly string[]): Promise<void> {
  const { values } = parseArgs({ args: [...args], options: SERVE_OPTIONS, strict: true });
  if (values.help) {
    process.stdout.write(SERVE_HELP);
    return;
  }
  for (const name of unknownEnvVars(SERVE_OPTIONS)) process.stderr.write(`moe-serve serve: warning: ${name} is set but is no option's variable; ignored\n`);
  const opts = modelOptions(values);
  const scheduler = schedulerOptions(values);
  const port = parseFlag('port', intFlag(0).max(65535), values.port);
  const host = parseFlag('host', z.string().min(1), values.host);
  const corsOrigins = values.cors === undefined ? undefined : parseCors(values.cors);
  const modelName = values['model-name'] ?? basename(opts.modelDir);
  // Listen first, so that /health answers 503 while the weights load and 200 after.
  let serving: Serving | undefined;
  const app = buildApp({ serving: () => serving, modelName, apiKey: values['api-key'], corsOrigins, logger: values.log });
  const address = await app.listen({ host, port });
  process.stderr.write(`moe-serve listening on ${address}; loading ${opts.modelDir} on ${opts.device}...\n`);
  const progress = loadProgressBar();
  const experts = values.trace === undefined ? opts.experts : { ...opts.experts, lookaheadDepth: 2 };
  let model: MoeModel;
  try {
    model = await MoeModel.load(opts.modelDir, { ...loadOptions(opts), experts, onProgress: (stage, done, total) => progress.update(stage, done, total) });
  } catch (err) {
    progress.stop();
    await app.close();
    throw err;
  }
  progress.stop();
  let trace: TraceWriter | null = null;
  if (values.trace !== undefined) trace = await model.openTrace(values.trace);
  const engine = new BatchEngine(model, scheduler);
  const observer = trace ? () => (trace as TraceWriter).request() : undefined;
  serving = observer ? { model, engine, observer } : { model, engine };
  process.stderr.write(`model loaded: serving '${modelName}' on ${address}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  process.stderr.write('shutting down: refusing new requests, cancelling running ones\n');
  await app.close();
  await engine[Symbol.asyncDispose]();
  await trace?.[Symbol.asyncDispose]();
  await model[Symbol.asyncDispose]();
}

function parseCors(value: string): readonly string[] | true {
  if (value.trim() === '*') return true;
  const origins = value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  return parseFlag('cors', z.array(z.url({ message: 'expected * or comma-separated origins such as https://example.com' })).min(1, 'expected * or at least one origin'), origins);
}
