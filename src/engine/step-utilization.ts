// Sparsity-aware utilization of engine steps, MoE-CAP's S-MBU and S-MFU (Jiang et al., arXiv 2412.07067):
// the bytes a step must move and the FLOPs it must do, counting only the experts the step activated,
// over the step's wall time, over the machine's peak memory bandwidth and peak FLOP rate.
//
// Per engine step (B sequences; sequence b has P_b tokens in its KV cache before the step and computes T_b):
//   bytes = sum over sparse layers of distinct experts the step ran there x one expert's bytes in compute form
//         + dense weights in compute form (attention, norms, routers, router lookahead, shared experts,
//           dense MLPs, final norm, LM head), once per step, + the embedding rows of the step's tokens
//         + KV: sum_b (P_b + T_b) rows read + T_b rows written, x (2 x layers x kv heads x head dim x 4 bytes)
//   flops = 2 x T x (dense matmul parameters per token + top-k x one expert's parameters x sparse layers)
//         + 2 x LM-head rows x vocabulary x hidden
//         + 4 x heads x head dim x layers x sum_b (T_b x P_b + T_b (T_b + 1) / 2)      (QK^T and AV, causal)
//   S-MBU = bytes / step seconds / peak bytes per second;  S-MFU = flops / step seconds / peak FLOP/s.
// Over several steps both are ratios of sums (sum of bytes / sum of seconds), not means of per-step ratios.
//
// Where this differs from MoE-CAP's reference code (github.com/sparse-generative-ai/MoE-CAP, basic_utils.py):
// it counts attention projections, experts and KV only, all at one precision; here every resident weight
// is counted at the bytes of its compute form (int4 experts with their scales, say), routers and the LM
// head included, and KV writes too. Its S-MFU counts one expert per layer per token and divides its peak
// FLOP figure by 2; here top-k experts per token, against the measured fp32 peak.
import type { ModelSpec } from '../model/hf-config.js';
import { kvBytesPerRow } from './kv-cache.js';

export interface Peaks {
  readonly memoryBytesPerS: number;
  readonly flopsPerS: number;
}

/**
 * Measured with `npm run bench -- peaks` on this project's development VM (2 vCPUs of an "Intel(R) Xeon(R)
 * Processor" with AVX-512, 23.5 GiB RAM, onnxruntime-node 1.30, Node 20) on 2026-11-30, six runs, every
 * run's peaks from 2 threads: memory 43.3, 43.1, 43.2, 44.8, 38.5, 39.0 GB/s (worker-thread copy of 512 MiB
 * arrays), fp32 MatMul 0.233, 0.154, 0.233, 0.168, 0.138, 0.233 TFLOP/s (the low runs had a neighbour on
 * the second vCPU). A peak is the most the machine gave, rounded down: 44 GB/s and 0.23 TFLOP/s. Another
 * machine's come from running that command there and passing what it prints (--peak-memory-gbps,
 * --peak-tflops) to `serve` and the benchmarks.
 */
export const DEFAULT_PEAKS: Peaks = { memoryBytesPerS: 44e9, flopsPerS: 0.23e12 };

/** What the accounting needs of the loaded weights (ForwardPass.weightSizes). */
export interface WeightSizes {
  /** One routed expert in compute form, as the expert store holds it (ExpertStore.expertBytes). */
  readonly expertBytes: number;
  /** Every resident (non-expert) weight in compute form, the whole embedding table included (ResidentWeights.residentBytes). */
  readonly residentBytes: number;
  /** The embedding table (stored dtype): a step reads only its tokens' rows. */
  readonly embeddingBytes: number;
  /** Per layer: rows of the router lookahead (later layers' routers) its attention block computes per token. */
  readonly lookaheadRows: readonly number[];
}

/** A model's per-step constants, computed once. */
export interface StepCostModel {
  readonly expertBytes: number;
  /** Resident weights read once a step: everything but the embedding table. */
  readonly denseBytes: number;
  readonly embeddingRowBytes: number;
  /** K and V of one position over every layer. */
  readonly kvBytesPerToken: number;
  /** Matmul parameters every token goes through: q, k, v, o, routers, router lookahead, shared experts, dense MLPs. */
  readonly denseParamsPerToken: number;
  /** One routed expert's matmul parameters (gate, up, down). */
  readonly expertParams: number;
  /** Experts each token runs over all sparse layers: top-k x sparse layers. */
  readonly expertsPerToken: number;
  /** LM head parameters, per row of logits. */
  readonly lmHeadParams: number;
  /** FLOPs of QK^T and AV for one (query, key) pair over every layer: 4 x heads x head dim x layers. */
  readonly attentionFlopsPerPair: number;
}

export function stepCostModel(spec: ModelSpec, w: WeightSizes): StepCostModel {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = spec;
  let denseParams = 0;
  for (let l = 0; l < spec.numLayers; l++) {
    denseParams += H * (nH + 2 * nKv) * D + nH * D * H + (w.lookaheadRows[l] ?? 0) * H;
    if (spec.sparseLayers[l] ?? true) {
      denseParams += spec.numExperts * H;
      if (spec.sharedExpertIntermediateSize !== null) denseParams += 3 * H * spec.sharedExpertIntermediateSize + H;
    } else {
      denseParams += 3 * H * spec.denseIntermediateSize;
    }
  }
  return {
    expertBytes: w.expertBytes,
    denseBytes: w.residentBytes - w.embeddingBytes,
    embeddingRowBytes: w.embeddingBytes / spec.vocabSize,
    kvBytesPerToken: kvBytesPerRow(spec),
    denseParamsPerToken: denseParams,
    expertParams: 3 * H * spec.expertIntermediateSize,
    expertsPerToken: spec.topK * spec.sparseLayers.filter(Boolean).length,
    lmHeadParams: spec.vocabSize * H,
    attentionFlopsPerPair: 4 * nH * D * spec.numLayers,
  };
}

/** What one engine step computed. */
export interface StepShape {
  /** Per sequence: positions in its KV cache before the step, and tokens the step computes for it. */
  readonly sequences: readonly { readonly past: number; readonly tokens: number }[];
  /** Rows of logits the LM head computed (one per sampling sequence; every prompt row for prompt logprobs). */
  readonly logitsRows: number;
  /** Distinct experts the step ran, summed over the sparse layers. */
  readonly distinctExperts: number;
}

export interface StepCost {
  readonly expertBytes: number;
  readonly denseBytes: number;
  readonly kvBytes: number;
  readonly bytes: number;
  readonly flops: number;
}

/** Bytes and FLOPs of one step; O(sequences). */
export function stepCost(m: StepCostModel, s: StepShape): StepCost {
  let tokens = 0;
  let kvRows = 0;
  let pairs = 0;
  for (const { past, tokens: t } of s.sequences) {
    tokens += t;
    kvRows += past + 2 * t;
    pairs += t * past + (t * (t + 1)) / 2;
  }
  const expertBytes = s.distinctExperts * m.expertBytes;
  const denseBytes = m.denseBytes + tokens * m.embeddingRowBytes;
  const kvBytes = kvRows * m.kvBytesPerToken;
  const flops = 2 * tokens * (m.denseParamsPerToken + m.expertsPerToken * m.expertParams) + 2 * s.logitsRows * m.lmHeadParams + pairs * m.attentionFlopsPerPair;
  return { expertBytes, denseBytes, kvBytes, bytes: expertBytes + denseBytes + kvBytes, flops };
}

/**
 * Counts the distinct experts of routings, one sparse layer at a time, without clearing a set per layer:
 * an expert is counted when its mark is not the current layer's stamp.
 */
export class DistinctExperts {
  private readonly marks: Uint32Array;
  private stamp = 0;

  constructor(numExperts: number) {
    this.marks = new Uint32Array(numExperts);
  }

  /** Distinct ids among `experts` (a layer's (tokens, top-k) expert ids). */
  count(experts: Int32Array): number {
    if (++this.stamp === 0xffffffff) {
      this.marks.fill(0);
      this.stamp = 1;
    }
    let n = 0;
    for (const e of experts) {
      if (this.marks[e] === this.stamp) continue;
      this.marks[e] = this.stamp;
      n++;
    }
    return n;
  }
}

/** Sums over engine steps. */
export interface UtilizationTotals {
  readonly steps: number;
  readonly bytes: number;
  readonly expertBytes: number;
  readonly denseBytes: number;
  readonly kvBytes: number;
  readonly flops: number;
  /** Wall time of the steps. */
  readonly seconds: number;
}

export const ZERO_TOTALS: UtilizationTotals = { steps: 0, bytes: 0, expertBytes: 0, denseBytes: 0, kvBytes: 0, flops: 0, seconds: 0 };

/** S-MBU and S-MFU of a sum of steps, as fractions of the peaks; null without step time. */
export function utilizationOf(t: Pick<UtilizationTotals, 'bytes' | 'flops' | 'seconds'>, peaks: Peaks): { smbu: number | null; smfu: number | null } {
  if (!(t.seconds > 0)) return { smbu: null, smfu: null };
  return { smbu: t.bytes / t.seconds / peaks.memoryBytesPerS, smfu: t.flops / t.seconds / peaks.flopsPerS };
}

/** a + b, field by field. */
export function addTotals(a: UtilizationTotals, b: UtilizationTotals): UtilizationTotals {
  return {
    steps: a.steps + b.steps,
    bytes: a.bytes + b.bytes,
    expertBytes: a.expertBytes + b.expertBytes,
    denseBytes: a.denseBytes + b.denseBytes,
    kvBytes: a.kvBytes + b.kvBytes,
    flops: a.flops + b.flops,
    seconds: a.seconds + b.seconds,
  };
}

/** after - before, field by field: the steps between two snapshots of a tally. */
export function totalsSince(after: UtilizationTotals, before: UtilizationTotals): UtilizationTotals {
  return {
    steps: after.steps - before.steps,
    bytes: after.bytes - before.bytes,
    expertBytes: after.expertBytes - before.expertBytes,
    denseBytes: after.denseBytes - before.denseBytes,
    kvBytes: after.kvBytes - before.kvBytes,
    flops: after.flops - before.flops,
    seconds: after.seconds - before.seconds,
  };
}

/**
 * The window of the /metrics gauges: steps that ended in the last RECENT_SECONDS whole seconds and the
 * current one. A fixed window, not "since the last scrape": several scrapers (two Prometheus servers, a
 * person with curl) would otherwise shorten each other's windows. Rates over any other range come from
 * the counters.
 */
export const RECENT_SECONDS = 15;

interface Bucket {
  second: number;
  bytes: number;
  flops: number;
  seconds: number;
  steps: number;
}

/** A running sum of steps' costs and times, with the last RECENT_SECONDS kept per second. O(1) per step. */
export class UtilizationTally {
  private total: { -readonly [K in keyof UtilizationTotals]: number } = { ...ZERO_TOTALS };
  private readonly buckets: Bucket[] = Array.from({ length: RECENT_SECONDS + 1 }, () => ({ second: -1, bytes: 0, flops: 0, seconds: 0, steps: 0 }));

  /** Adds a step that took `seconds` and ended at `nowMs` (performance.now()). */
  record(cost: StepCost, seconds: number, nowMs = performance.now()): void {
    const t = this.total;
    t.steps++;
    t.bytes += cost.bytes;
    t.expertBytes += cost.expertBytes;
    t.denseBytes += cost.denseBytes;
    t.kvBytes += cost.kvBytes;
    t.flops += cost.flops;
    t.seconds += seconds;
    const second = Math.floor(nowMs / 1000);
    const b = this.buckets[second % this.buckets.length] as Bucket;
    if (b.second !== second) Object.assign(b, { second, bytes: 0, flops: 0, seconds: 0, steps: 0 });
    b.bytes += cost.bytes;
    b.flops += cost.flops;
    b.seconds += seconds;
    b.steps++;
  }

  get totals(): UtilizationTotals {
    return { ...this.total };
  }

  /** The steps of the recent window (RECENT_SECONDS); breakdown fields are 0. */
  recent(nowMs = performance.now()): UtilizationTotals {
    const now = Math.floor(nowMs / 1000);
    let bytes = 0;
    let flops = 0;
    let seconds = 0;
    let steps = 0;
    for (const b of this.buckets) {
      if (b.second < now - RECENT_SECONDS || b.second > now) continue;
      bytes += b.bytes;
      flops += b.flops;
      seconds += b.seconds;
      steps += b.steps;
    }
    return { ...ZERO_TOTALS, steps, bytes, flops, seconds };
  }
}
