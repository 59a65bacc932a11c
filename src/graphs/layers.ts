// Building blocks shared by the block graphs (weight matrices: matrix.ts).
import { attr, type GraphBuilder, type Value } from './onnx-builder.js';

/**
 * RMSNorm over the last axis, computed in fp32 like transformers' `x * rsqrt(mean(x^2) + eps) * w`.
 * SimplifiedLayerNormalization is onnxruntime's fused RMSNorm (registered in the default domain).
 */
export function rmsNorm(g: GraphBuilder, x: Value, w: Value, eps: number): Value {
  return g.op('SimplifiedLayerNormalization', [x, w], { axis: attr.int(-1), epsilon: attr.float(eps), stash_type: attr.int(1) });
}

export function reshape(g: GraphBuilder, x: Value, shape: readonly number[]): Value {
  return g.op('Reshape', [x, g.constInt64(shape)]);
}
