// `moe-serve serve`: the OpenAI-compatible HTTP server on the batching engine.
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { buildApp, type Serving } from '../api/build-app.js';
import { BatchEngine } from '../engine/batch-engine.js';
import { MoeModel } from '../engine/moe-model.js';
import { intFlag, MODEL_OPTIONS, MODEL_OPTIONS_HELP, modelOptions, parseFlag, SCHEDULER_OPTIONS, SCHEDULER_OPTIONS_HELP, schedulerOptions } from './model-options.js';

export const SERVE_HELP = `Usage: moe-serve serve [options]

Serves the model over an OpenAI-compatible HTTP API (POST /v1/completions, POST /v1/chat/completions,
GET /v1/models, GET /health).

  --host HOST        address to listen on (default 127.0.0.1)
  --port N           port (default 8000)
  --api-key KEY      require Authorization: Bearer KEY (default: env MOE_SERVE_API_KEY, else none)
  --model-name NAME  the model id clients send (default: the model directory's name)
  --log              log every request
${MODEL_OPTIONS_HELP}

${SCHEDULER_OPTIONS_HELP}
`;

export async function serveCommand(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      ...MODEL_OPTIONS,
      ...SCHEDULER_OPTIONS,
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8000' },
      'api-key': { type: 'string' },
      'model-name': { type: 'string' },
      log: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(SERVE_HELP);
    return;
  }
  const opts = modelOptions(values);
  const scheduler = schedulerOptions(values);
  const port = parseFlag('port', intFlag(0).max(65535), values.port);
  const host = parseFlag('host', z.string().min(1), values.host);
  const apiKey = values['api-key'] ?? process.env.MOE_SERVE_API_KEY;
  // Listen first, so that /health answers 503 while the weights load and 200 after.
  let serving: Serving | undefined;
  const app = buildApp({ serving: () => serving, modelName: values['model-name'] ?? basename(opts.modelDir), apiKey, logger: values.log });
  const address = await app.listen({ host, port });
  process.stderr.write(`moe-serve listening on ${address}; loading ${opts.modelDir} on ${opts.device}...\n`);
  const model = await MoeModel.load(opts.modelDir, { device: opts.device, cpuThreads: opts.cpuThreads, experts: opts.experts });
  const engine = new BatchEngine(model, scheduler);
  serving = { model, engine };
  process.stderr.write(`model loaded: serving '${values['model-name'] ?? basename(opts.modelDir)}'\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  process.stderr.write('shutting down: finishing nothing new, cancelling running requests\n');
  await app.close();
  await engine[Symbol.asyncDispose]();
  await model[Symbol.asyncDispose]();
}
