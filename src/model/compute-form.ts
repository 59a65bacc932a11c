// The forms a weight matrix takes for computing (f32, f16, or blockwise int8/int4), and the conversion
// from the form a checkpoint stores. Where the stored form already is the compute form the bytes are
// handed over as they are (no copy, no conversion).
import { z } from 'zod';
import { float32ToFloat16Bits, toFloat32, type WeightDType } from './dtype.js';
import { dequantizeMatrix, heldBytes, quantizedBytes, quantizeMatrix, type QuantBits, type QuantizedMatrix } from './quantization.js';

export const COMPUTE_DTYPES = ['f32', 'f16', 'int8', 'int4'] as const;
export type ComputeDType = (typeof COMPUTE_DTYPES)[number];
export const computeDType = z.enum(COMPUTE_DTYPES, { message: `expected one of ${COMPUTE_DTYPES.join(', ')}` });

/**
 * The classes of weight matrix that take their compute form independently: routed experts, attention
 * projections, and the rest (LM head, dense and shared-expert MLPs); engine/compute-options.ts says why.
 */
export type WeightClass = 'experts' | 'attention' | 'weights';

export function quantBitsOf(dtype: 'int8' | 'int4'): QuantBits {
  return dtype === 'int8' ? 8 : 4;
}

/** A (rows = output features, cols = input features) weight matrix in compute form. */
export type ComputeMatrix =
  | { readonly dtype: 'f32'; readonly rows: number; readonly cols: number; readonly data: Float32Array }
  | { readonly dtype: 'f16'; readonly rows: number; readonly cols: number; readonly data: Uint16Array }
  | { readonly dtype: 'int8' | 'int4'; readonly rows: number; readonly cols: number; readonly quantized: QuantizedMatrix };

/** A weight matrix as a checkpoint stores it. */
export type StoredMatrix =
  | { readonly kind: 'float'; readonly dtype: WeightDType; readonly rows: number; readonly cols: number; readonly bytes: Uint8Array }
  | { readonly kind: 'quantized'; readonly quantized: QuantizedMatrix };

/** How to quantize float weights (a quantized checkpoint keeps its own block size and zero points). */
export interface QuantOptions {
  readonly blockSize: number;
  readonly zeroPoints: boolean;
}

export function computeBytes(m: ComputeMatrix): number {
  switch (m.dtype) {
    case 'f32':
      return m.data.byteLength;
    case 'f16':
      return m.data.byteLength;
    default:
      return heldBytes(m.quantized);
  }
}

/** Bytes of a (rows, cols) matrix in `dtype`, before it exists (budgets are planned with this). */
export function computeBytesFor(rows: number, cols: number, dtype: ComputeDType, q: QuantOptions): number {
  switch (dtype) {
    case 'f32':
      return rows * cols * 4;
    case 'f16':
      return rows * cols * 2;
    default:
      return quantizedBytes(rows, cols, { bits: quantBitsOf(dtype), ...q });
  }
}

/** The compute-form dtype a stored matrix already is, if any. */
export function storedComputeDType(s: StoredMatrix): ComputeDType {
  if (s.kind === 'quantized') return s.quantized.bits === 8 ? 'int8' : 'int4';
  return s.dtype === 'F16' ? 'f16' : 'f32';
}

export function storedShape(s: StoredMatrix): { rows: number; cols: number } {
  return s.kind === 'quantized' ? { rows: s.quantized.rows, cols: s.quantized.cols } : { rows: s.rows, cols: s.cols };
}

/** The matrix in float32 (dequantized when stored quantized). */
export function storedToFloat32(s: StoredMatrix): Float32Array {
  return s.kind === 'quantized' ? dequantizeMatrix(s.quantized) : toFloat32(s.bytes, s.dtype);
}

/**
 * Converts a stored matrix to `dtype`. A quantized matrix asked for in its own bit width is handed over
 * with its own block size; every other change goes through float32. `into` (float32 of the right
 * length) receives a bf16/f16 widening instead of a new array.
 */
export function toComputeForm(s: StoredMatrix, dtype: ComputeDType, q: QuantOptions, into?: Float32Array): ComputeMatrix {
  const { rows, cols } = storedShape(s);
  if (s.kind === 'quantized' && storedComputeDType(s) === dtype) return { dtype: dtype as 'int8' | 'int4', rows, cols, quantized: s.quantized };
  if (s.kind === 'float' && s.dtype === 'F16' && dtype === 'f16' && s.bytes.byteOffset % 2 === 0) {
    return { dtype, rows, cols, data: new Uint16Array(s.bytes.buffer, s.bytes.byteOffset, rows * cols) };
  }
  const f32 = s.kind === 'float' ? toFloat32(s.bytes, s.dtype, into) : dequantizeMatrix(s.quantized);
  switch (dtype) {
    case 'f32':
      return { dtype, rows, cols, data: f32 };
    case 'f16':
      return { dtype, rows, cols, data: toFloat16(f32) };
    default:
      return { dtype, rows, cols, quantized: quantizeMatrix(f32, rows, cols, { bits: quantBitsOf(dtype), ...q }) };
  }
}

/** float16 bit patterns of float32 values, rounded to nearest even. */
export function toFloat16(f32: Float32Array): Uint16Array {
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < f32.length; i++) out[i] = float32ToFloat16Bits(f32[i]!);
  return out;
}

/** The float32 values a compute-form matrix stands for (the reference the engine is tested against). */
export function computeToFloat32(m: ComputeMatrix): Float32Array {
  switch (m.dtype) {
    case 'f32':
      return m.data;
    case 'f16':
      return toFloat32(new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength), 'F16');
    default:
      return dequantizeMatrix(m.quantized);
  }
}

/** Typed arrays of one kind one after another, in a new array made by `make`. */
export function concatArrays<T extends Float32Array | Uint16Array | Uint8Array>(arrays: readonly T[], make: (length: number) => T): T {
  const out = make(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

/** The rows of several matrices of one form and width stacked into one (q, k and v into qkv, say). */
export function concatRows(parts: readonly ComputeMatrix[]): ComputeMatrix {
  const first = parts[0];
  if (!first) throw new RangeError('no matrices to stack');
  const cols = first.cols;
  const rows = parts.reduce((n, m) => n + m.rows, 0);
  if (parts.length === 1) return first;
  for (const m of parts) {
    if (m.dtype !== first.dtype || m.cols !== cols) throw new RangeError(`cannot stack a ${m.dtype} (${m.rows}, ${m.cols}) matrix onto ${first.dtype} (${first.rows}, ${cols})`);
  }
  const join = concatArrays;
  switch (first.dtype) {
    case 'f32':
      return { dtype: 'f32', rows, cols, data: join(parts.map((m) => (m as typeof first).data), (n) => new Float32Array(n)) };
    case 'f16':
      return { dtype: 'f16', rows, cols, data: join(parts.map((m) => (m as typeof first).data), (n) => new Uint16Array(n)) };
    default: {
      const qs = parts.map((m) => (m as typeof first).quantized);
      const q0 = first.quantized;
      for (const q of qs) {
        if (q.blockSize !== q0.blockSize || (q.zeroPointBytes === null) !== (q0.zeroPointBytes === null)) throw new RangeError('cannot stack matrices quantized with different block sizes or zero points');
      }
      const zeroPointBytes = q0.zeroPointBytes ? join(qs.map((q) => q.zeroPointBytes as Uint8Array), (n) => new Uint8Array(n)) : null;
      return {
        dtype: first.dtype,
        rows,
        cols,
        quantized: { ...q0, rows, packed: join(qs.map((q) => q.packed), (n) => new Uint8Array(n)), scales: join(qs.map((q) => q.scales), (n) => new Float32Array(n)), zeroPointBytes },
      };
    }
  }
}
