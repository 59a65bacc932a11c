// The per-layer graph that runs everything of a decoder layer except the routed experts:
//   residual = hidden + o_proj(attention(rope(q), rope(k), v))        (+ shared expert / dense MLP)
//   moe_input = post_attention_norm(residual); router_logits = moe_input @ router^T
// Written for few nodes, since onnxruntime pays for each kernel call (PLATFORM.md; ~8 us for a 256 x 256
// matmul here): q, k and v are one matmul over their stacked weights, GroupQueryAttention applies the
// rotary embedding itself (do_rotary, from cos/sin tables fed once per model) and takes the packed QKV
// when no q/k norm sits between; the residual add and the post-attention norm are one
// SkipSimplifiedLayerNormalization.
// Weights are inputs (one session serves every layer of the same variant, the GPU path) or initializers
// (one session per layer, prepacked by onnxruntime: the CPU path); see matrix.ts.
// One graph serves a prompt chunk of one sequence and one decode token each of several sequences:
// `batch_shape` says which, (1, tokens, -1) or (sequences, 1, -1).
// onnxruntime pays ~4 us per node even for a reshape of two numbers, so what JS knows anyway (shapes, the
// rows a run appends to the cache) comes in as inputs rather than being computed from others in the graph,
// and outputs are named where they are made (no Identity nodes).
import type { QkNorm } from '../model/hf-config.js';
import { packPast, unpackPresent } from './kv-batch.js';
import { fusedExperts, type ExpertsShape } from './moe-block.js';
import { reshape, rmsNorm } from './layers.js';
import { linear, swiGlu, type MatrixForm } from './matrix.js';
import { attr, GraphBuilder, type ConstTensor, type GraphModel, type Value } from './onnx-builder.js';

export interface AttentionBlockVariant {
  readonly hiddenSize: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly rmsNormEps: number;
  readonly qkNorm: QkNorm;
  readonly clipQkv: number | null;
  readonly qkvBias: boolean;
  readonly oBias: boolean;
  /** 'sparse': the routed experts follow (router output); 'dense': a plain MLP ends the layer here. */
  readonly mlp: 'sparse' | 'dense';
  readonly sharedExpert: boolean;
  readonly numExperts: number;
  readonly intermediateSize: number;
  /**
   * Router lookahead: rows of the next sparse layers' routers (folded with their post-attention norm
   * weights) applied to this layer's normalized residual; 0 = none.
   */
  readonly lookaheadRows: number;
  /** Compute forms of the layer's weight matrices by graph name: qkv (q, k, v stacked), o and the MLP's gate, up, down. */
  readonly matrices: Readonly<Record<string, MatrixForm>>;
}

/** Names of the graph's inputs and outputs; the forward pass feeds and fetches by these. */
export const ATTN = {
  hidden: 'hidden',
  /** row-range blocks: (1,) the first of this run's rows in `hidden`, and (1,) one past its last */
  hiddenStart: 'hidden_start',
  hiddenEnd: 'hidden_end',
  cosCache: 'rope_cos_cache',
  sinCache: 'rope_sin_cache',
  positions: 'position_ids',
  pastKey: 'past_key',
  pastValue: 'past_value',
  seqlensK: 'seqlens_k',
  batchShape: 'batch_shape',
  /** 'new_rows' blocks: (batch, nKv, T, D) the cache row each appended row lands in, repeated along D */
  appendRows: 'append_rows',
  totalSeqLen: 'total_sequence_length',
  inputNorm: 'w_input_norm',
  /** q, k and v projections stacked by rows: (nH*D + 2*nKv*D, H) */
  qkv: 'w_qkv',
  o: 'w_o',
  /** q, k and v biases stacked */
  qkvBias: 'b_qkv',
  oBias: 'b_o',
  qNorm: 'w_q_norm',
  kNorm: 'w_k_norm',
  postNorm: 'w_post_norm',
  router: 'w_router',
  mlpGate: 'w_mlp_gate',
  mlpUp: 'w_mlp_up',
  mlpDown: 'w_mlp_down',
  sharedGate: 'w_shared_expert_gate',
  lookahead: 'w_lookahead',
  // outputs
  residual: 'residual',
  moeInput: 'moe_input',
  routerLogits: 'router_logits',
  lookaheadLogits: 'lookahead_logits',
  presentKey: 'present_key',
  presentValue: 'present_value',
  /** (batch, nKv, tokens, D): the rows this run appended to the cache, keys after the rotary embedding */
  newKey: 'new_key',
  newValue: 'new_value',
} as const;

/**
 * What the block returns of the KV cache. 'present': the whole updated cache, which becomes the next
 * run's past (GPU providers: it stays in device memory). 'new_rows': only the rows this run appended, which
 * the caller writes into its own host buffer (CPU provider: onnxruntime-node copies every fetched output
 * into a new array, so fetching a capacity-sized present costs an O(capacity) copy and allocation per
 * layer and token; measured 100 vs 60 us per run at 250 of 320 rows).
 */
export type KvOutput = 'present' | 'new_rows';

export function attentionBlockKey(v: AttentionBlockVariant): string {
  return JSON.stringify(v);
}

export interface AttentionBuildOptions {
  /** `constants`: the layer's weights, when they are baked into the session (CPU); absent: all inputs. */
  readonly constants?: ReadonlyMap<string, ConstTensor>;
  /** The hidden input holds more rows than this run's: `hidden_start`/`hidden_end` say which are its own (GPU providers). */
  readonly rowRange?: boolean;
  /**
   * GPU decode batches of this many sequences, one token each: the block packs their separate KV caches
   * into its past and cuts its present back into each sequence's (kv-batch.ts) instead of taking one past
   * and returning one present. Needs the 'present' KV output.
   */
  readonly kvBatch?: number;
  /**
   * GPU providers: the block starts with the previous sparse layer's routed experts (moe-block.ts), which
   * make its hidden input from that layer's residual and MoE input, so that a layer costs one run.
   */
  readonly experts?: ExpertsShape;
}

export function buildAttentionBlock(v: AttentionBlockVariant, kvOutput: KvOutput, o: AttentionBuildOptions = {}): GraphModel {
  const { constants } = o;
  const g = new GraphBuilder('attention_block', constants);
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = v;
  const form = (name: string): MatrixForm => {
    const f = v.matrices[name];
    if (!f) throw new Error(`attention block variant has no form for '${name}'`);
    return f;
  };
  const T = 'tokens';
  // Row-range blocks read their sequence's rows out of a batch's joined (rows, H) hidden states, so that
  // the batch's expert output feeds every sequence's next attention run without a run per slice.
  const rows = o.experts
    ? fusedExperts(g, H, o.experts)
    : g.input(ATTN.hidden, 'float32', [o.rowRange ? 'rows' : T, H]);
  const hidden = o.rowRange ? g.op('Slice', [rows, g.input(ATTN.hiddenStart, 'int64', [1]), g.input(ATTN.hiddenEnd, 'int64', [1]), g.constInt64([0])]) : rows;
  const cosCache = g.input(ATTN.cosCache, 'float32', ['positions', D / 2]);
  const sinCache = g.input(ATTN.sinCache, 'float32', ['positions', D / 2]);
  const positions = g.input(ATTN.positions, 'int64', ['batch', 'sequence']);
  if (o.kvBatch !== undefined && kvOutput !== 'present') throw new RangeError('a KV-batch attention block returns the present');
  const [pastKey, pastValue] =
    o.kvBatch === undefined ? [g.input(ATTN.pastKey, 'float32', ['batch', nKv, 'past', D]), g.input(ATTN.pastValue, 'float32', ['batch', nKv, 'past', D])] : packPast(g, o.kvBatch, nKv, D);
  const seqlensK = g.input(ATTN.seqlensK, 'int32', ['batch']);
  const totalSeqLen = g.input(ATTN.totalSeqLen, 'int32', []);
  // (3,): (1, T, -1) for T tokens of one sequence, (B, 1, -1) for one token each of B sequences
  const batchShape = g.input(ATTN.batchShape, 'int64', [3]);
  const wInputNorm = g.tensor(ATTN.inputNorm, 'float32', [H]);
  const qW = nH * D;
  const kvW = nKv * D;
  const bqkv = v.qkvBias ? g.tensor(ATTN.qkvBias, 'float32', [qW + 2 * kvW]) : null;
  const bo = v.oBias ? g.tensor(ATTN.oBias, 'float32', [H]) : null;
  const postNorm = g.tensor(ATTN.postNorm, 'float32', [H]);

  // (T, H) -> (T, nH*D + 2*nKv*D): q, k and v side by side
  const x = rmsNorm(g, hidden, wInputNorm, v.rmsNormEps);
  const qkv = linear(g, x, ATTN.qkv, form(ATTN.qkv), bqkv);
  // GroupQueryAttention takes (batch, tokens, width) and keeps the cache as (batch, nKv, capacity, D).
  const toBatch = (t: Value) => g.op('Reshape', [t, batchShape]);
  const clip = (t: Value): Value => (v.clipQkv === null ? t : g.op('Clip', [t, g.constFloat([-v.clipQkv], []), g.constFloat([v.clipQkv], [])]));
  let qkvInputs: (Value | null)[];
  if (v.qkNorm === 'none') {
    qkvInputs = [toBatch(clip(qkv)), null, null];
  } else {
    let [q, k, val] = g.opN('Split', [qkv, g.constInt64([qW, kvW, kvW])], 3, { axis: attr.int(-1) }) as [Value, Value, Value];
    if (v.qkNorm === 'projection') {
      // OLMoE normalizes the whole projection before splitting into heads.
      q = rmsNorm(g, q, g.tensor(ATTN.qNorm, 'float32', [qW]), v.rmsNormEps);
      k = rmsNorm(g, k, g.tensor(ATTN.kNorm, 'float32', [kvW]), v.rmsNormEps);
    } else {
      // Qwen3 normalizes each head separately, with one weight of size head_dim.
      q = reshape(g, rmsNorm(g, reshape(g, q, [0, nH, D]), g.tensor(ATTN.qNorm, 'float32', [D]), v.rmsNormEps), [0, qW]);
      k = reshape(g, rmsNorm(g, reshape(g, k, [0, nKv, D]), g.tensor(ATTN.kNorm, 'float32', [D]), v.rmsNormEps), [0, kvW]);
    }
    // OLMoE clamps after its projection norms (transformers: q_norm(q_proj(x)).clamp_).
    qkvInputs = [toBatch(clip(q)), toBatch(clip(k)), toBatch(clip(val))];
  }
  const [attn, presentKey, presentValue] = g.opN(
    'GroupQueryAttention',
    [...qkvInputs, pastKey, pastValue, seqlensK, totalSeqLen, cosCache, sinCache, positions],
    3,
    { num_heads: attr.int(nH), kv_num_heads: attr.int(nKv), scale: attr.float(1 / Math.sqrt(D)), do_rotary: attr.int(1), rotary_interleaved: attr.int(0) },
    { domain: 'com.microsoft', outputNames: ['attn', ATTN.presentKey, ATTN.presentValue] },
  ) as [Value, Value, Value];
  const attnOut = linear(g, reshape(g, attn, [-1, qW]), ATTN.o, form(ATTN.o), bo);
  // mlpIn = post_attention_norm(hidden + attnOut), and that sum (the residual stream), in one kernel
  const sumIsResidual = v.mlp === 'sparse' && !v.sharedExpert;
  const [mlpIn, , , sum] = g.opN('SkipSimplifiedLayerNormalization', [attnOut, hidden, postNorm], 4, { epsilon: attr.float(v.rmsNormEps) }, {
    domain: 'com.microsoft',
    outputNames: [ATTN.moeInput, 'skip_mean', 'skip_inv_std', sumIsResidual ? ATTN.residual : 'skip_sum'],
  }) as [Value, Value, Value, Value];
  let residual = sum;

  const mlpNames = { gate: ATTN.mlpGate, up: ATTN.mlpUp, down: ATTN.mlpDown };
  const mlpForms = () => ({ gate: form(ATTN.mlpGate), up: form(ATTN.mlpUp), down: form(ATTN.mlpDown) });
  if (v.mlp === 'dense') {
    residual = g.op('Add', [residual, swiGlu(g, mlpIn, mlpNames, mlpForms())], {}, { name: ATTN.residual });
  } else {
    const router = g.tensor(ATTN.router, 'float32', [v.numExperts, H]);
    g.output(g.op('Gemm', [mlpIn, router], { transB: attr.int(1) }, { name: ATTN.routerLogits }), ATTN.routerLogits, 'float32', [T, v.numExperts]);
    g.output(mlpIn, ATTN.moeInput, 'float32', [T, H]);
    if (v.lookaheadRows > 0) {
      // A later layer normalizes its own residual with its own norm weight (folded into w_lookahead), so
      // the prediction uses this residual normalized without a weight.
      const unitNorm = rmsNorm(g, residual, g.constFloat(new Array<number>(H).fill(1), [H]), v.rmsNormEps);
      const lookahead = g.tensor(ATTN.lookahead, 'float32', [v.lookaheadRows, H]);
      g.output(g.op('Gemm', [unitNorm, lookahead], { transB: attr.int(1) }, { name: ATTN.lookaheadLogits }), ATTN.lookaheadLogits, 'float32', [T, v.lookaheadRows]);
    }
    if (v.sharedExpert) {
      // Qwen2-MoE: shared_expert(x) * sigmoid(shared_expert_gate(x)), added to the routed experts' sum.
      const shared = swiGlu(g, mlpIn, mlpNames, mlpForms());
      const gateW = g.tensor(ATTN.sharedGate, 'float32', [1, H]);
      const gate = g.op('Sigmoid', [g.op('Gemm', [mlpIn, gateW], { transB: attr.int(1) })]);
      residual = g.op('Add', [residual, g.op('Mul', [shared, gate])], {}, { name: ATTN.residual });
    }
  }
  g.output(residual, ATTN.residual, 'float32', [T, H]);
  if (o.kvBatch !== undefined) {
    unpackPresent(g, presentKey, presentValue, o.kvBatch, nKv, D);
  } else if (kvOutput === 'present') {
    g.output(presentKey, ATTN.presentKey, 'float32', ['batch', nKv, 'present', D]);
    g.output(presentValue, ATTN.presentValue, 'float32', ['batch', nKv, 'present', D]);
  } else {
    const rows = g.input(ATTN.appendRows, 'int64', ['batch', nKv, 'new', D]);
    g.output(g.op('GatherElements', [presentKey, rows], { axis: attr.int(2) }, { name: ATTN.newKey }), ATTN.newKey, 'float32', ['batch', nKv, 'new', D]);
    g.output(g.op('GatherElements', [presentValue, rows], { axis: attr.int(2) }, { name: ATTN.newValue }), ATTN.newValue, 'float32', ['batch', nKv, 'new', D]);
  }
  return g.toModel();
}
