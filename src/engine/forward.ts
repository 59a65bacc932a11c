// THE forward pass of one sequence: embeddings -> per layer (attention block, routed experts) -> LM head.
// Shapes: T = tokens in this step, H = hidden size, E = experts, V = vocabulary.
import { ATTN } from '../graphs/attention-block.js';
import { LM_HEAD_IO } from '../graphs/lm-head.js';
import { MOE } from '../graphs/moe-block.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { ExpertStore, ExpertWeights } from '../experts/expert-store.js';
import type { RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import type { SequenceKvCache } from './kv-cache.js';
import type { ModelSessions } from './model-sessions.js';
import type { ResidentWeights } from './resident-weights.js';
import type { RopeTable } from './rope.js';
import { groupByExpert, routeTokens, type ExpertAssignment, type Routing } from './routing.js';

/** One sparse layer's routing in one forward step. */
export interface RoutingEvent {
  readonly layer: number;
  /** Position of the step's first token in its sequence (0 for a prompt). */
  readonly position: number;
  readonly routing: Routing;
  /** Router lookahead: lookahead[d - 1] holds the experts predicted for the d-th next sparse layer. */
  readonly lookahead: readonly (readonly number[])[];
}

/** Sees every routing decision; used by conformance tests and routing traces. */
export interface RoutingObserver {
  onRouting(event: RoutingEvent): void;
}

export interface ForwardParts {
  readonly spec: ModelSpec;
  readonly runtime: Runtime;
  readonly weights: ResidentWeights;
  readonly experts: ExpertStore;
  readonly sessions: ModelSessions;
  readonly rope: RopeTable;
  /** Most experts applied in one run of the routed-experts block. */
  readonly maxSlotsPerRun: number;
}

export class ForwardPass {
  constructor(private readonly m: ForwardParts) {}

  /**
   * Runs `tokens` through the model after what `kv` already holds, appends them to `kv`, and returns
   * logits (rows, V) for the last token or for every token of the step.
   */
  async step(kv: SequenceKvCache, tokens: readonly number[], logitsFor: 'last' | 'all', observer?: RoutingObserver): Promise<Float32Array> {
    const { spec, runtime, weights, sessions, rope } = this.m;
    const T = tokens.length;
    if (T === 0) throw new RangeError('forward step with no tokens');
    const start = kv.length;
    kv.begin(T);
    // (T, H) token embeddings; (T, 1, D/2) rotary tables for positions start .. start+T-1
    let hidden: RtTensor | undefined = runtime.float32(weights.embedding.lookup(tokens), [T, spec.hiddenSize]);
    const { cos, sin } = rope.slice(start, T);
    const ropeFeeds = {
      [ATTN.cos]: runtime.float32(cos, [T, 1, spec.headDim / 2]),
      [ATTN.sin]: runtime.float32(sin, [T, 1, spec.headDim / 2]),
    };
    try {
      for (let layer = 0; layer < spec.numLayers; layer++) {
        const variant = weights.variants[layer];
        if (!variant) throw new RangeError(`no layer ${layer}`);
        const out = await sessions.attentionFor(variant).run(
          { ...weights.layerInputs(layer), ...ropeFeeds, ...kv.layerFeeds(layer), [ATTN.hidden]: hidden },
          kv.layerFetches(layer),
        );
        kv.accept(layer, out);
        // (T, H) residual stream after attention (and the shared expert or dense MLP)
        const residual = required(out, ATTN.residual);
        runtime.release(hidden);
        hidden = residual;
        if (variant.mlp === 'sparse') {
          // (T, E) router logits, always on the host
          const logits = required(out, ATTN.routerLogits).data as Float32Array;
          const routing = routeTokens(logits, spec.numExperts, spec.topK, spec.normTopKProb);
          const lookahead = this.predictLookahead(out[ATTN.lookaheadLogits], T);
          observer?.onRouting({ layer, position: start, routing, lookahead });
          const moeInput = required(out, ATTN.moeInput);
          hidden = undefined; // owned by applyExperts from here
          try {
            hidden = await this.applyExperts(layer, residual, moeInput, T, groupByExpert(routing), lookahead);
          } finally {
            runtime.release(moeInput);
          }
        }
      }
      kv.commit();
      const rows = logitsFor === 'last' ? [T - 1] : Array.from({ length: T }, (_, i) => i);
      const out = await sessions.lmHead.run({
        ...weights.headInputs(),
        [LM_HEAD_IO.hidden]: hidden,
        [LM_HEAD_IO.rows]: runtime.int64(BigInt64Array.from(rows, BigInt), [rows.length]),
      });
      return required(out, LM_HEAD_IO.logits).data as Float32Array;
    } finally {
      runtime.release(hidden);
    }
  }

  /** Top-k experts per token from the lookahead logits, as one set per predicted layer. */
  private predictLookahead(logits: RtTensor | undefined, T: number): number[][] {
    if (!logits) return [];
    const { numExperts: E, topK } = this.m.spec;
    const data = logits.data as Float32Array;
    const layers = data.length / (T * E);
    const out: number[][] = [];
    for (let d = 0; d < layers; d++) {
      const rows = new Float32Array(T * E);
      for (let t = 0; t < T; t++) rows.set(data.subarray((t * layers + d) * E, (t * layers + d + 1) * E), t * E);
      const r = routeTokens(rows, E, topK, false);
      out.push([...new Set(r.experts)].sort((a, b) => a - b));
    }
    return out;
  }

  /**
   * residual (T, H) + sum over assignments of weight * expert(moeInput[rows]). Experts are leased from the
   * store in groups that fit its budget (all at once in decode), and applied in runs of maxSlotsPerRun.
   * Prefetches for later layers are issued after the first group is leased, so their loads overlap this
   * layer's runs. Takes ownership of `residual`: it is released even when a run fails.
   */
  private async applyExperts(
    layer: number,
    residual: RtTensor,
    moeInput: RtTensor,
    T: number,
    assignments: readonly ExpertAssignment[],
    lookahead: readonly (readonly number[])[],
  ): Promise<RtTensor> {
    const { runtime, experts, weights, maxSlotsPerRun } = this.m;
    const group = Math.max(1, experts.maxExpertsInUse);
    let acc = residual;
    try {
      for (let first = 0; first < assignments.length; first += group) {
        const leased = assignments.slice(first, first + group);
        const lease = await experts.acquire(layer, leased.map((a) => a.expert));
        try {
          if (first === 0) {
            weights.lookaheadTargets(layer).forEach((target, d) => {
              const predicted = lookahead[d] ?? [];
              if (d < experts.prefetchDepth) experts.prefetch(target, predicted);
              else experts.recordPrediction(target, predicted);
            });
          }
          for (let run = 0; run < leased.length; run += maxSlotsPerRun) {
            const chunk = leased.slice(run, run + maxSlotsPerRun);
            const next = await this.runExperts(acc, moeInput, T, chunk, lease.weights.slice(run, run + maxSlotsPerRun));
            runtime.release(acc);
            acc = next;
          }
        } finally {
          lease.release();
        }
      }
    } catch (err) {
      runtime.release(acc);
      throw err;
    }
    return acc;
  }

  /** One run of the routed-experts graph over `chunk` (one slot per expert). */
  private async runExperts(acc: RtTensor, moeInput: RtTensor, T: number, chunk: readonly ExpertAssignment[], expertWeights: readonly ExpertWeights[]): Promise<RtTensor> {
    const { runtime, sessions } = this.m;
    const feeds: Record<string, RtTensor> = { [MOE.residual]: acc, [MOE.moeInput]: moeInput };
    chunk.forEach((a, s) => {
      const n = a.rows.length;
      // (T, n): scatter[t, j] = weight of token t for its j-th routed row
      const scatter = new Float32Array(T * n);
      a.rows.forEach((row, j) => (scatter[row * n + j] = a.weights[j] as number));
      const w = expertWeights[s];
      if (!w) throw new Error('expert lease holds too few experts');
      feeds[MOE.rows(s)] = runtime.int64(BigInt64Array.from(a.rows, BigInt), [n]);
      feeds[MOE.scatter(s)] = runtime.float32(scatter, [T, n]);
      feeds[MOE.gate(s)] = w.gate;
      feeds[MOE.up(s)] = w.up;
      feeds[MOE.down(s)] = w.down;
    });
    const out = await (await sessions.moeBlock(chunk.length)).run(feeds);
    return required(out, MOE.hidden);
  }
}

function required(outputs: Record<string, RtTensor>, name: string): RtTensor {
  const t = outputs[name];
  if (!t) throw new Error(`session returned no '${name}'`);
  return t;
}
