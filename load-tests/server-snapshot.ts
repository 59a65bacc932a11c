// What the server says about itself before and after a run (GET /v1/experts, GET /metrics), and the
// difference: the run's cache hit ratio, bytes moved and server-side token counts; and what the kernel
// says about its memory (/proc).
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { parseExposition, sumOf, type Sample } from './metric-samples.js';
import { assertLoopback } from './loopback.js';

/** The part of GET /v1/experts (ExpertCacheStats) the load tests read. */
const expertStats = z.object({
  policy: z.string(),
  budgetBytes: z.number(),
  totalExpertBytes: z.number(),
  residentBytes: z.number(),
  total: z.object({ accesses: z.number(), hits: z.number(), misses: z.number(), prefetchIssued: z.number(), bytesToDevice: z.number(), bytesFromDisk: z.number() }),
});

export type ExpertStatsSnapshot = z.infer<typeof expertStats>;

export interface ServerSnapshot {
  readonly atMs: number;
  readonly experts: ExpertStatsSnapshot;
  /** null when the server has no GET /metrics. */
  readonly metrics: readonly Sample[] | null;
}

export interface ServerDelta {
  readonly accesses: number;
  readonly hits: number;
  readonly hitRatio: number | null;
  /** Experts loaded into the device tier: misses plus prefetches. */
  readonly loads: number;
  /**
   * 1 - loads / accesses: the share of uses that cost no load. Without prefetching it is the hit ratio;
   * with it, prefetched hits were loads all the same. No policy, prefetching or not, beats Belady's here.
   */
  readonly loadsAvoided: number | null;
  readonly bytesToDevice: number;
  readonly bytesFromDisk: number;
  readonly residentBytes: number;
  readonly budgetBytes: number;
  /** From /metrics, when the server has it. */
  readonly metrics: {
    readonly generationTokens: number;
    readonly promptTokens: number;
    readonly requestsByStatus: Readonly<Record<string, number>>;
    /** The run's S-MBU and S-MFU from the step counters; null when the server has none (absent: not read). */
    readonly utilization?: RunUtilization | null;
  } | null;
}

/**
 * MoE-CAP's S-MBU and S-MFU over a run (src/engine/step-utilization.ts): the changes of the server's
 * moe_serve_step_{bytes,flops,seconds}_total over it, against the peaks the server reports
 * (moe_serve_peak_memory_bytes_per_second, moe_serve_peak_flops_per_second). Busy time only: the
 * seconds are the engine steps', not the run's wall time.
 */
export interface RunUtilization {
  readonly stepBytes: number;
  readonly stepFlops: number;
  readonly stepSeconds: number;
  /** null when no step ran. */
  readonly smbu: number | null;
  readonly smfu: number | null;
}

export async function snapshot(baseUrl: string): Promise<ServerSnapshot> {
  const base = assertLoopback(baseUrl);
  const experts = expertStats.parse(await getJson(new URL('/v1/experts', base)));
  const res = await fetch(new URL('/metrics', base));
  const metrics = res.status === 404 ? null : parseExposition(await okText(res));
  if (metrics === null) await res.body?.cancel();
  return { atMs: performance.now(), experts, metrics };
}

export function diff(before: ServerSnapshot, after: ServerSnapshot): ServerDelta {
  const a = after.experts.total;
  const b = before.experts.total;
  const accesses = a.accesses - b.accesses;
  const hits = a.hits - b.hits;
  const loads = a.misses - b.misses + (a.prefetchIssued - b.prefetchIssued);
  return {
    accesses,
    hits,
    hitRatio: accesses === 0 ? null : hits / accesses,
    loads,
    loadsAvoided: accesses === 0 ? null : 1 - loads / accesses,
    bytesToDevice: a.bytesToDevice - b.bytesToDevice,
    bytesFromDisk: a.bytesFromDisk - b.bytesFromDisk,
    residentBytes: after.experts.residentBytes,
    budgetBytes: after.experts.budgetBytes,
    metrics: before.metrics && after.metrics ? metricsDelta(before.metrics, after.metrics) : null,
  };
}

const GENERATION_ROUTES = new Set(['/v1/completions', '/v1/chat/completions', '/v1/stream']);

function metricsDelta(before: readonly Sample[], after: readonly Sample[]): NonNullable<ServerDelta['metrics']> {
  const delta = (name: string, match: Record<string, string> = {}) => sumOf(after, name, match) - sumOf(before, name, match);
  // Generation requests only: the scrapes themselves (GET /v1/experts) are requests too.
  const requestsByStatus: Record<string, number> = {};
  for (const s of after) {
    if (s.name !== 'moe_serve_requests_total' || !GENERATION_ROUTES.has(s.labels.route ?? '')) continue;
    const status = s.labels.status ?? '?';
    requestsByStatus[status] ??= 0;
    requestsByStatus[status] += s.value - (before.find((b) => b.name === s.name && b.labels.route === s.labels.route && b.labels.status === s.labels.status)?.value ?? 0);
  }
  for (const [status, n] of Object.entries(requestsByStatus)) if (n === 0) delete requestsByStatus[status];
  return {
    generationTokens: delta('moe_serve_generation_tokens_total'),
    promptTokens: delta('moe_serve_prompt_tokens_total'),
    requestsByStatus,
    utilization: runUtilization(before, after),
  };
}

export function runUtilization(before: readonly Sample[], after: readonly Sample[]): RunUtilization | null {
  const has = (name: string) => after.some((s) => s.name === name);
  const names = ['moe_serve_step_bytes_total', 'moe_serve_step_flops_total', 'moe_serve_step_seconds_total', 'moe_serve_peak_memory_bytes_per_second', 'moe_serve_peak_flops_per_second'];
  if (!names.every(has)) return null;
  const delta = (name: string) => sumOf(after, name) - sumOf(before, name);
  const stepBytes = delta('moe_serve_step_bytes_total');
  const stepFlops = delta('moe_serve_step_flops_total');
  const stepSeconds = delta('moe_serve_step_seconds_total');
  const peakBytes = sumOf(after, 'moe_serve_peak_memory_bytes_per_second');
  const peakFlops = sumOf(after, 'moe_serve_peak_flops_per_second');
  const busy = stepSeconds > 0;
  return {
    stepBytes,
    stepFlops,
    stepSeconds,
    smbu: busy && peakBytes > 0 ? stepBytes / stepSeconds / peakBytes : null,
    smfu: busy && peakFlops > 0 ? stepFlops / stepSeconds / peakFlops : null,
  };
}

/**
 * Waits until the server has finished everything sent to it (requests cut at a run's end are cancelled
 * at the engine's next step), so that one run's work is not counted in the next: with /metrics, until
 * nothing runs or waits; without, until the expert access count stops moving.
 */
export async function waitIdle(baseUrl: string, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  let last = -1;
  while (performance.now() < deadline) {
    const s = await snapshot(baseUrl);
    const busy = s.metrics ? sumOf(s.metrics, 'moe_serve_requests_running') + sumOf(s.metrics, 'moe_serve_requests_waiting') : null;
    if (busy === 0 || (busy === null && s.experts.total.accesses === last)) return;
    last = s.experts.total.accesses;
    await sleep(250);
  }
  throw new Error(`the server at ${baseUrl} was still busy ${timeoutMs} ms after the run ended`);
}

/**
 * A process's resident set size in bytes, from VmRSS in /proc/<pid>/status (Linux); null where there is
 * no /proc or the process has gone.
 */
export async function residentSetBytes(pid: number): Promise<number | null> {
  let status: string;
  try {
    status = await readFile(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kb = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  return kb ? Number(kb[1]) * 1024 : null;
}

async function getJson(url: URL): Promise<unknown> {
  return JSON.parse(await okText(await fetch(url))) as unknown;
}

async function okText(res: Response): Promise<string> {
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET ${res.url}: HTTP ${res.status}: ${text.slice(0, 200)}`);
  return text;
}
