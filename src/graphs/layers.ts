// Building blocks shared by the block graphs. Every weight is a graph input in Hugging Face's
// [out, in] layout, so Gemm(transB=1) applies it without a transposed copy.
import { attr, type GraphBuilder, type Value } from './onnx-builder.js';

/** y = x @ w^T (+ b). x: [rows, in], w: [out, in], b: [out]. */
export function linear(g: GraphBuilder, x: Value, w: Value, b: Value | null = null): Value {
  return g.op('Gemm', b ? [x, w, b] : [x, w], { transB: attr.int(1) });
}

/**
 * RMSNorm over the last axis, computed in fp32 like transformers' `x * rsqrt(mean(x^2) + eps) * w`.
 * SimplifiedLayerNormalization is onnxruntime's fused RMSNorm (registered in the default domain).
 */
export function rmsNorm(g: GraphBuilder, x: Value, w: Value, eps: number): Value {
  return g.op('SimplifiedLayerNormalization', [x, w], { axis: attr.int(-1), epsilon: attr.float(eps), stash_type: attr.int(1) });
}

/** SwiGLU feed-forward: down(silu(gate(x)) * up(x)). x: [rows, hidden]. */
export function swiGlu(g: GraphBuilder, x: Value, gate: Value, up: Value, down: Value): Value {
  const gated = linear(g, x, gate);
  const silu = g.op('Mul', [gated, g.op('Sigmoid', [gated])]);
  return linear(g, g.op('Mul', [silu, linear(g, x, up)]), down);
}

/**
 * Rotary position embedding in transformers' non-interleaved form (rotate_half):
 *   out = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]  with x = [x1, x2] split at headDim / 2.
 * x: [rows, heads, headDim]; cos, sin: [rows, 1, headDim / 2] (broadcast over heads).
 */
export function rotary(g: GraphBuilder, x: Value, cos: Value, sin: Value, headDim: number): Value {
  const half = headDim / 2;
  const axis = g.constInt64([-1]);
  const x1 = g.op('Slice', [x, g.constInt64([0]), g.constInt64([half]), axis]);
  const x2 = g.op('Slice', [x, g.constInt64([half]), g.constInt64([headDim]), axis]);
  const first = g.op('Sub', [g.op('Mul', [x1, cos]), g.op('Mul', [x2, sin])]);
  const second = g.op('Add', [g.op('Mul', [x2, cos]), g.op('Mul', [x1, sin])]);
  return g.op('Concat', [first, second], { axis: attr.int(-1) });
}

export function reshape(g: GraphBuilder, x: Value, shape: readonly number[]): Value {
  return g.op('Reshape', [x, g.constInt64(shape)]);
}
