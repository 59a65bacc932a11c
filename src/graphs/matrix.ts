// Weight matrices in a graph, in any compute form: the tensors a form consists of, and y = x @ W^T.
//   f32:       Gemm(x, W, transB)                      W: (N, K) float32
//   f16:       Gemm(x, Cast(W), transB)                W: (N, K) float16 (as an initializer onnxruntime
//                                                      folds the Cast at load: float32 in memory)
//   int8/int4: com.microsoft MatMulNBits(x, q, scales[, zp])  the blockwise layout of quantization.ts
// Each tensor is an initializer when the graph builder holds its data (prepacked by onnxruntime at session
// creation) and a graph input otherwise (the GPU path and the f32 expert block feed them per run).
import type { ComputeDType, ComputeMatrix } from '../model/compute-form.js';
import { blocksPerRow, zeroPointBytesPerRow } from '../model/quantization.js';
import { attr, type ConstTensor, type GraphBuilder, type Value } from './onnx-builder.js';

/** What a graph needs to know of a matrix to apply it: its form, not its values. */
export interface MatrixForm {
  readonly dtype: ComputeDType;
  /** N: output features. */
  readonly rows: number;
  /** K: input features. */
  readonly cols: number;
  /** int8/int4 only (0 otherwise). */
  readonly blockSize: number;
  readonly zeroPoints: boolean;
  /**
   * MatMulNBits' accuracy_level: 4 computes with int8-quantized activations (the fast CPU kernels, about
   * the error of llama.cpp's q8 activations); 0 computes in float32 (exact against the dequantized weights).
   */
  readonly accuracyLevel: 0 | 4;
}

/** The names of the tensors that hold matrix `name`. */
export const MATRIX_PARTS = {
  packed: (name: string) => `${name}.q`,
  scales: (name: string) => `${name}.scales`,
  zeroPoints: (name: string) => `${name}.zp`,
} as const;

export function matrixForm(m: ComputeMatrix, accuracyLevel: 0 | 4): MatrixForm {
  if (m.dtype === 'f32' || m.dtype === 'f16') return { dtype: m.dtype, rows: m.rows, cols: m.cols, blockSize: 0, zeroPoints: false, accuracyLevel: 0 };
  return { dtype: m.dtype, rows: m.rows, cols: m.cols, blockSize: m.quantized.blockSize, zeroPoints: m.quantized.zeroPointBytes !== null, accuracyLevel };
}

/** A plain float32 (N, K) form, for matrices that always stay float32 (routers). */
export function f32Form(rows: number, cols: number): MatrixForm {
  return { dtype: 'f32', rows, cols, blockSize: 0, zeroPoints: false, accuracyLevel: 0 };
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** The named tensors matrix `name` consists of in its compute form, with their data. */
export function matrixTensors(name: string, m: ComputeMatrix): [string, ConstTensor][] {
  switch (m.dtype) {
    case 'f32':
      return [[name, { type: 'float32', dims: [m.rows, m.cols], bytes: bytesOf(m.data) }]];
    case 'f16':
      return [[name, { type: 'float16', dims: [m.rows, m.cols], bytes: bytesOf(m.data) }]];
    default: {
      const q = m.quantized;
      const blocks = blocksPerRow(q.cols, q.blockSize);
      const parts: [string, ConstTensor][] = [
        [MATRIX_PARTS.packed(name), { type: 'uint8', dims: [q.rows, blocks, (q.blockSize * q.bits) / 8], bytes: q.packed }],
        [MATRIX_PARTS.scales(name), { type: 'float32', dims: [q.rows, blocks], bytes: bytesOf(q.scales) }],
      ];
      if (q.zeroPointBytes) parts.push([MATRIX_PARTS.zeroPoints(name), { type: 'uint8', dims: [q.rows, zeroPointBytesPerRow(blocks, q.bits)], bytes: q.zeroPointBytes }]);
      return parts;
    }
  }
}

/** y = x @ W^T (+ b) for matrix `name` of form `f`; x: [rows, K] -> [rows, N]. `out`: the name of y. */
export function linear(g: GraphBuilder, x: Value, name: string, f: MatrixForm, b: Value | null = null, out?: string): Value {
  const named = { name: out };
  let y: Value;
  switch (f.dtype) {
    case 'f32':
    case 'f16': {
      const w = g.tensor(name, f.dtype === 'f32' ? 'float32' : 'float16', [f.rows, f.cols]);
      const w32 = f.dtype === 'f32' ? w : g.op('Cast', [w], { to: attr.int(1) });
      return g.op('Gemm', b ? [x, w32, b] : [x, w32], { transB: attr.int(1) }, named);
    }
    default: {
      const bits = f.dtype === 'int8' ? 8 : 4;
      const blocks = blocksPerRow(f.cols, f.blockSize);
      const packed = g.tensor(MATRIX_PARTS.packed(name), 'uint8', [f.rows, blocks, (f.blockSize * bits) / 8]);
      const scales = g.tensor(MATRIX_PARTS.scales(name), 'float32', [f.rows, blocks]);
      const zp = f.zeroPoints ? g.tensor(MATRIX_PARTS.zeroPoints(name), 'uint8', [f.rows, zeroPointBytesPerRow(blocks, bits)]) : null;
      y = g.op('MatMulNBits', zp ? [x, packed, scales, zp] : [x, packed, scales], {
        K: attr.int(f.cols),
        N: attr.int(f.rows),
        bits: attr.int(bits),
        block_size: attr.int(f.blockSize),
        accuracy_level: attr.int(f.accuracyLevel),
      }, { domain: 'com.microsoft', name: b ? undefined : out });
      return b ? g.op('Add', [y, b], {}, named) : y;
    }
  }
}

/** SwiGLU feed-forward down(silu(gate(x)) * up(x)) over three matrices named `names`. x: [rows, hidden]. */
export function swiGlu(g: GraphBuilder, x: Value, names: { gate: string; up: string; down: string }, forms: { gate: MatrixForm; up: MatrixForm; down: MatrixForm }): Value {
  const gated = linear(g, x, names.gate, forms.gate);
  const silu = g.op('Mul', [gated, g.op('Sigmoid', [gated])]);
  return linear(g, g.op('Mul', [silu, linear(g, x, names.up, forms.up)]), names.down, forms.down);
}
