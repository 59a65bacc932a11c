// `moe-serve bench batch`: continuous batching against running the same requests one after another.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { BatchEngine } from '../engine/batch-engine.js';
import { MoeModel, type ModelLoadOptions } from '../engine/moe-model.js';
import { BENCH_PROMPTS } from './bench-prompts.js';
import type { Peaks } from '../engine/step-utilization.js';
import { round, utilizationCell, utilizationFields } from './bench-format.js';


interface BatchRow {
  readonly bench: 'batch';
  readonly concurrency: number;
  readonly requests: number;
  readonly output_tokens: number;
  readonly batched_tokens_per_s: number;
  readonly sequential_tokens_per_s: number;
  readonly speedup: number;
  /** distinct experts a step needs per sparse layer, on average (of numExperts) */
  readonly distinct_experts_per_layer_step: number;
  readonly hit_ratio: number | null;
  readonly event_loop_delay_p99_ms: number;
  readonly event_loop_delay_max_ms: number;
  /** S-MBU and S-MFU of the batched run's steps (fractions of --peak-memory-gbps / --peak-tflops) */
  readonly s_mbu: number | null;
  readonly s_mfu: number | null;
}

export interface BatchBenchOptions {
  readonly modelDir: string;
  /** Device, threads and compute forms (the expert budget is --budget's). */
  readonly load: ModelLoadOptions;
  readonly budgetFraction: number;
  readonly tokens: number;
  readonly concurrency: readonly number[];
  readonly maxBatchTokens: number;
  readonly peaks: Peaks;
}

export async function benchBatch(o: BatchBenchOptions): Promise<void> {
  const rows: BatchRow[] = [];
  for (const c of o.concurrency) {
    const sequential = await run(o, c, 1);
    const batched = await run(o, c, c);
    rows.push({
      bench: 'batch',
      concurrency: c,
      requests: c,
      output_tokens: batched.tokens,
      batched_tokens_per_s: round(batched.tokensPerS),
      sequential_tokens_per_s: round(sequential.tokensPerS),
      speedup: round(batched.tokensPerS / sequential.tokensPerS, 2),
      distinct_experts_per_layer_step: round(batched.distinctPerLayerStep, 2),
      hit_ratio: batched.hitRatio === null ? null : round(batched.hitRatio, 3),
      event_loop_delay_p99_ms: round(batched.loopP99Ms, 2),
      event_loop_delay_max_ms: round(batched.loopMaxMs, 2),
      ...utilizationFields(batched.utilization, o.peaks),
    });
    process.stdout.write(`${JSON.stringify(rows[rows.length - 1])}\n`);
  }
  process.stdout.write(`\n${table(rows)}\n`);
}

async function run(o: BatchBenchOptions, requests: number, maxSeqs: number) {
  await using model = await MoeModel.load(o.modelDir, { ...o.load, experts: { budgetFraction: o.budgetFraction } });
  return await batchThroughput(model, requests, o.tokens, maxSeqs, o.maxBatchTokens);
}

/**
 * `requests` requests of `tokens` tokens each (end-of-sequence ignored), at most `maxSeqs` at a time.
 * Sampled with a seed per request, so that requests sharing a prompt still diverge (identical greedy
 * copies would route identically and flatter batching) while a sequential run computes exactly the
 * same tokens.
 */
export async function batchThroughput(model: MoeModel, requests: number, tokens: number, maxSeqs: number, maxBatchTokens: number) {
  await using engine = new BatchEngine(model, { maxBatchTokens, maxSeqs, maxQueue: requests });
  const before = model.experts.stats().total;
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const t0 = performance.now();
  const streams = Array.from({ length: requests }, (_, i) =>
    engine.submit({
      promptIds: model.tokenizer.encode(BENCH_PROMPTS[i % BENCH_PROMPTS.length] ?? ''),
      maxTokens: tokens,
      sampling: { temperature: 0.8, topP: 0.95, topK: 0 },
      seed: i,
      ignoreEos: true,
    }),
  );
  const results = await Promise.all(streams.map((s) => s.result));
  const seconds = (performance.now() - t0) / 1000;
  delay.disable();
  const generated = results.reduce((n, r) => n + r.completionIds.length, 0);
  const after = model.experts.stats().total;
  const sparseLayers = model.spec.sparseLayers.filter(Boolean).length;
  const accesses = after.accesses - before.accesses;
  return {
    tokens: generated,
    tokensPerS: generated / seconds,
    distinctPerLayerStep: accesses / (engine.stats.steps * sparseLayers),
    hitRatio: accesses > 0 ? (after.hits - before.hits) / accesses : null,
    loopP99Ms: delay.percentile(99) / 1e6,
    loopMaxMs: delay.max / 1e6,
    /** The engine's steps: prompts and decode (step-utilization.ts). */
    utilization: engine.stats.utilization.totals,
  };
}

function table(rows: readonly BatchRow[]): string {
  const head =
    '| concurrency | batched tokens/s | sequential tokens/s | speedup | distinct experts per layer-step | hit ratio | event-loop delay p99 / max ms | S-MBU / S-MFU |\n' +
    '|---|---|---|---|---|---|---|---|';
  return [
    head,
    ...rows.map(
      (r) =>
        `| ${r.concurrency} | ${r.batched_tokens_per_s} | ${r.sequential_tokens_per_s} | ${r.speedup}x | ${r.distinct_experts_per_layer_step} | ${r.hit_ratio === null ? '-' : `${(r.hit_ratio * 100).toFixed(1)}%`} | ${r.event_loop_delay_p99_ms} / ${r.event_loop_delay_max_ms} | ${utilizationCell(r)} |`,
    ),
  ].join('\n');
}
