// A soak: one running server kept saturated for a long time by a fixed mix of clients (soak-clients.ts),
// its memory and event-loop delay sampled all along, every request's outcome counted, then checked:
// no 5xx, no lost request, no other error, RSS flat after the warm-up, nothing left running after the
// drain.
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRng } from '../src/engine/sampler.js';
import { sumOf } from './metric-samples.js';
import { eventLoopDelayOf, type Responsiveness } from './responsiveness.js';
import { runSoakClient, SOAK_CLIENT_KINDS, SOAK_MIX, type SoakClientKind, type SoakRequestRecord } from './soak-clients.js';
import { emptyCounts, type OutcomeCounts } from './soak-outcome.js';
import { diff, residentSetBytes, snapshot, waitIdle, type ServerDelta } from './server-snapshot.js';

export interface SoakSpec {
  readonly durationMs: number;
  readonly clients: number;
  /** The client kinds in the mix (stopped readers are left out against a server without per-client limits). */
  readonly kinds: readonly SoakClientKind[];
  readonly maxTokens: number;
  readonly contextTokens: number;
  readonly seed: number;
}

/** One look at the server, every sampleIntervalMs. */
export interface SoakSample {
  /** Since the soak's start, ms; past durationMs the soak is draining. */
  readonly atMs: number;
  /** The server process's VmRSS; null without /proc. */
  readonly rssBytes: number | null;
  /** From GET /metrics (prom-client's defaults). */
  readonly heapUsedBytes: number | null;
  readonly externalBytes: number | null;
  /** The server's event-loop delay since the previous sample (prom-client restarts it at every scrape). */
  readonly eventLoopDelayMs: NonNullable<Responsiveness['eventLoopDelayMs']> | null;
  readonly running: number | null;
  readonly waiting: number | null;
  /** Tokens generated since the server started. */
  readonly generationTokens: number | null;
}

export interface SoakRun {
  readonly spec: SoakSpec;
  readonly sampleIntervalMs: number;
  readonly clientsByKind: Readonly<Record<SoakClientKind, number>>;
  /** From the first request sent to the last answer. */
  readonly wallMs: number;
  readonly requests: number;
  readonly outcomesByKind: Readonly<Record<SoakClientKind, OutcomeCounts>>;
  readonly tokensByKind: Readonly<Record<SoakClientKind, number>>;
  /** Requests cut by the server, by client kind and how their connection ended: a WebSocket close code, or eof. */
  readonly cutCloseCodes: Readonly<Record<string, number>>;
  /** Requests that ended lost, in a 5xx or in another error: the first MAX_FAILURES_KEPT, with their events. */
  readonly failures: readonly SoakRequestRecord[];
  readonly samples: readonly SoakSample[];
  /** Once the last answer was in and the server had nothing running or waiting (or had given up waiting). */
  readonly afterDrain: SoakSample;
  /** Milliseconds from the last answer until the server had nothing running or waiting; null if it never did. */
  readonly idleAfterMs: number | null;
  /** GET /v1/experts and GET /metrics, change over the whole soak. */
  readonly server: ServerDelta;
}

/** How long past the soak's end a request may take before it counts as lost. */
export const SOAK_GRACE_MS = 120_000;
const MAX_FAILURES_KEPT = 50;
/** How long after the last answer the server may still be busy. */
export const IDLE_TIMEOUT_MS = 30_000;

/** Samples every 1/20 of the soak, between 1 s and 10 s apart. */
export function sampleIntervalMs(durationMs: number): number {
  return Math.min(10_000, Math.max(1000, durationMs / 20));
}

/**
 * How many clients of each kind make up `total`: one of each of `kinds`, the rest by their shares in
 * SOAK_MIX (largest remainder); 0 of the kinds left out.
 */
export function allocateClients(total: number, kinds: readonly SoakClientKind[]): Record<SoakClientKind, number> {
  if (total < kinds.length) throw new RangeError(`a soak needs at least ${kinds.length} clients, one of each kind; got ${total}`);
  const free = total - kinds.length;
  const shareSum = kinds.reduce((s, k) => s + SOAK_MIX[k].share, 0);
  const exact = kinds.map((k) => (free * SOAK_MIX[k].share) / shareSum);
  const counts = exact.map((x) => 1 + Math.floor(x));
  const byRemainder = exact.map((x, i) => ({ i, r: x - Math.floor(x) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (let left = total - counts.reduce((s, n) => s + n, 0), j = 0; left > 0; left--, j++) counts[byRemainder[j]!.i]!++;
  const out = Object.fromEntries(SOAK_CLIENT_KINDS.map((k) => [k, 0])) as Record<SoakClientKind, number>;
  kinds.forEach((k, i) => (out[k] = counts[i]!));
  return out;
}

export async function runSoak(baseUrl: string, serverPid: number, model: string, spec: SoakSpec, progress: (line: string) => void): Promise<SoakRun> {
  const intervalMs = sampleIntervalMs(spec.durationMs);
  const clientsByKind = allocateClients(spec.clients, spec.kinds);
  const outcomesByKind = Object.fromEntries(SOAK_CLIENT_KINDS.map((k) => [k, emptyCounts()])) as Record<SoakClientKind, OutcomeCounts>;
  const tokensByKind = Object.fromEntries(SOAK_CLIENT_KINDS.map((k) => [k, 0])) as Record<SoakClientKind, number>;
  const cutCloseCodes: Record<string, number> = {};
  const failures: SoakRequestRecord[] = [];
  let requests = 0;
  const record = (r: SoakRequestRecord) => {
    requests++;
    outcomesByKind[r.kind][r.outcome]++;
    tokensByKind[r.kind] += r.tokens;
    if (r.outcome === 'cut-slow') {
      const close = r.events.find((e) => e.type === 'closed');
      const how = close?.type === 'closed' && close.code !== undefined ? `${r.kind} ${close.code}` : `${r.kind} eof`;
      cutCloseCodes[how] = (cutCloseCodes[how] ?? 0) + 1;
    }
    if ((r.outcome === 'lost' || r.outcome === 'server-error' || r.outcome === 'other-error') && failures.length < MAX_FAILURES_KEPT) failures.push(r);
  };

  // This scrape also restarts the server's event-loop histogram, so the first sample covers the soak only.
  const before = await snapshot(baseUrl);
  const startedAt = performance.now();
  const sendUntil = startedAt + spec.durationMs;
  const sample = () => takeSample(baseUrl, serverPid, performance.now() - startedAt);
  const samples: SoakSample[] = [];
  let clientsDone = false;
  const sampler = (async () => {
    for (let next = startedAt; !clientsDone; next += intervalMs) {
      await sleep(Math.max(0, next - performance.now()));
      if (clientsDone) break;
      const s = await sample();
      samples.push(s);
      progress(progressLine(s, spec.durationMs, requests, outcomesByKind));
    }
  })();

  const master = createRng(spec.seed);
  const ctx = { baseUrl, model, startedAt, sendUntil, deadline: sendUntil + SOAK_GRACE_MS, maxTokens: spec.maxTokens, contextTokens: spec.contextTokens, record };
  const clients = SOAK_CLIENT_KINDS.flatMap((kind) => Array.from({ length: clientsByKind[kind] }, () => runSoakClient(kind, ctx, createRng(Math.floor(master.next() * 2 ** 31)))));
  await Promise.all(clients);
  const lastAnswer = performance.now();
  clientsDone = true;
  await sampler;

  let idleAfterMs: number | null = null;
  try {
    await waitIdle(baseUrl, IDLE_TIMEOUT_MS);
    idleAfterMs = performance.now() - lastAnswer;
  } catch {
    // Still busy: reported as a failed check, with the running and waiting counts of afterDrain.
  }
  const afterDrain = await sample();
  const after = await snapshot(baseUrl);
  return {
    spec,
    sampleIntervalMs: intervalMs,
    clientsByKind,
    wallMs: lastAnswer - startedAt,
    requests,
    outcomesByKind,
    tokensByKind,
    cutCloseCodes,
    failures,
    samples,
    afterDrain,
    idleAfterMs,
    server: diff(before, after),
  };
}

async function takeSample(baseUrl: string, pid: number, atMs: number): Promise<SoakSample> {
  const [rssBytes, s] = await Promise.all([residentSetBytes(pid), snapshot(baseUrl)]);
  const m = s.metrics;
  const read = (name: string) => (m ? sumOf(m, name) : null);
  return {
    atMs,
    rssBytes,
    heapUsedBytes: read('nodejs_heap_size_used_bytes'),
    externalBytes: read('nodejs_external_memory_bytes'),
    eventLoopDelayMs: m ? eventLoopDelayOf(m) : null,
    running: read('moe_serve_requests_running'),
    waiting: read('moe_serve_requests_waiting'),
    generationTokens: read('moe_serve_generation_tokens_total'),
  };
}

function progressLine(s: SoakSample, durationMs: number, requests: number, outcomes: Readonly<Record<SoakClientKind, OutcomeCounts>>): string {
  const total = (o: keyof OutcomeCounts) => SOAK_CLIENT_KINDS.reduce((n, k) => n + outcomes[k][o], 0);
  const mib = (b: number | null) => (b === null ? '-' : (b / 2 ** 20).toFixed(1));
  return (
    `soak ${(s.atMs / 1000).toFixed(0)}/${durationMs / 1000} s: ${requests} requests ended (lost ${total('lost')}, 5xx ${total('server-error')}, ` +
    `other errors ${total('other-error')}), RSS ${mib(s.rssBytes)} MiB, event-loop p99 ${s.eventLoopDelayMs?.p99.toFixed(1) ?? '-'} ms, ` +
    `running ${s.running ?? '-'}, waiting ${s.waiting ?? '-'}\n`
  );
}

/** What the kernel buffers per connection before the server sees unsent output: the sender's most plus the receiver's default. */
export async function kernelSocketBufferBytes(): Promise<number | null> {
  const third = async (path: string) => Number((await readFile(path, 'utf8')).trim().split(/\s+/)[2]);
  const second = async (path: string) => Number((await readFile(path, 'utf8')).trim().split(/\s+/)[1]);
  try {
    return (await third('/proc/sys/net/ipv4/tcp_wmem')) + (await second('/proc/sys/net/ipv4/tcp_rmem'));
  } catch {
    return null;
  }
}
