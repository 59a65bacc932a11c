// `moe-serve bench quant`: what each compute form costs in accuracy and buys in bytes and speed. Per form:
// greedy agreement with the first form (f32) over --tokens tokens on 20 prompts (tokens equal up to the
// first divergence, and position by position), last-position logit error against it, greedy agreement
// with transformers (the reference file: 4 prompts x 32 tokens), perplexity on held-out text
// (bench-heldout.ts), bytes of the experts and of all weights in compute form, and decode tokens/s at
// batch 1 and 16 with the expert cache at 100% and at --budget.
import { existsSync, readFileSync } from 'node:fs';
import { z } from 'zod';
import type { ComputeOptions } from '../engine/compute-options.js';
import { MoeModel, type ModelLoadOptions } from '../engine/moe-model.js';
import type { Token } from '../tokenizer/token.js';
import { asToken } from '../tokenizer/token.js';
import { batchThroughput } from './bench-batch.js';
import { greedyDecode } from './bench-decode.js';
import type { Peaks, UtilizationTotals } from '../engine/step-utilization.js';
import { agree, round, utilizationCell, utilizationFields } from './bench-format.js';
import { HELD_OUT_TEXT } from './bench-heldout.js';
import { BENCH_PROMPTS } from './bench-prompts.js';

export interface QuantBenchOptions {
  readonly modelDir: string;
  readonly load: ModelLoadOptions;
  /** The compute forms to compare, the first being the reference for agreement. */
  readonly forms: readonly ComputeOptions[];
  /** Greedy tokens per prompt for the agreement columns. */
  readonly tokens: number;
  /** Expert budget of the offloaded speed columns, as a fraction of all expert bytes. */
  readonly budget: number;
  /** Held-out tokens for perplexity (windows of the model's context, or 1024). */
  readonly pplTokens: number;
  /** transformers' greedy reference for the model (tiny-moe-reference.json's format), or null. */
  readonly referencePath: string | null;
  readonly peaks: Peaks;
}

interface QuantRow {
  readonly bench: 'quant';
  readonly weights: string;
  readonly attention: string;
  readonly experts: string;
  /** tokens equal to the first form's up to the first divergence / position by position, of all */
  readonly agree_prefix: number;
  readonly agree_positions: number;
  readonly agree_of: number;
  readonly logit_error_mean: number;
  readonly logit_error_max: number;
  readonly transformers_prefix: number | null;
  readonly transformers_positions: number | null;
  readonly transformers_of: number | null;
  readonly perplexity: number;
  readonly expert_bytes: number;
  readonly weight_bytes: number;
  readonly b1_tokens_per_s_100: number;
  readonly b1_tokens_per_s_budget: number;
  readonly b16_tokens_per_s_100: number;
  readonly b16_tokens_per_s_budget: number;
  /** S-MBU and S-MFU of the batch-1 and batch-16 runs with every expert resident (fractions of the peaks) */
  readonly b1_s_mbu_100: number | null;
  readonly b1_s_mfu_100: number | null;
  readonly b16_s_mbu_100: number | null;
  readonly b16_s_mfu_100: number | null;
}

const referenceSchema = z.object({ prompts: z.array(z.object({ input_ids: z.array(z.number().int()), greedy_ids: z.array(z.number().int()) })) });

export async function benchQuant(o: QuantBenchOptions): Promise<void> {
  const prompts = BENCH_PROMPTS.slice(0, 20);
  const reference = o.referencePath !== null && existsSync(o.referencePath) ? referenceSchema.parse(JSON.parse(readFileSync(o.referencePath, 'utf8'))) : null;
  let baseline: { outputs: readonly (readonly Token[])[]; lastLogits: Float32Array[] } | null = null;
  const rows: QuantRow[] = [];
  for (const forms of o.forms) {
    const compute = { ...o.load.compute, ...forms };
    const full = await MoeModel.load(o.modelDir, { ...o.load, compute, experts: { policy: 'all' } });
    let row: QuantRow;
    try {
      const greedy = await greedyDecode(full, prompts, o.tokens, 0);
      const lastLogits = await Promise.all(prompts.map((p) => lastPositionLogits(full, full.tokenizer.encode(p))));
      baseline ??= { outputs: greedy.outputs, lastLogits };
      const agreement = agree(greedy.outputs, baseline.outputs);
      const errors = lastLogits.map((l, i) => maxAbs(l, baseline!.lastLogits[i] as Float32Array));
      const tf = reference ? await transformersAgreement(full, reference.prompts) : null;
      const ppl = await perplexity(full, o.pplTokens);
      const stats = full.experts.stats();
      const b1Full = await decodeRate(full);
      const b16FullRun = await batchThroughput(full, 16, 64, 16, 512);
      const b16Full = b16FullRun.tokensPerS;
      await full[Symbol.asyncDispose]();
      await using offloaded = await MoeModel.load(o.modelDir, { ...o.load, compute, experts: { policy: 'lru', budgetFraction: o.budget } });
      const b1Budget = (await decodeRate(offloaded)).tokensPerS;
      const b16Budget = (await batchThroughput(offloaded, 16, 64, 16, 512)).tokensPerS;
      const b1Use = utilizationFields(b1Full.utilization, o.peaks);
      const b16Use = utilizationFields(b16FullRun.utilization, o.peaks);
      row = {
        bench: 'quant',
        weights: full.computeForms.weights,
        attention: full.computeForms.attention,
        experts: full.computeForms.experts,
        agree_prefix: agreement.prefix,
        agree_positions: agreement.positions,
        agree_of: agreement.of,
        logit_error_mean: round(errors.reduce((a, b) => a + b, 0) / errors.length, 4),
        logit_error_max: round(Math.max(...errors), 4),
        transformers_prefix: tf?.prefix ?? null,
        transformers_positions: tf?.positions ?? null,
        transformers_of: tf?.of ?? null,
        perplexity: round(ppl, 3),
        expert_bytes: stats.totalExpertBytes,
        weight_bytes: full.residentBytes,
        b1_tokens_per_s_100: round(b1Full.tokensPerS),
        b1_tokens_per_s_budget: round(b1Budget),
        b16_tokens_per_s_100: round(b16Full),
        b16_tokens_per_s_budget: round(b16Budget),
        b1_s_mbu_100: b1Use.s_mbu,
        b1_s_mfu_100: b1Use.s_mfu,
        b16_s_mbu_100: b16Use.s_mbu,
        b16_s_mfu_100: b16Use.s_mfu,
      };
    } catch (err) {
      await full[Symbol.asyncDispose]().catch(() => undefined);
      throw err;
    }
    rows.push(row);
    process.stdout.write(`${JSON.stringify(row)}\n`);
  }
  process.stdout.write(`\n${table(rows, o.budget)}\n`);
}

/** Batch-1 greedy decode tokens/s over four prompts, 128 tokens each after a warm-up run, and its steps' utilization sums. */
async function decodeRate(model: MoeModel): Promise<{ tokensPerS: number; utilization: UtilizationTotals }> {
  const t = await greedyDecode(model, BENCH_PROMPTS.slice(0, 4), 128, 1);
  return { tokensPerS: (t.decodeSteps * 1000) / t.decodeMs, utilization: t.utilization };
}

async function lastPositionLogits(model: MoeModel, ids: readonly Token[]): Promise<Float32Array> {
  using kv = model.newSequence();
  return Float32Array.from(await model.forward.step(kv, ids, 'last'));
}

function maxAbs(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function transformersAgreement(model: MoeModel, prompts: readonly { input_ids: number[]; greedy_ids: number[] }[]) {
  const outputs: number[][] = [];
  for (const p of prompts) {
    using kv = model.newSequence();
    let logits = await model.forward.step(kv, p.input_ids.map(asToken), 'last');
    const out: number[] = [];
    for (let i = 0; i < p.greedy_ids.length; i++) {
      const next = argmax(logits);
      out.push(next);
      if (i + 1 < p.greedy_ids.length) logits = await model.forward.step(kv, [asToken(next)], 'last');
    }
    outputs.push(out);
  }
  return agree(outputs, prompts.map((p) => p.greedy_ids));
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

/** exp(mean negative log-likelihood) of the held-out text's first `limit` tokens, in windows of the context. */
async function perplexity(model: MoeModel, limit: number): Promise<number> {
  const ids = model.tokenizer.encode(HELD_OUT_TEXT).slice(0, limit);
  const window = Math.min(1024, model.spec.maxPositions);
  const V = model.spec.vocabSize;
  let nll = 0;
  let count = 0;
  for (let start = 0; start + 1 < ids.length; start += window) {
    const chunk = ids.slice(start, start + window);
    using kv = model.newSequence();
    const logits = await model.forward.step(kv, chunk, 'all');
    for (let t = 0; t + 1 < chunk.length; t++) {
      const row = logits.subarray(t * V, (t + 1) * V);
      let max = -Infinity;
      for (const v of row) max = Math.max(max, v);
      let sum = 0;
      for (const v of row) sum += Math.exp(v - max);
      nll += Math.log(sum) + max - row[chunk[t + 1] as number]!;
      count++;
    }
  }
  return Math.exp(nll / count);
}

function table(rows: readonly QuantRow[], budget: number): string {
  const mb = (b: number) => (b / 2 ** 20).toFixed(1);
  const pct = `${Math.round(budget * 100)}%`;
  const head =
    `| weights | attention | experts | agree with the first: prefix / positions | last logit error mean / max | agree with transformers: prefix / positions | perplexity | expert MiB | all weights MiB | b1 tok/s 100% / ${pct} | b16 tok/s 100% / ${pct} | S-MBU / S-MFU b1, b16 100% |\n` +
    '|---|---|---|---|---|---|---|---|---|---|---|---|';
  const body = rows.map(
    (r) =>
      `| ${r.weights} | ${r.attention} | ${r.experts} | ${r.agree_prefix} / ${r.agree_positions} of ${r.agree_of} | ${r.logit_error_mean} / ${r.logit_error_max} | ${r.transformers_of === null ? '-' : `${r.transformers_prefix} / ${r.transformers_positions} of ${r.transformers_of}`} | ${r.perplexity} | ${mb(r.expert_bytes)} | ${mb(r.weight_bytes)} | ${r.b1_tokens_per_s_100} / ${r.b1_tokens_per_s_budget} | ${r.b16_tokens_per_s_100} / ${r.b16_tokens_per_s_budget} | ${utilizationCell({ s_mbu: r.b1_s_mbu_100, s_mfu: r.b1_s_mfu_100 })}, ${utilizationCell({ s_mbu: r.b16_s_mbu_100, s_mfu: r.b16_s_mfu_100 })} |`,
  );
  return [head, ...body].join('\n');
}
