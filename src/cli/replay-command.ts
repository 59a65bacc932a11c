// `moe-serve replay`: the policy lab. Replays a routing trace against every (policy, prefetch depth,
// budget) and Belady's optimum, prints hit ratios and loads avoided (JSON lines and tables) and writes
// an SVG chart.
import { basename } from 'node:path';
import { stat, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { POLICY_NAMES } from '../experts/policies/index.js';
import { belady } from '../experts/replay/belady.js';
import { hitRatioChartSvg, type ChartLine } from '../experts/replay/hit-ratio-chart.js';
import { readTrace } from '../experts/replay/read-trace.js';
import { loadsAvoided, simulate, type HitCounts, type ReplayResult } from '../experts/replay/simulate.js';
import { allExpertBytes } from '../experts/replay/trace-accesses.js';
import { UsageError } from './cli-error.js';
import { intFlag, parseFlag } from './model-options.js';

export const REPLAY_HELP = `Usage: moe-serve replay --trace FILE [options]

Replays a routing trace against expert-cache policies, prefetch depths and budgets, and against
Belady's offline optimum (MIN, with the server's rules: a batched pass uses the union of its
sequences' experts, experts in use count against the budget). Prints tables of hit ratios and of
loads avoided (1 - (misses + prefetches) / uses: no policy, prefetching or not, avoids more loads
than Belady) and writes an SVG chart of hit ratio against budget.

  --trace FILE            routing trace, JSON Lines (src/experts/trace-format.ts) (required)
  --budgets LIST          comma-separated expert-cache budgets: a percentage of all expert bytes
                          (sparse layers x experts x expert_bytes), e.g. 25%, or a size with a binary
                          unit b, kb, mb, gb (64mb = 64 MiB) (default 10%,25%,50%,100%)
  --policies LIST         comma-separated, from ${POLICY_NAMES.join(', ')} (default: all of them)
  --prefetch-depths LIST  comma-separated sparse-layer lookahead depths to prefetch (default 0,1)
  --svg FILE              where to write the chart (default: the trace path with .svg appended)
  --json                  also print one JSON line per (policy, prefetch depth, budget), then the table

'static' keeps the experts this trace uses most: an optimistic static that has seen the whole trace.
`;

/** An expert-cache budget from the command line (route-study-command.ts reads them the same way). */
export interface Budget {
  /** As the user wrote it, for the table. */
  readonly label: string;
  readonly bytes: number;
  readonly percent: number;
}

const UNIT_BYTES = new Map([
  ['b', 1],
  ['kb', 2 ** 10],
  ['mb', 2 ** 20],
  ['gb', 2 ** 30],
]);

export const budgetFlag = z
  .string()
  .regex(/^\d+(\.\d+)?(%|b|kb|mb|gb)$/i, 'expected a percentage like 25% or a size like 64mb (units: b, kb, mb, gb)')
  .refine((s) => !s.endsWith('%') || Number.parseFloat(s) <= 100, 'a percentage budget must be at most 100%');

export async function replayCommand(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      trace: { type: 'string' },
      budgets: { type: 'string', default: '10%,25%,50%,100%' },
      policies: { type: 'string', default: POLICY_NAMES.join(',') },
      'prefetch-depths': { type: 'string', default: '0,1' },
      svg: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(REPLAY_HELP);
    return;
  }
  if (values.trace === undefined) throw new UsageError('--trace is required');
  const tracePath = values.trace;
  if (!(await stat(tracePath).catch(() => undefined))?.isFile()) throw new UsageError(`--trace: no such file ${JSON.stringify(tracePath)}`);
  const budgetTexts = splitList(values.budgets).map((b) => parseFlag('budgets', budgetFlag, b));
  const policies = splitList(values.policies).map((p) => parseFlag('policies', z.enum(POLICY_NAMES, { message: `expected one of ${POLICY_NAMES.join(', ')}` }), p));
  const depths = splitList(values['prefetch-depths']).map((d) => parseFlag('prefetch-depths', intFlag(0), d));
  const svgPath = values.svg ?? `${tracePath}.svg`;

  const trace = await readTrace(tracePath);
  if (trace.lines.length === 0) throw new Error(`${tracePath}: the trace has a header but no routing lines`);
  const totalBytes = allExpertBytes(trace.header);
  const budgets = budgetTexts.map((text) => toBudget(text, totalBytes));
  const tooSmall = budgets.find((b) => b.bytes < trace.header.expert_bytes);
  // The server refuses such budgets too: an expert in use must fit.
  if (tooSmall) throw new UsageError(`--budgets: ${tooSmall.label} is ${tooSmall.bytes} bytes, less than one expert (${trace.header.expert_bytes} bytes)`);

  const rows: { label: string; results: HitCounts[] }[] = [];
  const chart: ChartLine[] = [];
  const emit = (policy: string, depth: number, budget: Budget, r: HitCounts) => {
    if (values.json) process.stdout.write(`${JSON.stringify(jsonRow(policy, depth, budget, r))}\n`);
  };
  for (const policy of policies) {
    for (const prefetchDepth of depths) {
      const results = budgets.map((budget) => {
        const r = simulate(trace, { policy, budgetBytes: budget.bytes, prefetchDepth });
        emit(policy, prefetchDepth, budget, r);
        return r;
      });
      rows.push({ label: `${policy} @ ${prefetchDepth}`, results });
      chart.push({ kind: 'policy', policy, prefetchDepth, points: points(budgets, results) });
    }
  }
  const optimum = budgets.map((budget) => {
    const r = belady(trace, budget.bytes);
    emit('belady', 0, budget, r);
    return r;
  });
  rows.push({ label: 'belady', results: optimum });
  chart.push({ kind: 'belady', points: points(budgets, optimum) });

  const accesses = optimum[0]?.accesses ?? 0;
  process.stdout.write(
    `${values.json ? '\n' : ''}${tracePath}: ${trace.header.model}, ${trace.lines.length} lines, ${accesses} expert accesses; ` +
      `100% = ${trace.header.sparse_layers.length} sparse layers x ${trace.header.num_experts} experts x ${trace.header.expert_bytes} bytes\n\n` +
      `Hit ratio (uses that found their expert resident, prefetched or not):\n\n${table(budgets, rows, (r) => r.hitRatio)}\n\n` +
      `Loads avoided (1 - (misses + prefetches) / uses; Belady's is the most any policy can avoid):\n\n${table(budgets, rows, loadsAvoided)}\n\n`,
  );
  await writeFile(svgPath, hitRatioChartSvg(basename(trace.header.model), chart));
  process.stdout.write(`chart written to ${svgPath}\n`);
}

export function splitList(text: string): string[] {
  return text.split(',').map((s) => s.trim());
}

export function toBudget(text: string, totalBytes: number): Budget {
  const value = Number.parseFloat(text);
  if (text.endsWith('%')) return { label: text, bytes: Math.floor((totalBytes * value) / 100), percent: value };
  const unit = text.replace(/^[\d.]+/, '').toLowerCase();
  const bytes = Math.floor(value * (UNIT_BYTES.get(unit) ?? 1));
  return { label: `${text} (${((bytes / totalBytes) * 100).toFixed(1)}%)`, bytes, percent: (bytes / totalBytes) * 100 };
}

function points(budgets: readonly Budget[], results: readonly HitCounts[]) {
  return budgets.map((b, i) => ({ budgetPercent: b.percent, hitRatio: results[i]?.hitRatio ?? 0 }));
}

function jsonRow(policy: string, prefetchDepth: number, budget: Budget, r: HitCounts | ReplayResult) {
  const prefetch =
    'prefetchIssued' in r
      ? { prefetch_issued: r.prefetchIssued, prefetch_used: r.prefetchUsed, prefetch_wasted: r.prefetchWasted, prefetch_recall: r.prefetchRecall === null ? null : round6(r.prefetchRecall) }
      : {};
  return {
    policy,
    prefetch_depth: prefetchDepth,
    budget: budget.label,
    budget_bytes: budget.bytes,
    budget_percent: Number(budget.percent.toFixed(3)),
    accesses: r.accesses,
    hits: r.hits,
    misses: r.misses,
    hit_ratio: round6(r.hitRatio),
    loads_avoided: round6(loadsAvoided(r)),
    evictions: r.evictions,
    ...prefetch,
  };
}

function round6(x: number): number {
  return Number(x.toFixed(6));
}

function table(budgets: readonly Budget[], rows: readonly { label: string; results: readonly HitCounts[] }[], value: (r: HitCounts) => number): string {
  const head = `| policy @ prefetch depth | ${budgets.map((b) => b.label).join(' | ')} |\n|---|${budgets.map(() => '---:|').join('')}`;
  const body = rows.map((row) => `| ${row.label} | ${row.results.map((r) => `${(value(r) * 100).toFixed(1)}%`).join(' | ')} |`);
  return [head, ...body].join('\n');
}
