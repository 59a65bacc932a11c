// One measured run: a client kind at a concurrency against a running server, with the server's own
// numbers scraped before and after, so the result carries hit ratio, bytes moved and tokens/s.
import { drive, type ArrivalMode } from './arrivals.js';
import { runHttpScenario } from './http-scenario.js';
import type { ClientKind, SchedulingKind } from './options.js';
import { LOAD_PROMPTS } from './prompts.js';
import { countOutcomes, errorCount, OVERLOADED, summarizeLatencies, type LatencySummaries, type RequestRecord } from './request-record.js';
import { eventLoopDelaySinceLastScrape, probeHealth, type Responsiveness } from './responsiveness.js';
import { diff, snapshot, waitIdle, type ServerDelta } from './server-snapshot.js';
import { sseCompletion, WsStreamConnection, type CompletionParams } from './stream-client.js';

export interface RunSpec {
  readonly policy: string;
  readonly budgetPercent: number;
  /** The server's admission order (fifo, or expert: serve --expert-aware-scheduling). */
  readonly scheduling: SchedulingKind;
  readonly client: ClientKind;
  readonly concurrency: number;
  readonly mode: ArrivalMode;
  readonly ratePerSecond?: number;
  readonly durationMs: number;
  readonly maxRequests: number;
  readonly maxTokens: number;
  readonly seed: number;
}

export interface RunResult extends RunSpec {
  /** The streaming clients' arrival mode; autocannon is always a closed loop. */
  readonly arrivals: string;
  readonly wallMs: number;
  readonly requests: number;
  readonly completed: number;
  readonly outputTokens: number;
  /** Completion tokens received by the client / wall time. */
  readonly tokensPerSecond: number;
  /** Generation tokens counted by the server's /metrics / wall time; null without /metrics. */
  readonly serverTokensPerSecond: number | null;
  readonly latency: LatencySummaries;
  /** Requests by outcome (HTTP status, 'network', 'ws:<code>', 'cancelled'). */
  readonly outcomes: Readonly<Record<string, number>>;
  readonly rejected429: number;
  /** Failures other than deliberate overload (429) and requests cut at the hard deadline. */
  readonly errors: number;
  readonly server: ServerDelta;
  /** /health latency and the server's event-loop delay during the run. */
  readonly responsiveness: Responsiveness;
  /** Belady's hit ratio on the routing-trace lines of this run, at its budget; null without a trace. */
  beladyHitRatio: number | null;
}

/** Grace after the time bound for requests already sent; past it they are cancelled. */
const HARD_STOP_GRACE_MS = 60_000;

export async function runLoad(baseUrl: string, model: string, spec: RunSpec): Promise<RunResult> {
  const params = (i: number): CompletionParams => ({
    model,
    prompt: LOAD_PROMPTS[i % LOAD_PROMPTS.length]!.text,
    maxTokens: spec.maxTokens,
    temperature: 0,
    seed: spec.seed + i,
  });
  await waitIdle(baseUrl);
  const before = await snapshot(baseUrl);
  const health = probeHealth(baseUrl);
  const { records, wallMs } = spec.client === 'http' ? await runHttp(baseUrl, spec, params) : await runStreaming(baseUrl, spec, params);
  const responsiveness: Responsiveness = { healthMs: await health.stop(), eventLoopDelayMs: await eventLoopDelaySinceLastScrape(baseUrl) };
  await waitIdle(baseUrl);
  const after = await snapshot(baseUrl);
  const server = diff(before, after);
  const outcomes = countOutcomes(records);
  const outputTokens = records.reduce((n, r) => n + r.outputTokens, 0);
  return {
    ...spec,
    arrivals: spec.client === 'http' ? 'closed (autocannon connections)' : spec.mode === 'closed' ? 'closed' : `poisson ${spec.ratePerSecond}/s`,
    wallMs,
    requests: records.length,
    completed: outcomes['200'] ?? 0,
    outputTokens,
    tokensPerSecond: outputTokens / (wallMs / 1000),
    serverTokensPerSecond: server.metrics ? server.metrics.generationTokens / (wallMs / 1000) : null,
    latency: summarizeLatencies(records, spec.client !== 'http'),
    outcomes,
    rejected429: outcomes[OVERLOADED] ?? 0,
    errors: errorCount(outcomes),
    server,
    responsiveness,
    beladyHitRatio: null,
  };
}

function runHttp(baseUrl: string, spec: RunSpec, params: (i: number) => CompletionParams) {
  return runHttpScenario({ baseUrl, connections: spec.concurrency, durationMs: spec.durationMs, maxRequests: spec.maxRequests, params, timeoutSeconds: HARD_STOP_GRACE_MS / 1000 });
}

async function runStreaming(baseUrl: string, spec: RunSpec, params: (i: number) => CompletionParams): Promise<{ records: RequestRecord[]; wallMs: number }> {
  const records: RequestRecord[] = [];
  const hardStop = AbortSignal.timeout(spec.durationMs + HARD_STOP_GRACE_MS);
  // WebSocket: one socket per concurrency slot, request i on socket i mod C (several requests may share one).
  const sockets = spec.client === 'ws' ? await Promise.all(Array.from({ length: spec.concurrency }, () => WsStreamConnection.open(baseUrl))) : [];
  try {
    const { wallMs } = await drive(
      { mode: spec.mode, concurrency: spec.concurrency, ratePerSecond: spec.ratePerSecond, durationMs: spec.durationMs, maxRequests: spec.maxRequests, seed: spec.seed },
      async (i) => {
        const p = params(i);
        records.push(spec.client === 'ws' ? await sockets[i % sockets.length]!.complete(p, hardStop) : await sseCompletion(baseUrl, p, hardStop));
      },
    );
    return { records, wallMs };
  } finally {
    await Promise.all(sockets.map((s) => s[Symbol.asyncDispose]()));
  }
}
