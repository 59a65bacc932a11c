// Blockwise integer quantization of weight matrices, in the layout onnxruntime's MatMulNBits reads.
//
// A matrix W of N rows (output features) by K columns (input features), as Hugging Face stores a Linear
// weight, is cut along K into blocks of `blockSize`; each block has one float scale and, optionally, an
// unsigned zero point:
//   W[n, k] ~= (q[n, k] - zp[n, k / blockSize]) * scale[n, k / blockSize]
// q is an unsigned `bits`-bit integer; without zero points zp is 2^(bits-1) (8 or 128), the symmetric form.
//
// packed: (N, ceil(K / blockSize), blockSize * bits / 8) bytes, elements in row order; at 4 bits two per
// byte with the lower-index element in the low nibble. A last partial block is padded with zp (zero).
// That is also the byte order of compressed-tensors' pack-quantized int32 words (little-endian), so its
// checkpoints and ours share the packed bytes (see compressed-tensors.ts).
//
// Scale choice (symmetric), the same as llama.cpp's q8_0 and q4_0 so that agreement figures compare
// like with like: 8 bits d = amax / 127; 4 bits d = m / -8 where m is the block's element of largest
// magnitude, so that m lands exactly on the end of the range that has 8 steps (d may be negative).
// With zero points (asymmetric, like q4_1/q8_1): d = (max - min) / (2^bits - 1), zp = round(-min / d).

export type QuantBits = 4 | 8;

export interface QuantScheme {
  readonly bits: QuantBits;
  /** Elements per scale along the input dimension: a power of two, at least 16 (MatMulNBits). */
  readonly blockSize: number;
  readonly zeroPoints: boolean;
}

export interface QuantizedMatrix extends QuantScheme {
  /** N: output features. */
  readonly rows: number;
  /** K: input features. */
  readonly cols: number;
  /** (rows, blocksPerRow, blockSize * bits / 8) */
  readonly packed: Uint8Array;
  /** (rows, blocksPerRow) */
  readonly scales: Float32Array;
  /** (rows, ceil(blocksPerRow * bits / 8)): unsigned zero points, two per byte at 4 bits; null when symmetric. */
  readonly zeroPointBytes: Uint8Array | null;
}

export const DEFAULT_BLOCK_SIZE = 32;

export class QuantSchemeError extends RangeError {
  readonly code = 'bad_quant_scheme';

  constructor(message: string) {
    super(message);
    this.name = 'QuantSchemeError';
  }
}

export function checkScheme(s: QuantScheme): void {
  if (s.bits !== 4 && s.bits !== 8) throw new QuantSchemeError(`quantization bits must be 4 or 8, got ${String(s.bits)}`);
  if (!Number.isInteger(s.blockSize) || s.blockSize < 16 || (s.blockSize & (s.blockSize - 1)) !== 0) {
    throw new QuantSchemeError(`block size must be a power of two of at least 16 (onnxruntime's MatMulNBits), got ${s.blockSize}`);
  }
}

export function blocksPerRow(cols: number, blockSize: number): number {
  return Math.ceil(cols / blockSize);
}

/** Bytes of zero points per row: one per block at 8 bits, two blocks per byte at 4. */
export function zeroPointBytesPerRow(blocks: number, bits: QuantBits): number {
  return Math.ceil((blocks * bits) / 8);
}

/** Bytes a quantized (rows, cols) matrix takes: packed values, f32 scales and zero points. */
export function quantizedBytes(rows: number, cols: number, s: QuantScheme): number {
  const blocks = blocksPerRow(cols, s.blockSize);
  const values = rows * blocks * ((s.blockSize * s.bits) / 8);
  return values + rows * blocks * 4 + (s.zeroPoints ? rows * zeroPointBytesPerRow(blocks, s.bits) : 0);
}

/** Bytes a quantized matrix holds: packed values, scales and zero points. */
export function heldBytes(m: QuantizedMatrix): number {
  return m.packed.byteLength + m.scales.byteLength + (m.zeroPointBytes?.byteLength ?? 0);
}

/** Quantizes a row-major (rows, cols) float matrix. */
export function quantizeMatrix(w: Float32Array, rows: number, cols: number, s: QuantScheme): QuantizedMatrix {
  checkScheme(s);
  if (w.length !== rows * cols) throw new RangeError(`matrix of ${w.length} elements is not ${rows} x ${cols}`);
  const { bits, blockSize } = s;
  const blocks = blocksPerRow(cols, blockSize);
  const blockBytes = (blockSize * bits) / 8;
  const qmax = (1 << bits) - 1;
  const mid = 1 << (bits - 1);
  const packed = new Uint8Array(rows * blocks * blockBytes);
  const scales = new Float32Array(rows * blocks);
  const zpBytes = zeroPointBytesPerRow(blocks, bits);
  const zeroPointBytes = s.zeroPoints ? new Uint8Array(rows * zpBytes) : null;
  const q = new Uint8Array(blockSize);
  for (let n = 0; n < rows; n++) {
    for (let b = 0; b < blocks; b++) {
      const start = n * cols + b * blockSize;
      const len = Math.min(blockSize, cols - b * blockSize);
      let zp = mid;
      let d: number;
      if (s.zeroPoints) {
        let lo = 0;
        let hi = 0; // the range always holds 0, so that zero stays exact and zp fits
        for (let j = 0; j < len; j++) {
          const v = w[start + j]!;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        d = (hi - lo) / qmax;
        zp = d === 0 ? 0 : Math.min(qmax, Math.max(0, Math.round(-lo / d)));
      } else if (bits === 8) {
        let amax = 0;
        for (let j = 0; j < len; j++) amax = Math.max(amax, Math.abs(w[start + j]!));
        d = amax / 127;
      } else {
        let m = 0;
        for (let j = 0; j < len; j++) {
          const v = w[start + j]!;
          if (Math.abs(v) > Math.abs(m)) m = v;
        }
        d = m / -mid;
      }
      d = Math.fround(d);
      const inv = d === 0 ? 0 : 1 / d;
      q.fill(zp);
      for (let j = 0; j < len; j++) q[j] = Math.min(qmax, Math.max(0, Math.round(w[start + j]! * inv) + zp));
      scales[n * blocks + b] = d;
      const out = (n * blocks + b) * blockBytes;
      if (bits === 8) packed.set(q, out);
      else for (let j = 0; j < blockSize; j += 2) packed[out + (j >> 1)] = q[j]! | (q[j + 1]! << 4);
      if (zeroPointBytes) setZeroPoint(zeroPointBytes, n * zpBytes, b, bits, zp);
    }
  }
  return { bits, blockSize, zeroPoints: s.zeroPoints, rows, cols, packed, scales, zeroPointBytes };
}

/** The zero point of block `b` of a row whose zero-point bytes start at `rowStart`. */
export function zeroPointOf(bytes: Uint8Array, rowStart: number, b: number, bits: QuantBits): number {
  if (bits === 8) return bytes[rowStart + b]!;
  const byte = bytes[rowStart + (b >> 1)]!;
  return b & 1 ? byte >> 4 : byte & 0xf;
}

export function setZeroPoint(bytes: Uint8Array, rowStart: number, b: number, bits: QuantBits, zp: number): void {
  if (bits === 8) bytes[rowStart + b] = zp;
  else bytes[rowStart + (b >> 1)] = b & 1 ? (bytes[rowStart + (b >> 1)]! & 0x0f) | (zp << 4) : (bytes[rowStart + (b >> 1)]! & 0xf0) | zp;
}

/** The unsigned quantized value of element k of row n. */
export function quantizedValue(m: QuantizedMatrix, n: number, k: number): number {
  const blocks = blocksPerRow(m.cols, m.blockSize);
  const b = Math.floor(k / m.blockSize);
  const j = k - b * m.blockSize;
  const at = (n * blocks + b) * ((m.blockSize * m.bits) / 8);
  if (m.bits === 8) return m.packed[at + j]!;
  const byte = m.packed[at + (j >> 1)]!;
  return j & 1 ? byte >> 4 : byte & 0xf;
}

/** The float matrix a quantized one stands for, computed in float32 as MatMulNBits does. */
export function dequantizeMatrix(m: QuantizedMatrix): Float32Array {
  const { rows, cols, blockSize, bits } = m;
  const blocks = blocksPerRow(cols, blockSize);
  const blockBytes = (blockSize * bits) / 8;
  const zpBytes = zeroPointBytesPerRow(blocks, bits);
  const out = new Float32Array(rows * cols);
  for (let n = 0; n < rows; n++) {
    for (let b = 0; b < blocks; b++) {
      const d = m.scales[n * blocks + b]!;
      const zp = m.zeroPointBytes ? zeroPointOf(m.zeroPointBytes, n * zpBytes, b, bits) : 1 << (bits - 1);
      const len = Math.min(blockSize, cols - b * blockSize);
      const from = (n * blocks + b) * blockBytes;
      const to = n * cols + b * blockSize;
      for (let j = 0; j < len; j++) {
        const v = bits === 8 ? m.packed[from + j]! : j & 1 ? m.packed[from + (j >> 1)]! >> 4 : m.packed[from + (j >> 1)]! & 0xf;
        out[to + j] = (v - zp) * d;
      }
    }
  }
  return out;
}
