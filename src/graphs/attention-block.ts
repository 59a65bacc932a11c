// The per-layer graph that runs everything of a decoder layer except the routed experts:
//   residual = hidden + o_proj(attention(rope(q), rope(k), v))        (+ shared expert / dense MLP)
//   moe_input = post_attention_norm(residual); router_logits = moe_input @ router^T
// Weights are inputs, so one session serves every layer of the same variant.
import type { QkNorm } from '../model/hf-config.js';
import { linear, reshape, rmsNorm, rotary, swiGlu } from './layers.js';
import { attr, GraphBuilder, type Value } from './onnx-builder.js';

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
  /**
   * The rows of `hidden` are one token each of different sequences (batched decode: GroupQueryAttention
   * batch B, one token each, per-sequence past lengths) rather than consecutive tokens of one sequence.
   */
  readonly decodeBatch?: boolean;
}

/** Names of the graph's inputs and outputs; the forward pass feeds and fetches by these. */
export const ATTN = {
  hidden: 'hidden',
  cos: 'rope_cos',
  sin: 'rope_sin',
  pastKey: 'past_key',
  pastValue: 'past_value',
  seqlensK: 'seqlens_k',
  totalSeqLen: 'total_sequence_length',
  inputNorm: 'w_input_norm',
  q: 'w_q',
  k: 'w_k',
  v: 'w_v',
  o: 'w_o',
  qBias: 'b_q',
  kBias: 'b_k',
  vBias: 'b_v',
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
} as const;

export function attentionBlockKey(v: AttentionBlockVariant): string {
  return JSON.stringify(v);
}

export function buildAttentionBlock(v: AttentionBlockVariant): Uint8Array {
  const g = new GraphBuilder('attention_block');
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = v;
  const T = 'tokens';
  const hidden = g.input(ATTN.hidden, 'float32', [T, H]);
  const cos = g.input(ATTN.cos, 'float32', [T, 1, D / 2]);
  const sin = g.input(ATTN.sin, 'float32', [T, 1, D / 2]);
  const batch = v.decodeBatch ? 'batch' : 1;
  const pastKey = g.input(ATTN.pastKey, 'float32', [batch, nKv, 'past', D]);
  const pastValue = g.input(ATTN.pastValue, 'float32', [batch, nKv, 'past', D]);
  const seqlensK = g.input(ATTN.seqlensK, 'int32', [batch]);
  const totalSeqLen = g.input(ATTN.totalSeqLen, 'int32', []);
  const wInputNorm = g.input(ATTN.inputNorm, 'float32', [H]);
  const wq = g.input(ATTN.q, 'float32', [nH * D, H]);
  const wk = g.input(ATTN.k, 'float32', [nKv * D, H]);
  const wv = g.input(ATTN.v, 'float32', [nKv * D, H]);
  const wo = g.input(ATTN.o, 'float32', [H, nH * D]);
  const bq = v.qkvBias ? g.input(ATTN.qBias, 'float32', [nH * D]) : null;
  const bk = v.qkvBias ? g.input(ATTN.kBias, 'float32', [nKv * D]) : null;
  const bv = v.qkvBias ? g.input(ATTN.vBias, 'float32', [nKv * D]) : null;
  const bo = v.oBias ? g.input(ATTN.oBias, 'float32', [H]) : null;
  const postNorm = g.input(ATTN.postNorm, 'float32', [H]);

  // (T, H) -> q (T, nH*D), k and v (T, nKv*D)
  const x = rmsNorm(g, hidden, wInputNorm, v.rmsNormEps);
  let q = linear(g, x, wq, bq);
  let k = linear(g, x, wk, bk);
  let val = linear(g, x, wv, bv);
  if (v.qkNorm === 'projection') {
    // OLMoE normalizes the whole projection before splitting into heads.
    q = rmsNorm(g, q, g.input(ATTN.qNorm, 'float32', [nH * D]), v.rmsNormEps);
    k = rmsNorm(g, k, g.input(ATTN.kNorm, 'float32', [nKv * D]), v.rmsNormEps);
  }
  if (v.clipQkv !== null) {
    // OLMoE clamps after its projection norms (transformers: q_norm(q_proj(x)).clamp_).
    const lo = g.constFloat([-v.clipQkv], []);
    const hi = g.constFloat([v.clipQkv], []);
    q = g.op('Clip', [q, lo, hi]);
    k = g.op('Clip', [k, lo, hi]);
    val = g.op('Clip', [val, lo, hi]);
  }
  // (T, heads, D) for per-head norm and rotary
  let qh = reshape(g, q, [0, nH, D]);
  let kh = reshape(g, k, [0, nKv, D]);
  if (v.qkNorm === 'head') {
    // Qwen3 normalizes each head separately, with one weight of size head_dim.
    qh = rmsNorm(g, qh, g.input(ATTN.qNorm, 'float32', [D]), v.rmsNormEps);
    kh = rmsNorm(g, kh, g.input(ATTN.kNorm, 'float32', [D]), v.rmsNormEps);
  }
  qh = rotary(g, qh, cos, sin, D);
  kh = rotary(g, kh, cos, sin, D);
  // GroupQueryAttention takes (batch, tokens, heads*D) and keeps the cache as (batch, nKv, capacity, D):
  // one sequence of T tokens, or (decodeBatch) T sequences of one token each.
  const gqaShape = (width: number) => (v.decodeBatch ? [-1, 1, width] : [1, -1, width]);
  const [attn, presentKey, presentValue] = g.opN(
    'GroupQueryAttention',
    [reshape(g, qh, gqaShape(nH * D)), reshape(g, kh, gqaShape(nKv * D)), reshape(g, val, gqaShape(nKv * D)), pastKey, pastValue, seqlensK, totalSeqLen],
    3,
    { num_heads: attr.int(nH), kv_num_heads: attr.int(nKv), scale: attr.float(1 / Math.sqrt(D)) },
    { domain: 'com.microsoft', outputNames: ['attn', ATTN.presentKey, ATTN.presentValue] },
  ) as [Value, Value, Value];
  const attnOut = linear(g, reshape(g, attn, [-1, nH * D]), wo, bo);
  let residual = g.op('Add', [hidden, attnOut]);
  const mlpIn = rmsNorm(g, residual, postNorm, v.rmsNormEps);

  const I = v.intermediateSize;
  if (v.mlp === 'dense') {
    const mlp = swiGlu(
      g,
      mlpIn,
      g.input(ATTN.mlpGate, 'float32', [I, H]),
      g.input(ATTN.mlpUp, 'float32', [I, H]),
      g.input(ATTN.mlpDown, 'float32', [H, I]),
    );
    residual = g.op('Add', [residual, mlp]);
  } else {
    const router = g.input(ATTN.router, 'float32', [v.numExperts, H]);
    g.output(linear(g, mlpIn, router), ATTN.routerLogits, 'float32', [T, v.numExperts]);
    g.output(mlpIn, ATTN.moeInput, 'float32', [T, H]);
    if (v.lookaheadRows > 0) {
      // A later layer normalizes its own residual with its own norm weight (folded into w_lookahead), so
      // the prediction uses this residual normalized without a weight.
      const unitNorm = rmsNorm(g, residual, g.constFloat(new Array<number>(H).fill(1), [H]), v.rmsNormEps);
      const lookahead = g.input(ATTN.lookahead, 'float32', [v.lookaheadRows, H]);
      g.output(linear(g, unitNorm, lookahead), ATTN.lookaheadLogits, 'float32', [T, v.lookaheadRows]);
    }
    if (v.sharedExpert) {
      // Qwen2-MoE: shared_expert(x) * sigmoid(shared_expert_gate(x)), added to the routed experts' sum.
      const shared = swiGlu(
        g,
        mlpIn,
        g.input(ATTN.mlpGate, 'float32', [I, H]),
        g.input(ATTN.mlpUp, 'float32', [I, H]),
        g.input(ATTN.mlpDown, 'float32', [H, I]),
      );
      const gate = g.op('Sigmoid', [linear(g, mlpIn, g.input(ATTN.sharedGate, 'float32', [1, H]))]);
      residual = g.op('Add', [residual, g.op('Mul', [shared, gate])]);
    }
  }
  g.output(residual, ATTN.residual, 'float32', [T, H]);
  g.output(presentKey, ATTN.presentKey, 'float32', [batch, nKv, 'present', D]);
  g.output(presentValue, ATTN.presentValue, 'float32', [batch, nKv, 'present', D]);
  return g.toModelBytes();
}
