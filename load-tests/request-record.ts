// What one request's client saw, and how a run's records become its latency numbers. Metric definitions
// are vLLM's (benchmarks/benchmark_serving.py):
//   TTFT: request sent -> first token received;
//   TPOT: (e2e - TTFT) / (output tokens - 1), per request with more than one output token;
//   ITL:  every gap between consecutive token messages (SSE chunks or WebSocket token messages);
//   e2e:  request sent -> last byte of the answer.
import { summarize, type Summary } from './percentiles.js';

export interface RequestRecord {
  /**
   * What ended it: an HTTP status ('200', '429', '500', ...), 'network' for a connection error or
   * timeout, 'ws:<code>' for a WebSocket error message with no HTTP equivalent, 'cancelled' for a
   * request the run cut at its hard deadline (not an error).
   */
  readonly outcome: string;
  /** Milliseconds from send to the first token message; null without one. */
  readonly ttftMs: number | null;
  readonly e2eMs: number;
  /** Completion tokens, from the answer's usage. */
  readonly outputTokens: number;
  /** Gaps between consecutive token messages, ms. */
  readonly itlMs: readonly number[];
}

export interface LatencySummaries {
  readonly ttftMs: Summary | null;
  readonly tpotMs: Summary | null;
  readonly itlMs: Summary | null;
  readonly e2eMs: Summary;
}

export const OK = '200';
export const OVERLOADED = '429';
export const CANCELLED = 'cancelled';

/** Latencies over the successful requests; streaming ones only when the client saw tokens arrive. */
export function summarizeLatencies(records: readonly RequestRecord[], streaming: boolean): LatencySummaries {
  const ok = records.filter((r) => r.outcome === OK);
  const tpot = ok.filter((r) => r.ttftMs !== null && r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs!) / (r.outputTokens - 1));
  return {
    ttftMs: streaming ? summarize(ok.flatMap((r) => (r.ttftMs === null ? [] : [r.ttftMs]))) : null,
    tpotMs: streaming ? summarize(tpot) : null,
    itlMs: streaming ? summarize(ok.flatMap((r) => r.itlMs)) : null,
    e2eMs: summarize(ok.map((r) => r.e2eMs)),
  };
}

/** How many requests ended each way. */
export function countOutcomes(records: readonly RequestRecord[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of records) counts[r.outcome] = (counts[r.outcome] ?? 0) + 1;
  return counts;
}

/** Requests that failed for a reason other than deliberate overload (429) or the run's own deadline. */
export function errorCount(outcomes: Readonly<Record<string, number>>): number {
  return Object.entries(outcomes).reduce((n, [outcome, count]) => (outcome === OK || outcome === OVERLOADED || outcome === CANCELLED ? n : n + count), 0);
}
