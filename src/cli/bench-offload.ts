// `moe-serve bench offload`: what the expert cache costs and saves at one budget, per policy.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel, type ExpertCacheOptions, type ModelLoadOptions } from '../engine/moe-model.js';
import type { ExpertCacheStats } from '../experts/expert-stats.js';
import { DEFAULT_POLICY } from '../experts/policies/index.js';
import { belady } from '../experts/replay/belady.js';
import { readTrace } from '../experts/replay/read-trace.js';
import { simulate } from '../experts/replay/simulate.js';
import type { RoutingObserver } from '../engine/forward.js';
import { greedyDecode } from './bench-decode.js';
import { BENCH_PROMPTS } from './bench-prompts.js';
import type { Peaks, UtilizationTotals } from '../engine/step-utilization.js';
import { round, utilizationCell, utilizationFields } from './bench-format.js';


interface OffloadRow {
  readonly bench: 'offload';
  readonly policy: string;
  readonly prefetch_depth: number;
  readonly budget_fraction: number;
  readonly decode_tokens_per_s: number;
  /** this configuration's time per token over the 'all' bound's */
  readonly slowdown_vs_all: number | null;
  readonly hit_ratio: number | null;
  /** the replay simulator's hit ratio for the same configuration on this run's trace */
  readonly simulated_hit_ratio: number | null;
  readonly prefetch_recall: number | null;
  readonly prefetch_issued: number;
  readonly prefetch_wasted: number;
  readonly wait_ms_per_token: number;
  /** S-MBU and S-MFU of the run's steps (fractions of --peak-memory-gbps / --peak-tflops); expert loads are not counted as bytes */
  readonly s_mbu: number | null;
  readonly s_mfu: number | null;
}

const CONFIGS: readonly ExpertCacheOptions[] = [
  { policy: 'all', prefetchDepth: 0 },
  { policy: 'none', prefetchDepth: 0 },
  { policy: 'lru', prefetchDepth: 0 },
  { policy: 'lru', prefetchDepth: 1 },
  { policy: 'lfu', prefetchDepth: 0 },
  { policy: 'lfu', prefetchDepth: 1 },
  { policy: 'next-use', prefetchDepth: 0 },
  { policy: 'next-use', prefetchDepth: 1 },
  { policy: 'static', prefetchDepth: 0 },
  { policy: 'static', prefetchDepth: 1 },
];

export async function benchOffload(modelDir: string, load: ModelLoadOptions, budgetFraction: number, tokens: number, peaks: Peaks): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'moe-serve-bench-'));
  const tracePath = join(dir, 'trace.jsonl');
  try {
    const rows: OffloadRow[] = [];
    const measured: { cfg: ExpertCacheOptions; decodeMs: number; steps: number; stats: ExpertCacheStats; utilization: UtilizationTotals }[] = [];
    for (const [i, cfg] of CONFIGS.entries()) {
      // The first configuration also records the routing trace (with two layers of lookahead) for replay.
      const experts: ExpertCacheOptions = { ...cfg, budgetFraction, lookaheadDepth: i === 0 ? 2 : 0 };
      await using model = await MoeModel.load(modelDir, { ...load, experts });
      await using trace = i === 0 ? await model.openTrace(tracePath) : null;
      const { decodeMs, steps, utilization } = await decodeAll(model, tokens, (promptIds) => trace?.request(promptIds));
      // A trace that turned itself off is partial: replaying it would give a wrong hit ratio.
      const traceError = await trace?.close();
      if (traceError) throw traceError;
      measured.push({ cfg, decodeMs, steps, stats: model.experts.stats(), utilization });
    }
    const replay = await readTrace(tracePath);
    const allMsPerToken = measured[0] ? measured[0].decodeMs / measured[0].steps : null;
    for (const m of measured) {
      const msPerToken = m.decodeMs / m.steps;
      const sim = simulate(replay, { policy: m.cfg.policy ?? DEFAULT_POLICY, budgetBytes: m.stats.budgetBytes, prefetchDepth: m.cfg.prefetchDepth ?? 0 });
      const t = m.stats.total;
      rows.push({
        bench: 'offload',
        policy: m.cfg.policy ?? DEFAULT_POLICY,
        prefetch_depth: m.cfg.prefetchDepth ?? 0,
        budget_fraction: m.cfg.policy === 'all' ? 1 : budgetFraction,
        decode_tokens_per_s: round(1000 / msPerToken),
        slowdown_vs_all: allMsPerToken ? round(msPerToken / allMsPerToken, 2) : null,
        hit_ratio: t.hitRatio === null ? null : round(t.hitRatio, 3),
        simulated_hit_ratio: m.cfg.policy === 'static' ? null : round(sim.hitRatio, 3),
        prefetch_recall: t.prefetchRecall === null ? null : round(t.prefetchRecall, 3),
        prefetch_issued: t.prefetchIssued,
        prefetch_wasted: t.prefetchWasted,
        wait_ms_per_token: round(t.waitMs / m.steps, 2),
        ...utilizationFields(m.utilization, peaks),
      });
      process.stdout.write(`${JSON.stringify(rows[rows.length - 1])}\n`);
    }
    const budgetBytes = measured.find((m) => m.cfg.policy === 'lru')?.stats.budgetBytes ?? 0;
    const optimum = belady(replay, budgetBytes);
    process.stdout.write(`${JSON.stringify({ bench: 'offload', policy: 'belady', budget_fraction: budgetFraction, hit_ratio: round(optimum.hitRatio, 3) })}\n\n`);
    process.stdout.write(`${table(rows, optimum.hitRatio)}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Greedy decode of every prompt, end-of-sequence ignored; returns the decode steps and their time, and every step's utilization sums. */
async function decodeAll(model: MoeModel, tokens: number, observer: (promptIds: readonly number[]) => RoutingObserver | undefined): Promise<{ decodeMs: number; steps: number; utilization: UtilizationTotals }> {
  const t = await greedyDecode(model, BENCH_PROMPTS.slice(0, 4), tokens, 0, observer);
  return { decodeMs: t.decodeMs, steps: t.decodeSteps, utilization: t.utilization };
}

function pct(x: number | null): string {
  return x === null ? '-' : `${(x * 100).toFixed(1)}%`;
}

function table(rows: readonly OffloadRow[], beladyHitRatio: number): string {
  const head =
    '| policy | prefetch | decode tokens/s | time/token vs all | hit ratio | simulated | prefetch recall | prefetches issued / wasted | wait ms/token | S-MBU / S-MFU |\n' +
    '|---|---|---|---|---|---|---|---|---|---|';
  const body = rows.map(
    (r) =>
      `| ${r.policy} | ${r.prefetch_depth} | ${r.decode_tokens_per_s} | ${r.slowdown_vs_all ?? '-'}x | ${pct(r.hit_ratio)} | ${pct(r.simulated_hit_ratio)} | ${pct(r.prefetch_recall)} | ${r.prefetch_issued} / ${r.prefetch_wasted} | ${r.wait_ms_per_token} | ${utilizationCell(r)} |`,
  );
  return [head, ...body, `| belady (offline optimum) | 0 | - | - | ${pct(beladyHitRatio)} | | | | | |`].join('\n');
}
