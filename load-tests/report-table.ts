// The results table, shared by report.md and report.html: one row per run, the same columns in both.
import type { RunResult } from './load-run.js';
import type { Summary } from './percentiles.js';

export const TABLE_HEAD = [
  'policy', 'budget', 'scheduling', 'concurrency', 'requests', 'tokens/s', 'TTFT p50 / p99 ms', 'TPOT p50 / p99 ms', 'ITL p50 / p99 ms',
  'e2e p50 / p99 ms', 'hit ratio', 'loads avoided', 'Belady', 'gap (points)', 'bytes to device', 'S-MBU', 'S-MFU', '/health p50 / p99 ms', 'event-loop delay p99 / max ms', '429s', 'errors',
] as const;

export function tableRow(r: RunResult): string[] {
  return [
    r.policy,
    `${r.budgetPercent}%`,
    r.scheduling,
    String(r.concurrency),
    String(r.requests),
    r.tokensPerSecond.toFixed(1),
    pair(r.latency.ttftMs),
    pair(r.latency.tpotMs),
    pair(r.latency.itlMs),
    pair(r.latency.e2eMs),
    percent(r.server.hitRatio),
    percent(r.server.loadsAvoided),
    percent(r.beladyHitRatio),
    gapPoints(r),
    mib(r.server.bytesToDevice),
    utilizationPercent(r.server.metrics?.utilization?.smbu),
    utilizationPercent(r.server.metrics?.utilization?.smfu),
    pair(r.responsiveness.healthMs),
    r.responsiveness.eventLoopDelayMs === null ? '-' : `${r.responsiveness.eventLoopDelayMs.p99.toFixed(1)} / ${r.responsiveness.eventLoopDelayMs.max.toFixed(1)}`,
    String(r.rejected429),
    r.errors === 0 ? '0' : `**${r.errors}**`,
  ];
}

/** Runs grouped by client (and its arrivals), in a stable order: concurrency, then policy order, then budget. */
export function groupByClient(results: readonly RunResult[]): { title: string; runs: RunResult[] }[] {
  const groups = new Map<string, RunResult[]>();
  for (const r of results) {
    const title = `${r.client === 'http' ? 'HTTP, non-streaming (autocannon)' : r.client === 'sse' ? 'SSE streaming' : 'WebSocket streaming'}; arrivals: ${r.arrivals}`;
    groups.set(title, [...(groups.get(title) ?? []), r]);
  }
  const policyOrder = [...new Set(results.map((r) => r.policy))];
  const schedulingOrder = [...new Set(results.map((r) => r.scheduling))];
  return [...groups].map(([title, runs]) => ({
    title,
    runs: runs.sort((a, b) => a.concurrency - b.concurrency || policyOrder.indexOf(a.policy) - policyOrder.indexOf(b.policy) || schedulingOrder.indexOf(a.scheduling) - schedulingOrder.indexOf(b.scheduling) || a.budgetPercent - b.budgetPercent),
  }));
}

function pair(s: Summary | null): string {
  if (s === null || s.p50 === null || s.p99 === null) return '-';
  return `${s.p50.toFixed(1)} / ${s.p99.toFixed(1)}`;
}

/** How far the run's avoided loads fall short of Belady's, in percentage points. */
export function gapPoints(r: RunResult): string {
  if (r.beladyHitRatio === null || r.server.loadsAvoided === null) return '-';
  return ((r.beladyHitRatio - r.server.loadsAvoided) * 100).toFixed(1);
}

export function percent(x: number | null): string {
  return x === null ? '-' : `${(x * 100).toFixed(1)}%`;
}

/** S-MBU or S-MFU as a percentage with 3 significant digits (they are often well under 1%); '-' when unknown. */
export function utilizationPercent(x: number | null | undefined): string {
  return x === null || x === undefined ? '-' : `${Number((x * 100).toPrecision(3))}%`;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
