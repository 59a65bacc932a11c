// `moe-serve bench decode`: batch-1 prompt and decode speed, per CPU thread count and compute form, with
// where each token's time goes (session runs by kind, sampling, and the JavaScript between runs).
import { generate } from '../engine/generate.js';
import { MoeModel, type ModelLoadOptions } from '../engine/moe-model.js';
import type { RoutingObserver } from '../engine/forward.js';
import type { RunTally } from '../runtime/onnx-runtime.js';
import type { Token } from '../tokenizer/token.js';
import { addTotals, totalsSince, ZERO_TOTALS, type Peaks, type UtilizationTotals } from '../engine/step-utilization.js';
import { round, utilizationCell, utilizationFields } from './bench-format.js';
import { tokenBreakdown, type TokenBreakdown } from './token-breakdown.js';

/** A compute form to compare: `weights/experts[/attention]` dtypes, e.g. int8/int4/f32 ('default': the provider's). */
export interface FormPair {
  readonly weights: string;
  readonly experts: string;
  /** Absent: as --weight-dtype. */
  readonly attention?: string;
}

export interface DecodeTotals {
  readonly promptTokens: number;
  readonly promptMs: number;
  readonly decodeSteps: number;
  readonly decodeMs: number;
  readonly samplingMs: number;
  /** Where each generated token's time went (prompt steps amortized). */
  readonly breakdown: TokenBreakdown;
  /** Every prompt's generated tokens, in prompt order (of the last run of each). */
  readonly outputs: readonly (readonly Token[])[];
  /** Bytes, FLOPs and time of the measured runs' engine steps, prompt steps included (step-utilization.ts). */
  readonly utilization: UtilizationTotals;
}

/**
 * Greedy decode of each prompt for exactly `tokens` tokens (end-of-sequence ignored), `runs` measured runs
 * after one warm-up each; the session runs made during decode steps are tallied by kind.
 */
export async function greedyDecode(model: MoeModel, prompts: readonly string[], tokens: number, runs: number, observer?: (promptIds: readonly number[]) => RoutingObserver | undefined): Promise<DecodeTotals> {
  let promptTokens = 0;
  let promptMs = 0;
  let decodeSteps = 0;
  let decodeMs = 0;
  let samplingMs = 0;
  // Session runs and their time during the measured runs, by kind of session.
  const ran: Record<string, RunTally> = {};
  let loadWaitMs = 0;
  const outputs: (readonly Token[])[] = [];
  let utilization = ZERO_TOTALS;
  for (const prompt of prompts) {
    const promptIds = model.tokenizer.encode(prompt);
    let last: readonly Token[] = [];
    for (let run = 0; run <= runs; run++) {
      const snapshot = model.runtime.tallySnapshot();
      const waitedBefore = model.experts.stats().total.waitMs;
      const stepsBefore = model.forward.utilization.totals;
      const stream = generate(model, { promptIds, maxTokens: tokens, sampling: { temperature: 0, topP: 1, topK: 0 }, ignoreEos: true, observer: observer?.(promptIds) });
      let step = await stream.next();
      while (!step.done) step = await stream.next();
      last = step.value.completionIds;
      if (run === 0 && runs > 0) continue; // warm-up: first-run allocations and session caches
      const t = step.value.timings;
      promptTokens += t.promptTokens;
      promptMs += t.promptMs;
      decodeSteps += t.decodeSteps;
      decodeMs += t.decodeMs;
      samplingMs += t.samplingMs;
      loadWaitMs += model.experts.stats().total.waitMs - waitedBefore;
      utilization = addTotals(utilization, totalsSince(model.forward.utilization.totals, stepsBefore));
      // Runs of the prompt step are counted too: the breakdown is per generated token, prompt amortized.
      for (const [kind, a] of Object.entries(model.runtime.tallySnapshot())) {
        const b = snapshot[kind] ?? { runs: 0, ms: 0 };
        const total = (ran[kind] ??= { runs: 0, ms: 0 });
        total.runs += a.runs - b.runs;
        total.ms += a.ms - b.ms;
      }
    }
    outputs.push(last);
  }
  const generated = decodeSteps + prompts.length * Math.max(1, runs);
  return { promptTokens, promptMs, decodeSteps, decodeMs, samplingMs, breakdown: tokenBreakdown({}, ran, promptMs + decodeMs, samplingMs, loadWaitMs, generated), outputs, utilization };
}

export interface DecodeRow {
  readonly bench: 'decode';
  readonly device: string;
  readonly threads: number;
  readonly weights: string;
  readonly attention: string;
  readonly experts: string;
  readonly prompt_tokens: number;
  readonly prompt_tokens_per_s: number;
  readonly decode_tokens: number;
  readonly decode_tokens_per_s: number;
  readonly ms_per_token: number;
  /** session runs per generated token (prompt steps included, amortized) */
  readonly runs_per_token: number;
  /** per generated token: milliseconds in each kind of session run, sampling, and the rest (JS between runs) */
  readonly breakdown_ms: Readonly<Record<string, number>>;
  /** S-MBU and S-MFU of the measured runs' steps, prompt steps included (fractions of --peak-memory-gbps / --peak-tflops) */
  readonly s_mbu: number | null;
  readonly s_mfu: number | null;
}

export async function benchDecodeRow(modelDir: string, load: ModelLoadOptions, threads: number, prompts: readonly string[], tokens: number, runs: number, peaks: Peaks): Promise<DecodeRow> {
  await using model = await MoeModel.load(modelDir, load);
  const t = await greedyDecode(model, prompts, tokens, runs);
  return {
    bench: 'decode',
    device: load.device,
    threads,
    weights: model.computeForms.weights,
    attention: model.computeForms.attention,
    experts: model.computeForms.experts,
    prompt_tokens: t.promptTokens,
    prompt_tokens_per_s: round((t.promptTokens * 1000) / t.promptMs),
    decode_tokens: t.decodeSteps,
    decode_tokens_per_s: round((t.decodeSteps * 1000) / t.decodeMs),
    ms_per_token: round(t.decodeMs / t.decodeSteps, 3),
    runs_per_token: t.breakdown.runs_per_token,
    breakdown_ms: t.breakdown.ms,
    ...utilizationFields(t.utilization, peaks),
  };
}

export function decodeTable(rows: readonly DecodeRow[]): string {
  const kinds = [...new Set(rows.flatMap((r) => Object.keys(r.breakdown_ms)))];
  const head = `| device | threads | weights | attention | experts | prompt tokens/s | decode tokens/s | ms/token | runs/token | S-MBU / S-MFU | ${kinds.map((k) => `${k} ms`).join(' | ')} |`;
  const rule = `|${'---|'.repeat(10 + kinds.length)}`;
  const body = rows.map(
    (r) =>
      `| ${r.device} | ${r.threads} | ${r.weights} | ${r.attention} | ${r.experts} | ${r.prompt_tokens_per_s} | ${r.decode_tokens_per_s} | ${r.ms_per_token} | ${r.runs_per_token} | ${utilizationCell(r)} | ${kinds.map((k) => r.breakdown_ms[k] ?? '-').join(' | ')} |`,
  );
  return [head, rule, ...body].join('\n');
}

/** Parses `f32/f32,int8/int4/f32`: weights/experts[/attention] ('default' leaves a class to the provider). */
export function parseFormPairs(list: string): FormPair[] {
  return list.split(',').map((pair) => {
    const [weights, experts, attention] = pair.split('/');
    return { weights: weights ?? 'default', experts: experts ?? weights ?? 'default', ...(attention !== undefined && { attention }) };
  });
}
