// THE forward pass of one sequence: embeddings -> per layer (attention block, routed experts) -> LM head.
// Shapes: T = tokens in this step, H = hidden size, E = experts, V = vocabulary.
import { ATTN } from '../graphs/attention-block.js';
import { LM_HEAD_IO } from '../graphs/lm-head.js';
import { MOE } from '../graphs/moe-block.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { ExpertStore } from '../experts/expert-store.js';
import type { RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import type { SequenceKvCache } from './kv-cache.js';
import type { ModelSessions } from './model-sessions.js';
import type { ResidentWeights } from './resident-weights.js';
import type { RopeTable } from './rope.js';
import { groupByExpert, routeTokens, type ExpertAssignment, type Routing } from './routing.js';

/** Sees every routing decision; used by conformance tests, traces and (later) the prefetcher. */
export interface RoutingObserver {
  onRouting(layer: number, routing: Routing): void;
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
          observer?.onRouting(layer, routing);
          const moeInput = required(out, ATTN.moeInput);
          hidden = undefined; // owned by applyExperts from here
          try {
            hidden = await this.applyExperts(layer, residual, moeInput, T, groupByExpert(routing));
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

  /**
   * residual (T, H) + sum over assignments of weight * expert(moeInput[rows]), in runs of
   * maxSlotsPerRun experts. Takes ownership of `residual`: it is released even when a run fails.
   */
  private async applyExperts(layer: number, residual: RtTensor, moeInput: RtTensor, T: number, assignments: readonly ExpertAssignment[]): Promise<RtTensor> {
    const { runtime, sessions, experts, maxSlotsPerRun } = this.m;
    let acc = residual;
    try {
      for (let first = 0; first < assignments.length; first += maxSlotsPerRun) {
      const chunk = assignments.slice(first, first + maxSlotsPerRun);
      const feeds: Record<string, RtTensor> = { [MOE.residual]: acc, [MOE.moeInput]: moeInput };
      const weightsOf = await Promise.all(chunk.map((a) => experts.get({ layer, expert: a.expert })));
      chunk.forEach((a, s) => {
        const n = a.rows.length;
        // (T, n): scatter[t, j] = weight of token t for its j-th routed row
        const scatter = new Float32Array(T * n);
        a.rows.forEach((row, j) => (scatter[row * n + j] = a.weights[j] as number));
        const w = weightsOf[s];
        if (!w) throw new Error('expert store returned too few experts');
        feeds[MOE.rows(s)] = runtime.int64(BigInt64Array.from(a.rows, BigInt), [n]);
        feeds[MOE.scatter(s)] = runtime.float32(scatter, [T, n]);
        feeds[MOE.gate(s)] = w.gate;
        feeds[MOE.up(s)] = w.up;
        feeds[MOE.down(s)] = w.down;
      });
      const out = await (await sessions.moeBlock(chunk.length)).run(feeds);
      const next = required(out, MOE.hidden);
      runtime.release(acc);
      acc = next;
      }
    } catch (err) {
      runtime.release(acc);
      throw err;
    }
    return acc;
  }
}

function required(outputs: Record<string, RtTensor>, name: string): RtTensor {
  const t = outputs[name];
  if (!t) throw new Error(`session returned no '${name}'`);
  return t;
}
