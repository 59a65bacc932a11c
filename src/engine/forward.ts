// THE forward pass of a batch of sequences: embeddings -> per layer (attention block per sequence, routed
// experts once for the whole batch) -> LM head.
// Shapes: T_i = tokens of sequence i in this step, H = hidden size, E = experts, V = vocabulary.
import { ATTN } from '../graphs/attention-block.js';
import { LM_HEAD_IO } from '../graphs/lm-head.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { ExpertStore } from '../experts/expert-store.js';
import { countVotes, sumVotes, type RankedVotes } from '../experts/lookahead-votes.js';
import type { RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import { KV_BATCH } from '../graphs/kv-batch.js';
import type { ExpertRoute, SlotFeeds } from './expert-routes.js';
import { MOE, type ExpertsShape } from '../graphs/moe-block.js';
import type { HybridExperts } from './hybrid-experts.js';
import { appendRowsFeed, type SequenceKvCache } from './kv-cache.js';
import type { ModelSessions } from './model-sessions.js';
import type { ResidentWeights } from './resident-weights.js';
import { groupByExpert, routeTokens, type ExpertAssignment, type Routing } from './routing.js';
import { RowOps } from './row-ops.js';
import { UtilizationTally, type WeightSizes } from './step-utilization.js';

/** One sparse layer's routing in one forward step. */
export interface RoutingEvent {
  /**
   * Which forward pass: this model's count of committed batched steps (from 0), so events with the same
   * pass were routed together and share the pass's use of the expert cache. A failed step is not counted.
   */
  readonly pass: number;
  readonly layer: number;
  /** Position of the step's first token in its sequence (0 for a prompt). */
  readonly position: number;
  readonly routing: Routing;
  /** Router lookahead: lookahead[d - 1] holds the experts predicted for the d-th next sparse layer, most voted first. */
  readonly lookahead: readonly (readonly number[])[];
  /**
   * lookaheadVotes[d - 1][i]: how many of the step's tokens put lookahead[d - 1][i] in their top-k. The
   * batch's prefetch sums these over its sequences (lookahead-votes.ts), so a trace can rebuild it.
   */
  readonly lookaheadVotes: readonly (readonly number[])[];
}

/** Sees every routing decision; used by conformance tests and routing traces. */
export interface RoutingObserver {
  onRouting(event: RoutingEvent): void;
}

/**
 * Sees the routing of every token of a committed step, whichever sequences have an observer: the engine's
 * expert-affinity table learns from it (expert-affinity.ts).
 */
export interface StepRoutingObserver {
  /** One sparse layer's routing: row t of `routing` is `tokens[t]`'s (the items' tokens, one after another). */
  onStepRouting(layer: number, tokens: readonly number[], routing: Routing): void;
}

export interface ForwardParts {
  readonly spec: ModelSpec;
  readonly runtime: Runtime;
  readonly weights: ResidentWeights;
  readonly experts: ExpertStore;
  readonly sessions: ModelSessions;
  /** How routed experts are computed on this provider. */
  readonly route: ExpertRoute;
  /** GPU providers: where each expert-cache miss is computed (hybrid-experts.ts); absent, every miss is loaded. */
  readonly hybrid?: HybridExperts;
}

/** One sequence's share of a batched forward step. */
export interface BatchItem {
  readonly kv: SequenceKvCache;
  readonly tokens: readonly number[];
  /** Logits to return: the last token's (to sample), every token's, or none (a prefill chunk). */
  readonly logits: 'last' | 'all' | 'none';
  readonly observer?: RoutingObserver;
}

/**
 * session.run is synchronous (and runs go to the native session without the public API's setImmediate),
 * and awaiting an expert that is already resident does not reach the event loop either, so without this
 * a whole batched step (tens of ms with 16 sequences on a CPU) would hold the thread: health checks, new
 * requests and streamed tokens would wait for it. Before each attention run and each group of expert
 * runs, a step that has held the thread this long lets pending I/O run.
 */
const YIELD_AFTER_MS = 4;

export class ForwardPass {
  private readonly rows: RowOps;
  private lastYield = performance.now();
  /** Batched steps committed so far: the next one's pass number for routing events. */
  private committedPasses = 0;
  /**
   * Every engine step run on this model, whichever engine ran it (step-utilization.ts): benchmarks that run
   * engines they do not hold (generate()) read it before and after.
   */
  readonly utilization = new UtilizationTally();

  constructor(private readonly m: ForwardParts) {
    this.rows = new RowOps(m.runtime, m.spec.hiddenSize);
  }

  /** The weights' sizes that the step-utilization accounting reads (step-utilization.ts). */
  get weightSizes(): WeightSizes {
    const { experts, weights } = this.m;
    return { expertBytes: experts.expertBytes, residentBytes: weights.residentBytes, embeddingBytes: weights.embedding.bytes, lookaheadRows: weights.variants.map((v) => v.lookaheadRows) };
  }

  /**
   * Runs `tokens` through the model after what `kv` already holds, appends them to `kv`, and returns
   * logits (rows, V) for the last token or for every token of the step.
   */
  async step(kv: SequenceKvCache, tokens: readonly number[], logitsFor: 'last' | 'all', observer?: RoutingObserver): Promise<Float32Array> {
    const [logits] = await this.stepBatch([{ kv, tokens, logits: logitsFor, observer }]);
    if (!logits) throw new Error('forward step returned no logits');
    return logits;
  }

  /**
   * One forward step over several sequences. Attention runs per sequence over its own KV cache; the
   * routed experts run once for the tokens of all of them, so each expert the step needs is loaded
   * once and applied to every token routed to it; the LM head runs once for every row asked for.
   * Returns each item's logits ((rows, V), or null for 'none'). A step that throws leaves every KV cache
   * as it was. `stepObserver` sees every sparse layer's routing of the whole batch once the step commits.
   */
  async stepBatch(items: readonly BatchItem[], stepObserver?: StepRoutingObserver): Promise<(Float32Array | null)[]> {
    const { spec, runtime, weights, sessions } = this.m;
    const H = spec.hiddenSize;
    if (items.length === 0) return [];
    if (items.some((i) => i.tokens.length === 0)) throw new RangeError('forward step with no tokens');
    const starts = items.map((i) => i.kv.length);
    const offsets: number[] = [];
    let total = 0;
    for (const item of items) {
      offsets.push(total);
      total += item.tokens.length;
    }
    items.forEach((item) => item.kv.begin(item.tokens.length));
    // GPU providers: a step of decode tokens only runs each layer's attention once for the whole batch, the
    // run packing and unpacking the sequences' KV caches itself (decodeBatchAttentionGpu); the hidden rows
    // stay joined throughout.
    const gpuDecode = runtime.onGpu && items.length > 1 && items.every((item) => item.tokens.length === 1);
    // GPU providers: the batch's joined rows (expert output, or a decode batch's embeddings and residual),
    // which several entries of `hidden` are row ranges of
    let shared = gpuDecode ? runtime.float32(weights.embedding.lookup(items.flatMap((item) => item.tokens)), [items.length, H]) : undefined;
    // per sequence: its (T_i, H) rows, first the embeddings
    let hidden: HiddenRows[] = items.map((item, i) =>
      shared ? { tensor: shared, start: i } : { tensor: runtime.float32(weights.embedding.lookup(item.tokens), [item.tokens.length, H]), start: 0 },
    );
    // per sequence: (1, T_i) positions and the (2,) batch shape (1, T_i), the same at every layer
    const seqFeeds = items.map((item, i) => {
      const T = item.tokens.length;
      const start = starts[i] as number;
      return {
        [ATTN.positions]: runtime.int64(BigInt64Array.from({ length: T }, (_, t) => BigInt(start + t)), [1, T]),
        [ATTN.batchShape]: runtime.int64(BigInt64Array.of(1n, BigInt(T), -1n), [3]),
      };
    });
    // Sequences decoding one token each share one attention run per layer where the provider allows
    // (on the CPU: their KV rows are packed into one batch, see decodeBatchAttention).
    const decodeGroup = runtime.onGpu ? [] : items.flatMap((item, i) => (item.tokens.length === 1 ? [i] : []));
    if (decodeGroup.length < 2) decodeGroup.length = 0;
    // GPU decode batches: the layer's MoE input rows, joined by the batched attention run
    let batchMoeInput: RtTensor | undefined;
    // (sum T_i, H): the batch's rows joined, when the last layer leaves them that way
    let joined: RtTensor | undefined;
    // GPU providers: the last sparse layer's experts, leased and fed, for the next attention run to apply
    let pending: PendingExperts | undefined;
    // Routing reaches the observers only once the step commits: a failed step is run again (per sequence,
    // by the engine), and its routing must not be traced twice.
    const observed: { observer: RoutingObserver; event: Omit<RoutingEvent, 'pass'> }[] = [];
    const stepRoutings: { layer: number; routing: Routing }[] = [];
    try {
      for (let layer = 0; layer < spec.numLayers; layer++) {
        await this.letIoIn();
        const variant = weights.variants[layer];
        if (!variant) throw new RangeError(`no layer ${layer}`);
        const outs: Record<string, RtTensor>[] = new Array<Record<string, RtTensor>>(items.length);
        if (gpuDecode) {
          const batched = await this.decodeBatchAttentionGpu(layer, items, pending ?? (shared as RtTensor), starts);
          batched.views.forEach((v, i) => (outs[i] = v));
          runtime.release(shared);
          pending = disposePending(runtime, pending);
          shared = batched.residual;
          batchMoeInput = batched.moeInput;
          hidden = items.map((_, i) => ({ tensor: batched.residual, start: i }));
        } else {
          if (decodeGroup.length > 0) {
            const grouped = await this.decodeBatchAttention(layer, decodeGroup.map((i) => items[i] as BatchItem), decodeGroup.map((i) => (hidden[i] as HiddenRows).tensor), decodeGroup.map((i) => starts[i] as number));
            decodeGroup.forEach((i, b) => (outs[i] = grouped[b] as Record<string, RtTensor>));
          }
          for (const [i, item] of items.entries()) {
            // A lone sequence's previous experts may be pending, to be applied by this run (applyExperts).
            const h = pending ? undefined : (hidden[i] as HiddenRows);
            if (!outs[i]) {
              await this.letIoIn();
              const feeds = { ...weights.layerInputs(layer), ...seqFeeds[i], ...item.kv.layerFeeds(layer), ...(runtime.onGpu && rowRangeFeeds(runtime, h?.start ?? 0, item.tokens.length)) };
              const out = pending
                ? await (await sessions.attentionShapedFor(layer, { experts: pendingShape(pending) })).run({ ...feeds, ...pendingFeeds(pending) })
                : await sessions.attentionFor(layer).run({ ...feeds, [ATTN.hidden]: (h as HiddenRows).tensor });
              item.kv.accept(layer, out);
              outs[i] = out;
            }
            pending = disposePending(runtime, pending);
            if (h && h.tensor !== shared) runtime.release(h.tensor);
            // (T_i, H) residual stream after attention (and the shared expert or dense MLP)
            hidden[i] = { tensor: required(outs[i] as Record<string, RtTensor>, ATTN.residual), start: 0 };
          }
          runtime.release(shared);
          shared = undefined;
        }
        if (variant.mlp === 'dense') continue;
        // (sum T_i, E) router logits of the whole batch, always on the host
        const routing = routeTokens(concatData(outs.map((o) => required(o, ATTN.routerLogits))), spec.numExperts, spec.topK, spec.normTopKProb);
        if (stepObserver) stepRoutings.push({ layer, routing });
        const lookaheads = outs.map((o) => this.predictLookahead(o[ATTN.lookaheadLogits]));
        items.forEach((item, i) => {
          const lookahead = lookaheads[i] ?? [];
          if (item.observer) {
            observed.push({
              observer: item.observer,
              event: { layer, position: starts[i] as number, routing: sliceRouting(routing, offsets[i] as number, item.tokens.length), lookahead: lookahead.map((p) => p.experts), lookaheadVotes: lookahead.map((p) => p.votes) },
            });
          }
        });
        const moeInputs = gpuDecode ? [] : outs.map((o) => required(o, ATTN.moeInput));
        let residual: RtTensor;
        let moeInput: RtTensor;
        if (gpuDecode) {
          // Already joined by the batched attention run; ownership passes to the expert step.
          [residual, moeInput] = [shared as RtTensor, batchMoeInput as RtTensor];
          shared = batchMoeInput = undefined;
        } else {
          [residual, moeInput] = await this.joinPair(hidden.map((h) => h.tensor), moeInputs);
        }
        hidden = [];
        // GPU providers: a lone sequence's or a decode batch's experts can be applied by the next layer's
        // attention run, or the last layer's by the LM head, which then starts with them (one run a layer
        // instead of two).
        const fuse = runtime.onGpu && (items.length === 1 || gpuDecode);
        let applied: RtTensor | PendingExperts | undefined;
        try {
          // Summing the sequences' votes ranks the batch as voting over all its tokens would.
          const depths = Math.max(0, ...lookaheads.map((l) => l.length));
          const batchLookahead = Array.from({ length: depths }, (_, d) => sumVotes(lookaheads.flatMap((l) => l[d] ?? [])).experts);
          applied = await this.applyExperts(layer, residual, moeInput, total, groupByExpert(routing), batchLookahead, fuse);
        } finally {
          // A pending application owns the MoE input (when fused, it is the only one: see `fuse`).
          if (!isPending(applied)) {
            if (items.length > 1) runtime.release(moeInput);
            moeInputs.forEach((t) => runtime.release(t));
          }
        }
        if (isPending(applied)) {
          pending = applied;
          continue;
        }
        const out = applied as RtTensor;
        if (layer === spec.numLayers - 1 || items.length === 1) {
          hidden = items.length === 1 ? [{ tensor: out, start: 0 }] : [];
          joined = items.length === 1 ? undefined : out;
        } else if (runtime.onGpu) {
          // Each sequence's next attention run reads its rows straight out of the batch's output.
          shared = out;
          hidden = items.map((_, i) => ({ tensor: out, start: offsets[i] as number }));
        } else {
          hidden = items.map((item, i) => ({ tensor: this.rows.slice(out, offsets[i] as number, item.tokens.length), start: 0 }));
        }
      }
      if (!pending && !joined && shared && hidden.every((h) => h.tensor === shared)) {
        // A GPU decode batch whose last layer is dense: its residual rows are the batch's, in order.
        joined = shared;
        shared = undefined;
        hidden = [];
      }
      if (!pending && !joined) {
        joined = await this.join(hidden.map((h) => h.tensor));
        hidden = [];
      }
      const logits = await this.logits(pending ?? (joined as RtTensor), items, offsets);
      items.forEach((item) => item.kv.commit());
      const pass = this.committedPasses++;
      for (const { observer, event } of observed) observer.onRouting({ pass, ...event });
      if (stepObserver && stepRoutings.length > 0) {
        const tokens = items.flatMap((item) => item.tokens);
        for (const { layer, routing } of stepRoutings) stepObserver.onStepRouting(layer, tokens, routing);
      }
      return logits;
    } catch (err) {
      // Nothing of a failed step stays in the caches, so the engine can run its sequences again.
      items.forEach((item) => item.kv.rollback());
      throw err;
    } finally {
      new Set([...hidden.map((h) => h.tensor), ...(shared ? [shared] : [])]).forEach((t) => runtime.release(t));
      disposePending(runtime, pending);
      runtime.release(batchMoeInput);
      runtime.release(joined);
    }
  }

  private async letIoIn(): Promise<void> {
    if (performance.now() - this.lastYield < YIELD_AFTER_MS) return;
    await new Promise((resolve) => setImmediate(resolve));
    this.lastYield = performance.now();
  }

  /**
   * Attention for B sequences with one new token each, in one GroupQueryAttention run of batch B. The
   * sequences' caches are separate buffers, so their rows are packed into a (B, kvHeads, P, D) past
   * (P = longest past + 1); the run's appended rows go back to each sequence's cache. The packing is
   * O(context) per step, as reading the cache is anyway; it replaces B - 1 session runs. CPU provider
   * only (GPU tensors cannot be packed from JS).
   * Returns each sequence's outputs as row views of the batched ones.
   */
  private async decodeBatchAttention(
    layer: number,
    items: readonly BatchItem[],
    hidden: readonly RtTensor[],
    positions: readonly number[],
  ): Promise<Record<string, RtTensor>[]> {
    const { spec, runtime, weights, sessions } = this.m;
    const B = items.length;
    const H = spec.hiddenSize;
    const nKv = spec.numKvHeads;
    const D = spec.headDim;
    const P = Math.max(...positions) + 1;
    // (B, H) this step's token of each sequence
    const x = concatData(hidden);
    // (B, nKv, P, D) packed past keys and values
    const pastKey = new Float32Array(B * nKv * P * D);
    const pastValue = new Float32Array(B * nKv * P * D);
    items.forEach((item, b) => {
      const c = item.kv.hostRows(layer);
      if (!c) throw new Error('batched decode needs host KV caches');
      const len = positions[b] as number;
      for (let h = 0; h < nKv; h++) {
        const from = h * c.capacity * D;
        pastKey.set(c.key.subarray(from, from + len * D), (b * nKv + h) * P * D);
        pastValue.set(c.value.subarray(from, from + len * D), (b * nKv + h) * P * D);
      }
    });
    const out = await sessions.attentionFor(layer).run({
      ...weights.layerInputs(layer),
      [ATTN.hidden]: runtime.float32(x, [B, H]),
      [ATTN.batchShape]: runtime.int64(BigInt64Array.of(BigInt(B), 1n, -1n), [3]),
      [ATTN.appendRows]: appendRowsFeed(runtime, (items[0] as BatchItem).kv.shape, positions, 1),
      [ATTN.positions]: runtime.int64(BigInt64Array.from(positions, BigInt), [B, 1]),
      [ATTN.pastKey]: runtime.float32(pastKey, [B, nKv, P, D]),
      [ATTN.pastValue]: runtime.float32(pastValue, [B, nKv, P, D]),
      [ATTN.seqlensK]: runtime.int32(Int32Array.from(positions), [B]),
      [ATTN.totalSeqLen]: runtime.int32(Int32Array.of(P), []),
    });
    items.forEach((item, b) => item.kv.accept(layer, out, b));
    return rowViews(runtime, out, [ATTN.residual, ATTN.moeInput, ATTN.routerLogits, ATTN.lookaheadLogits], B);
  }

  /**
   * GPU providers: attention for B sequences with one new token each, in one run of batch B. Their KV
   * caches are separate device tensors; the run packs them into a zero-padded (B, kvHeads, P, D) past and
   * cuts its present back into each sequence's cache (graphs/kv-batch.ts): one run a layer instead of B.
   * `hidden` holds the B rows in item order, or the previous layer's experts make them in the same run (the
   * caller disposes them). Returns the joined residual and MoE input (device; none for a
   * dense layer) and each sequence's router and lookahead logits (host views).
   */
  private async decodeBatchAttentionGpu(
    layer: number,
    items: readonly BatchItem[],
    hidden: RtTensor | PendingExperts,
    positions: readonly number[],
  ): Promise<{ residual: RtTensor; moeInput: RtTensor | undefined; views: Record<string, RtTensor>[] }> {
    const { runtime, weights, sessions } = this.m;
    const B = items.length;
    const P = Math.max(...positions);
    const pending = isPending(hidden) ? hidden : undefined;
    const feeds: Record<string, RtTensor> = {
      ...weights.layerInputs(layer),
      ...(pending ? pendingFeeds(pending) : { [ATTN.hidden]: hidden as RtTensor }),
      ...rowRangeFeeds(runtime, 0, B),
      [ATTN.batchShape]: runtime.int64(BigInt64Array.of(BigInt(B), 1n, -1n), [3]),
      [ATTN.positions]: runtime.int64(BigInt64Array.from(positions, BigInt), [B, 1]),
      [ATTN.seqlensK]: runtime.int32(Int32Array.from(positions), [B]),
      [ATTN.totalSeqLen]: runtime.int32(Int32Array.of(P + 1), []),
    };
    items.forEach((item, b) => {
      const L = positions[b] as number;
      const past = item.kv.layerFeeds(layer);
      feeds[KV_BATCH.pastKey(b)] = past[ATTN.pastKey] as RtTensor;
      feeds[KV_BATCH.pastValue(b)] = past[ATTN.pastValue] as RtTensor;
      feeds[KV_BATCH.pad(b)] = runtime.int64(BigInt64Array.of(0n, 0n, 0n, 0n, 0n, 0n, BigInt(P - L), 0n), [8]);
      feeds[KV_BATCH.end(b)] = runtime.int64(BigInt64Array.of(BigInt(b + 1), BigInt(L + 1)), [2]);
    });
    const out = await (await sessions.attentionShapedFor(layer, { kvBatch: B, ...(pending && { experts: pendingShape(pending) }) })).run(feeds);
    items.forEach((item, b) => item.kv.accept(layer, { [ATTN.presentKey]: required(out, KV_BATCH.key(b)), [ATTN.presentValue]: required(out, KV_BATCH.value(b)) }));
    // Dense layers have no MoE input.
    return { residual: required(out, ATTN.residual), moeInput: out[ATTN.moeInput], views: rowViews(runtime, out, [ATTN.routerLogits, ATTN.lookaheadLogits], B) };
  }

  /**
   * The batch's residual rows and MoE input rows, each joined (one run on GPU providers). Releases the
   * residual parts it joins; the MoE inputs are the caller's.
   */
  private async joinPair(residuals: readonly RtTensor[], moeInputs: readonly RtTensor[]): Promise<[RtTensor, RtTensor]> {
    if (residuals.length === 1) return [residuals[0] as RtTensor, moeInputs[0] as RtTensor];
    const [residual, moeInput] = (await this.rows.concatGroups([residuals, moeInputs])) as [RtTensor, RtTensor];
    residuals.forEach((p) => this.m.runtime.release(p));
    return [residual, moeInput];
  }

  /** One tensor of the parts' rows; a single part is returned as is. Releases the parts it joins. */
  private async join(parts: readonly RtTensor[]): Promise<RtTensor> {
    if (parts.length === 1) return parts[0] as RtTensor;
    const joined = await this.rows.concat(parts);
    parts.forEach((p) => this.m.runtime.release(p));
    return joined;
  }

  /**
   * LM head over the rows each item asked for, in one run; split back per item. `joined` may be the last
   * layer's pending experts, which the head's run then applies first (the caller disposes them).
   */
  private async logits(joined: RtTensor | PendingExperts, items: readonly BatchItem[], offsets: readonly number[]): Promise<(Float32Array | null)[]> {
    const { runtime, sessions, weights, spec } = this.m;
    const rows: number[] = [];
    const spans = items.map((item, i) => {
      const off = offsets[i] as number;
      const T = item.tokens.length;
      const first = rows.length;
      if (item.logits === 'last') rows.push(off + T - 1);
      if (item.logits === 'all') for (let t = 0; t < T; t++) rows.push(off + t);
      return { first, count: rows.length - first, wanted: item.logits !== 'none' };
    });
    if (rows.length === 0) return items.map(() => null);
    const feeds = { ...weights.headInputs(), [LM_HEAD_IO.rows]: runtime.int64(BigInt64Array.from(rows, BigInt), [rows.length]) };
    const out = isPending(joined)
      ? await (await sessions.lmHeadWithExperts(pendingShape(joined))).run({ ...feeds, ...pendingFeeds(joined) })
      : await sessions.lmHead.run({ ...feeds, [LM_HEAD_IO.hidden]: joined });
    const all = required(out, LM_HEAD_IO.logits).data as Float32Array;
    const V = spec.vocabSize;
    return spans.map((s) => (s.wanted ? all.subarray(s.first * V, (s.first + s.count) * V) : null));
  }

  /**
   * One sequence's lookahead: per predicted layer, the top-k experts of each token counted as votes and
   * ranked (lookahead-votes.ts), so that a prefetch limited to a few experts takes the likeliest.
   */
  private predictLookahead(logits: RtTensor | undefined): RankedVotes[] {
    if (!logits) return [];
    const { numExperts: E, topK } = this.m.spec;
    // (T, layers * E): each token's logits for every predicted layer, side by side
    const data = logits.data as Float32Array;
    const width = logits.dims[1] as number;
    const T = data.length / width;
    const layers = width / E;
    const out: RankedVotes[] = [];
    for (let d = 0; d < layers; d++) {
      const rows = new Float32Array(T * E);
      for (let t = 0; t < T; t++) rows.set(data.subarray((t * layers + d) * E, (t * layers + d + 1) * E), t * E);
      out.push(countVotes(routeTokens(rows, E, topK, false).experts));
    }
    return out;
  }

  /**
   * residual (T, H) + sum over assignments of weight * expert(moeInput[rows]). Experts are leased from the
   * store in groups that fit its budget (all at once in decode), and applied by the provider's expert
   * route (expert-routes.ts) in runs of at most its maxPerRun. Prefetches for later layers are issued
   * after the first group is leased, so their loads overlap this layer's runs. With hybrid execution,
   * misses the cost model sends to the CPU are computed there after the device's runs are issued, and
   * their sum is added in one run. Takes ownership of `residual`: it is released even when a run fails.
   * With `fuse`, when the device's experts fit one run, they are leased and fed but not run, and the CPU's
   * sum is computed: the pending application (which then owns `residual`, `moeInput` and the lease) is
   * for the next layer's attention run or the LM head's, which adds both.
   */
  private async applyExperts(
    layer: number,
    residual: RtTensor,
    moeInput: RtTensor,
    T: number,
    assignments: readonly ExpertAssignment[],
    lookahead: readonly (readonly number[])[],
    fuse: boolean,
  ): Promise<RtTensor | PendingExperts> {
    const { runtime, experts, weights, route, hybrid } = this.m;
    const group = Math.max(1, experts.maxExpertsInUse);
    const { onDevice, onCpu } = hybrid ? hybrid.place(layer, assignments, experts) : { onDevice: assignments, onCpu: [] };
    const prefetch = () =>
      weights.lookaheadTargets(layer).forEach((target, d) => {
        experts.lookahead(target, lookahead[d] ?? [], d + 1);
      });
    let acc = residual;
    try {
      // The CPU's inputs are read first: the host weights before the device's leases (so that the lookahead
      // recall counts every use), and the MoE input before the device's runs are queued, so that reading
      // it back waits for the attention block only and the device's expert runs can overlap the CPU's.
      const cpuWork = hybrid && onCpu.length > 0 ? { experts: await hybrid.prepare(layer, onCpu, experts), x: await runtime.toHost(moeInput) } : undefined;
      if (fuse && route.slotFeeds && onDevice.length <= Math.min(group, route.maxPerRun)) {
        // Fused, the device's experts wait for the CPU's instead of overlapping them, which a decode step's
        // few resident experts cost less than the two runs it saves (the experts' and the sum's addition).
        const lease = onDevice.length > 0 ? await experts.acquire(layer, onDevice.map((a) => a.expert)) : undefined;
        try {
          prefetch();
          const slots = lease && route.slotFeeds(T, onDevice, lease.experts);
          const hostSum = hybrid && cpuWork ? runtime.float32(await hybrid.compute(cpuWork.x, T, onCpu, cpuWork.experts, experts), [T, this.m.spec.hiddenSize]) : undefined;
          return { pending: true, residual, moeInput, slots, hostSum, lease };
        } catch (err) {
          lease?.release();
          throw err;
        }
      }
      if (onDevice.length === 0) prefetch();
      for (let first = 0; first < onDevice.length; first += group) {
        const leased = onDevice.slice(first, first + group);
        const lease = await experts.acquire(layer, leased.map((a) => a.expert));
        try {
          if (first === 0) prefetch();
          for (let run = 0; run < leased.length; run += route.maxPerRun) {
            await this.letIoIn();
            const end = Math.min(leased.length, run + route.maxPerRun);
            acc = await route.apply(acc, moeInput, T, leased.slice(run, end), lease.experts.slice(run, end));
          }
        } finally {
          lease.release();
        }
      }
      if (hybrid && cpuWork) acc = await this.rows.addHost(acc, await hybrid.compute(cpuWork.x, T, onCpu, cpuWork.experts, experts));
    } catch (err) {
      runtime.release(acc);
      throw err;
    }
    return acc;
  }
}

/** Where a sequence's (T, H) rows are: a tensor of its own (start 0), or rows start.. of a batch's joined tensor. */
interface HiddenRows {
  readonly tensor: RtTensor;
  readonly start: number;
}

/**
 * Sequence b's row of each named (B, width) host output of a batched run, as (1, width) views, per
 * sequence; outputs the run did not return are left out.
 */
function rowViews(runtime: Runtime, out: Record<string, RtTensor>, names: readonly string[], B: number): Record<string, RtTensor>[] {
  return Array.from({ length: B }, (_, b) => {
    const views: Record<string, RtTensor> = {};
    for (const name of names) {
      const t = out[name];
      if (!t) continue;
      const width = t.dims[1] as number;
      views[name] = runtime.float32((t.data as Float32Array).subarray(b * width, (b + 1) * width), [1, width]);
    }
    return views;
  });
}

/** The hidden_start/hidden_end feeds of a row-range attention block (GPU providers): rows start..start + count. */
function rowRangeFeeds(runtime: Runtime, start: number, count: number): Record<string, RtTensor> {
  return { [ATTN.hiddenStart]: runtime.int64(BigInt64Array.of(BigInt(start)), [1]), [ATTN.hiddenEnd]: runtime.int64(BigInt64Array.of(BigInt(start + count)), [1]) };
}

/** The host data of several (rows, n) float tensors, one after another. */
function concatData(tensors: readonly RtTensor[]): Float32Array {
  if (tensors.length === 1) return (tensors[0] as RtTensor).data as Float32Array;
  const out = new Float32Array(tensors.reduce((n, t) => n + t.size, 0));
  let at = 0;
  for (const t of tensors) {
    out.set(t.data as Float32Array, at);
    at += t.size;
  }
  return out;
}

/** The routing of rows [first, first + count) of a batch's routing. */
function sliceRouting(r: Routing, first: number, count: number): Routing {
  if (first === 0 && count === r.tokens) return r;
  const k = r.topK;
  return { tokens: count, topK: k, experts: r.experts.subarray(first * k, (first + count) * k), weights: r.weights.subarray(first * k, (first + count) * k) };
}

function required(outputs: Record<string, RtTensor>, name: string): RtTensor {
  const t = outputs[name];
  if (!t) throw new Error(`session returned no '${name}'`);
  return t;
}

/**
 * A sparse layer's routed experts, leased and fed but not yet run (GPU providers): the next layer's attention
 * run starts with them (attention-block.ts `experts`). Owns the residual, the MoE input and the lease.
 */
interface PendingExperts {
  readonly pending: true;
  readonly residual: RtTensor;
  readonly moeInput: RtTensor;
  /** the device's experts, none when every one of them was computed on the CPU */
  readonly slots: SlotFeeds | undefined;
  /** (T, H) host rows: the sum of the experts computed on the CPU (hybrid-experts.ts) */
  readonly hostSum: RtTensor | undefined;
  readonly lease: { release(): void } | undefined;
}

function isPending(x: RtTensor | PendingExperts | undefined): x is PendingExperts {
  return x !== undefined && 'pending' in x;
}

function pendingFeeds(p: PendingExperts): Record<string, RtTensor> {
  return { ...p.slots?.feeds, ...(p.hostSum && { [MOE.fusedHostSum]: p.hostSum }), [MOE.fusedResidual]: p.residual, [MOE.fusedMoeInput]: p.moeInput };
}

function pendingShape(p: PendingExperts): ExpertsShape {
  return { forms: p.slots?.forms ?? null, slots: p.slots?.slots ?? 0, hostSum: p.hostSum !== undefined };
}

/** Releases what a pending application holds, once its run is done or failed; returns undefined for the caller's variable. */
function disposePending(runtime: Runtime, p: PendingExperts | undefined): undefined {
  if (!p) return undefined;
  p.lease?.release();
  runtime.release(p.residual);
  runtime.release(p.moeInput);
  return undefined;
}
