// `npm run routing-stats -- --model DIR [--prompts N] [--tokens N]`: the routing statistics of a model
// next to the embedded tiny-moe's (a trained model), measured the same way in the same run.
import { parseArgs } from 'node:util';
import { UsageError } from '../src/cli/cli-error.js';
import { DEFAULT_MODEL_DIR, intFlag, parseFlag } from '../src/cli/model-options.js';
import type { RoutingStats } from '../src/experts/routing-stats.js';
import { measureRouting, type RoutingMeasurement } from './measure-routing.js';
import { runScript } from './run-script.js';

export const ROUTING_STATS_HELP = `Usage: npm run routing-stats -- --model DIR [--prompts N] [--tokens N]

  --model DIR    the model to measure (Hugging Face layout)
  --prompts N    benchmark prompts to run, 1-20 (default 8)
  --tokens N     greedy tokens generated per prompt (default 32)
`;

export interface RoutingStatsOptions {
  readonly modelDir: string;
  readonly prompts: number;
  readonly tokens: number;
}

/** Measures `modelDir` and tiny-moe, prints one JSON line each and a table. */
export async function printRoutingStats(o: RoutingStatsOptions, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const rows: { name: string; m: RoutingMeasurement }[] = [];
  for (const [name, dir] of [
    [o.modelDir, o.modelDir],
    ['tiny-moe', DEFAULT_MODEL_DIR],
  ] as const) {
    const m = await measureRouting(dir, o.prompts, o.tokens);
    rows.push({ name, m });
    out.write(`${JSON.stringify({ routing_stats: name, prompts: o.prompts, tokens: o.tokens, seconds: round(m.seconds, 1), ...jsonStats(m.stats), sample: m.sample })}\n`);
  }
  out.write(`\n${table(rows.map((r) => ({ name: r.name, s: r.m.stats })))}\n`);
  for (const r of rows) out.write(`\n${r.name} writes: ${JSON.stringify(r.m.sample)}\n`);
}

function round(x: number | null, digits = 3): number | null {
  return x === null ? null : Number(x.toFixed(digits));
}

function jsonStats(s: RoutingStats): Record<string, number | null> {
  return {
    num_experts: s.numExperts,
    top_k: s.topK,
    token_layers: s.tokenLayers,
    independent_k_over_e: round(s.independent),
    entropy_mean: round(s.entropyMean),
    entropy_min: round(s.entropyMin),
    top10pct_experts: s.topExperts,
    top10pct_share_mean: round(s.topShareMean),
    top10pct_share_max: round(s.topShareMax),
    temporal_reuse: round(s.temporalReuse),
    lookahead_recall: round(s.lookaheadRecall),
    coactivation: round(s.coactivation),
    coactivation_marginal: round(s.coactivationBaseline),
  };
}

function table(rows: readonly { name: string; s: RoutingStats }[]): string {
  const f = (x: number | null) => (x === null || Number.isNaN(x) ? '-' : x.toFixed(3));
  const lines = [
    ['experts (E), top-k', (s: RoutingStats) => `${s.numExperts}, ${s.topK}`],
    ['k/E (independent routing)', (s: RoutingStats) => f(s.independent)],
    ['popularity entropy / log2 E, mean (min)', (s: RoutingStats) => `${f(s.entropyMean)} (${f(s.entropyMin)})`],
    ['share of the top 10% experts, mean (max)', (s: RoutingStats) => `${f(s.topShareMean)} (${f(s.topShareMax)}) [top ${s.topExperts}; uniform ${f(s.topExperts / s.numExperts)}]`],
    ['temporal reuse: shared experts of tokens t-1, t / k', (s: RoutingStats) => f(s.temporalReuse)],
    ['lookahead recall (decode steps)', (s: RoutingStats) => f(s.lookaheadRecall)],
    ['co-activation: max_j P(j at l+1 given i at l)', (s: RoutingStats) => `${f(s.coactivation)} (marginal max_j P(j) ${f(s.coactivationBaseline)})`],
  ] as const;
  const head = `| statistic | ${rows.map((r) => r.name).join(' | ')} |\n|---|${rows.map(() => '---|').join('')}`;
  return [head, ...lines.map(([label, cell]) => `| ${label} | ${rows.map((r) => cell(r.s)).join(' | ')} |`)].join('\n');
}

export function parseRoutingStatsArgs(argv: readonly string[]): RoutingStatsOptions | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: { model: { type: 'string' }, prompts: { type: 'string', default: '8' }, tokens: { type: 'string', default: '32' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) return 'help';
  if (values.model === undefined) throw new UsageError('--model DIR is required');
  return {
    modelDir: values.model,
    prompts: parseFlag('prompts', intFlag(1).max(20), values.prompts),
    tokens: parseFlag('tokens', intFlag(1).max(1024), values.tokens),
  };
}

await runScript('routing-stats', import.meta.url, ROUTING_STATS_HELP, async (argv) => {
  const o = parseRoutingStatsArgs(argv);
  if (o === 'help') process.stdout.write(ROUTING_STATS_HELP);
  else await printRoutingStats(o);
});
