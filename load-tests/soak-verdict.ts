// What a soak's numbers add up to: RSS at the start (after warm-up) and the end, the event-loop delay,
// and the checks that decide its exit status. Pure functions of the run, so the bounds live here only.
import { percentile } from './percentiles.js';
import { SOAK_CLIENT_KINDS } from './soak-clients.js';
import { emptyCounts, SOAK_OUTCOMES, type OutcomeCounts } from './soak-outcome.js';
import { IDLE_TIMEOUT_MS, type SoakRun, type SoakSample } from './soak-run.js';

/** RSS may grow by less than this from the end of warm-up to the end of the soak. */
export const RSS_GROWTH_LIMIT = 0.1;
/** Warm-up: the first 10% of the soak, at most 2 minutes (KV caches, V8's heap and the allocators settle). */
export function warmUpMs(durationMs: number): number {
  return Math.min(0.1 * durationMs, 120_000);
}
/** RSS at the start and at the end is the mean of this many samples, so one GC's moment does not decide. */
const RSS_WINDOW_SAMPLES = 3;

export interface RssSummary {
  readonly warmUpMs: number;
  /** Mean of the first samples after warm-up. */
  readonly startBytes: number;
  /** Mean of the last samples before the soak stopped sending. */
  readonly endBytes: number;
  /** endBytes / startBytes - 1. */
  readonly growth: number;
  /** Largest sample after warm-up, the drain included. */
  readonly maxBytes: number;
  /** Samples averaged at each end. */
  readonly windowSamples: number;
}

/** Null when there are no RSS samples after warm-up (no /proc). */
export function rssSummary(samples: readonly SoakSample[], durationMs: number): RssSummary | null {
  const warmUp = warmUpMs(durationMs);
  const after = samples.filter((s) => s.atMs >= warmUp && s.rssBytes !== null);
  const underLoad = after.filter((s) => s.atMs <= durationMs).map((s) => s.rssBytes!);
  if (underLoad.length === 0) return null;
  const n = Math.max(1, Math.min(RSS_WINDOW_SAMPLES, Math.floor(underLoad.length / 2)));
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const startBytes = mean(underLoad.slice(0, n));
  const endBytes = mean(underLoad.slice(-n));
  return { warmUpMs: warmUp, startBytes, endBytes, growth: endBytes / startBytes - 1, maxBytes: Math.max(...after.map((s) => s.rssBytes!)), windowSamples: n };
}

export interface EventLoopSummary {
  /** Sampling windows under load (each sampleIntervalMs long). */
  readonly windows: number;
  /** The largest p99 of a window: the whole soak's p99 is at most this (every window has 99% of its delays below it). */
  readonly p99MaxMs: number;
  readonly p99MedianMs: number;
  /** The largest single delay seen. */
  readonly maxMs: number;
}

/** Over the windows that end while the soak sends (the first starts at its start); null without /metrics. */
export function eventLoopSummary(samples: readonly SoakSample[], durationMs: number): EventLoopSummary | null {
  const windows = samples.filter((s) => s.atMs > 0 && s.atMs <= durationMs + 1).flatMap((s) => (s.eventLoopDelayMs ? [s.eventLoopDelayMs] : []));
  if (windows.length === 0) return null;
  const p99s = windows.map((w) => w.p99);
  return { windows: windows.length, p99MaxMs: Math.max(...p99s), p99MedianMs: percentile(p99s, 50)!, maxMs: Math.max(...windows.map((w) => w.max)) };
}

/** Requests per outcome over every client kind. */
export function outcomeTotals(run: Pick<SoakRun, 'outcomesByKind'>): OutcomeCounts {
  const totals = emptyCounts();
  for (const k of SOAK_CLIENT_KINDS) for (const o of SOAK_OUTCOMES) totals[o] += run.outcomesByKind[k][o];
  return totals;
}

export interface SoakCheck {
  readonly name: string;
  readonly bound: string;
  readonly measured: string;
  readonly pass: boolean;
}

/** The checks a soak must pass; the command exits 0 only if every one does. */
export function soakChecks(run: SoakRun, rss: RssSummary | null): SoakCheck[] {
  const totals = outcomeTotals(run);
  const server5xx = run.server.metrics ? Object.entries(run.server.metrics.requestsByStatus).reduce((n, [status, count]) => (Number(status) >= 500 ? n + count : n), 0) : null;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  return [
    { name: '5xx answers seen by the clients', bound: '0', measured: String(totals['server-error']), pass: totals['server-error'] === 0 },
    { name: '5xx answers counted by the server (GET /metrics)', bound: '0', measured: server5xx === null ? 'no /metrics' : String(server5xx), pass: server5xx === null || server5xx === 0 },
    { name: 'lost requests', bound: '0', measured: String(totals.lost), pass: totals.lost === 0 },
    { name: 'other errors (4xx but 429, unreadable answers)', bound: '0', measured: String(totals['other-error']), pass: totals['other-error'] === 0 },
    {
      name: 'RSS growth after warm-up',
      bound: `< ${RSS_GROWTH_LIMIT * 100}%`,
      measured: rss === null ? 'no RSS samples (no /proc)' : `${(rss.growth * 100).toFixed(1)}% (${mib(rss.startBytes)} -> ${mib(rss.endBytes)})`,
      pass: rss !== null && rss.growth < RSS_GROWTH_LIMIT,
    },
    {
      name: 'nothing running or waiting after the last answer',
      bound: `within ${IDLE_TIMEOUT_MS / 1000} s`,
      measured: run.idleAfterMs === null ? `still ${run.afterDrain.running ?? '?'} running, ${run.afterDrain.waiting ?? '?'} waiting` : `${(run.idleAfterMs / 1000).toFixed(1)} s`,
      pass: run.idleAfterMs !== null,
    },
  ];
}
