// `moe-serve serve`: the OpenAI-compatible HTTP and WebSocket server on the batching engine.
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { buildApp, type Serving } from '../api/build-app.js';
import { InFlight, shutDown } from '../api/graceful-shutdown.js';
import { DEFAULT_CLIENT_LIMITS, type ClientLimits } from '../api/output-watch.js';
import { availableMemoryBytes, defaultKvBudgetBytes, kvTokensFor } from '../engine/kv-budget.js';
import { BatchEngine } from '../engine/batch-engine.js';
import { PrefixCache } from '../engine/prefix-cache.js';
import { MoeModel } from '../engine/moe-model.js';
import type { TraceWriter } from '../experts/trace-writer.js';
import { PEAK_OPTIONS, PEAK_OPTIONS_HELP, peakOptions } from './bench-peaks.js';
import { argsFromEnv, blameEnv, ENV_PREFIX, unknownEnvVars } from './env-options.js';
import { loadProgressBar } from './load-progress.js';
import { intFlag, loadOptions, numberFlag, MODEL_OPTIONS, MODEL_OPTIONS_HELP, modelOptions, parseFlag, SCHEDULER_OPTIONS, SCHEDULER_OPTIONS_HELP, schedulerOptions } from './model-options.js';

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
  --drain-seconds S  on SIGTERM/SIGINT, let running requests finish for up to S seconds, then cancel
                     them (each stream still gets its final event) and exit (default 30)
${MODEL_OPTIONS_HELP}

${SCHEDULER_OPTIONS_HELP}
  --kv-cache-mb N              KV-cache memory for all running requests; each reserves its prompt plus
                               max_tokens when admitted, and waits while that does not fit (default: every
                               --max-seqs slot at the full context, at most half the memory left after loading)
  --prefix-cache-mb N          KV of earlier prompts kept for later requests that start the same way (a chat's
                               system prompt and history): their prompt is not computed again. 0 turns it
                               off (default: a quarter of the KV budget; CPU only, off on GPU providers)

Utilization (GET /metrics: moe_serve_smbu, moe_serve_smfu and the step counters behind them):
${PEAK_OPTIONS_HELP}

Clients (one client = one peer address):
  --client-max-running N       most requests one client has running; more of its requests wait while
                               other clients' go first (default: --max-seqs)
  --client-max-queued N        most requests one client has waiting; beyond it 429 (default: half of --max-queue)
  --socket-max-requests N      most requests running or waiting on one WebSocket; beyond it 429 (default ${DEFAULT_CLIENT_LIMITS.maxSocketRequests})
  --client-buffer-kb N         unsent output a connection may hold before it counts as not reading (default ${DEFAULT_CLIENT_LIMITS.bufferBytes / 1024})
  --stall-seconds S            a connection over that for S seconds has its requests cancelled and is
                               closed (default ${DEFAULT_CLIENT_LIMITS.stallMs / 1000})

Every option can also be set in the environment: ${ENV_PREFIX}<OPTION> with dashes as underscores,
e.g. ${ENV_PREFIX}PORT=9000, ${ENV_PREFIX}EXPERT_CACHE_MB=512, ${ENV_PREFIX}LOG=1. The command line wins.
`;

const SERVE_OPTIONS = {
  ...MODEL_OPTIONS,
  ...SCHEDULER_OPTIONS,
  ...PEAK_OPTIONS,
  host: { type: 'string', default: '127.0.0.1' },
  port: { type: 'string', default: '8000' },
  'api-key': { type: 'string' },
  'model-name': { type: 'string' },
  cors: { type: 'string' },
  trace: { type: 'string' },
  log: { type: 'boolean', default: false },
  'drain-seconds': { type: 'string', default: '30' },
  'kv-cache-mb': { type: 'string' },
  'prefix-cache-mb': { type: 'string' },
  'client-max-running': { type: 'string' },
  'client-max-queued': { type: 'string' },
  'socket-max-requests': { type: 'string', default: String(DEFAULT_CLIENT_LIMITS.maxSocketRequests) },
  'client-buffer-kb': { type: 'string', default: String(DEFAULT_CLIENT_LIMITS.bufferBytes / 1024) },
  'stall-seconds': { type: 'string', default: String(DEFAULT_CLIENT_LIMITS.stallMs / 1000) },
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
  const apiKey = values['api-key'] === undefined ? undefined : parseFlag('api-key', z.string().trim().min(1, 'the key is empty; leave --api-key out to serve without authentication'), values['api-key']);
  const drainMs = parseFlag('drain-seconds', numberFlag(0, 3600), values['drain-seconds']) * 1000;
  const kvCacheMb = values['kv-cache-mb'] === undefined ? undefined : parseFlag('kv-cache-mb', numberFlag(1, 1 << 30), values['kv-cache-mb']);
  const prefixCacheMb = values['prefix-cache-mb'] === undefined ? undefined : parseFlag('prefix-cache-mb', numberFlag(0, 1 << 30), values['prefix-cache-mb']);
  const maxSeqsPerClient = values['client-max-running'] === undefined ? scheduler.maxSeqs : parseFlag('client-max-running', intFlag(1), values['client-max-running']);
  const maxQueuePerClient = values['client-max-queued'] === undefined ? Math.ceil(scheduler.maxQueue / 2) : parseFlag('client-max-queued', intFlag(1), values['client-max-queued']);
  const clientLimits: ClientLimits = {
    maxSocketRequests: parseFlag('socket-max-requests', intFlag(1), values['socket-max-requests']),
    bufferBytes: parseFlag('client-buffer-kb', intFlag(1), values['client-buffer-kb']) * 1024,
    stallMs: parseFlag('stall-seconds', numberFlag(0.1, 3600), values['stall-seconds']) * 1000,
  };
  const peaks = peakOptions(values);
  const port = parseFlag('port', intFlag(0).max(65535), values.port);
  const host = parseFlag('host', z.string().min(1), values.host);
  const corsOrigins = values.cors === undefined ? undefined : parseCors(values.cors);
  const modelName = values['model-name'] ?? basename(opts.modelDir);
  // Listen first, so that /health answers 503 while the weights load and 200 after.
  let serving: Serving | undefined;
  let draining = false;
  const inFlight = new InFlight();
  const signalled = waitForSignal(() => serving === undefined);
  const app = buildApp({ serving: () => serving, modelName, apiKey, corsOrigins, logger: values.log, clientLimits, inFlight, draining: () => draining });
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
  // The expert tiers fill as requests come: the KV default leaves them what they may still grow by.
  const loaded = model.experts.stats();
  const expertGrowth = Math.max(0, model.memoryPlan.expertHostMemoryBytes - loaded.hostResidentBytes - loaded.residentBytes * model.memoryPlan.deviceHostCost);
  const kvBudgetBytes =
    kvCacheMb === undefined ? defaultKvBudgetBytes(model.spec, scheduler.maxSeqs, Math.max(0, availableMemoryBytes() - expertGrowth)) : kvCacheMb * 2 ** 20;
  for (const note of model.memoryPlan.notes) process.stderr.write(`memory plan: ${note}\n`);
  const maxKvTokens = kvTokensFor(kvBudgetBytes, model.spec);
  if (maxKvTokens < model.spec.maxPositions) {
    process.stderr.write(`moe-serve serve: warning: --kv-cache-mb holds ${maxKvTokens} tokens, less than one full context (${model.spec.maxPositions}); longer requests get 400\n`);
  }
  const prefixCacheBytes = model.runtime.onGpu ? 0 : Math.floor(prefixCacheMb === undefined ? kvBudgetBytes / 4 : prefixCacheMb * 2 ** 20);
  const prefixCache = prefixCacheBytes >= 1 ? new PrefixCache(prefixCacheBytes) : undefined;
  const engine = new BatchEngine(model, { ...scheduler, maxKvTokens, maxSeqsPerClient, maxQueuePerClient }, { prefixCache, peaks });
  const observer = trace ? (promptIds: readonly number[]) => (trace as TraceWriter).request(promptIds) : undefined;
  // /health is open to anyone: the error's code, not the trace file's path.
  const warnings = () => (trace?.error ? [`the routing trace is off after a write error (${errorCode(trace.error.cause)}); requests are served without it`] : []);
  serving = observer ? { model, engine, observer, warnings } : { model, engine };
  const forms = model.computeForms;
  process.stderr.write(
    `model loaded: serving '${modelName}' on ${address}; KV budget ${(kvBudgetBytes / 2 ** 20).toFixed(0)} MiB (${maxKvTokens} tokens); ` +
      `prefix cache ${prefixCache ? `${(prefixCacheBytes / 2 ** 20).toFixed(0)} MiB` : 'off'}; ` +
      `admission ${scheduler.expertAware ? `expert-aware (pass-over limit ${scheduler.expertAware.passOverLimit})` : 'oldest first'}; ` +
      `experts ${forms.experts} (${forms.expertRoute} route${model.hybrid ? `, misses placed: ${model.hybrid.mode}` : ''}), attention ${forms.attention}, other weights ${forms.weights}\n`,
  );
  await signalled.first;
  const log = (line: string) => process.stderr.write(`${line}\n`);
  await shutDown({ app, engine, inFlight, drainMs, startDraining: () => (draining = true), hurry: signalled.second, log });
  await trace?.[Symbol.asyncDispose]();
  await model[Symbol.asyncDispose]();
}

/**
 * The first SIGTERM or SIGINT starts a graceful shutdown; a second one cuts its drain short. While the
 * model loads there is nothing to drain (and loading cannot be interrupted): the process exits at once.
 */
function waitForSignal(loading: () => boolean): { first: Promise<void>; second: Promise<void> } {
  let count = 0;
  let onFirst = () => undefined as void;
  let onSecond = () => undefined as void;
  const first = new Promise<void>((r) => (onFirst = r));
  const second = new Promise<void>((r) => (onSecond = r));
  const handler = (signal: NodeJS.Signals) => {
    if (loading()) {
      process.stderr.write(`${signal} while loading the model: exiting\n`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    if (++count === 1) onFirst();
    else onSecond();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return { first, second };
}

function errorCode(err: Error): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : err.name;
}

function parseCors(value: string): readonly string[] | true {
  if (value.trim() === '*') return true;
  const origins = value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  return parseFlag('cors', z.array(z.url({ message: 'expected * or comma-separated origins such as https://example.com' })).min(1, 'expected * or at least one origin'), origins);
}
