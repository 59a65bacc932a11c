// Quantized weights in the compressed-tensors "pack-quantized" format (llm-compressor's W4A16 / W8A16
// checkpoints on the Hugging Face hub, and what `moe-serve quantize` writes). A Linear weight `X.weight`
// of shape (N, K) is stored as
//   X.weight_packed      I32 (N, ceil(K / f))   f = 32 / bits values per word, value i in bits [i*bits, (i+1)*bits),
//                                               each stored unsigned: signed q + 2^(bits-1)
//   X.weight_scale       (N, K / group)         float (BF16, F16 or F32)
//   X.weight_zero_point  I32 (ceil(N / f), K / group), packed the same way along N; asymmetric only
//   X.weight_shape       (2,) = [N, K]
// and means W = (q - zp) * scale per group of `group` input features (compressed_tensors'
// pack_to_int32 / unpack_from_int32 and its dequantize). Little-endian words with the first value in the
// low bits put the values in row order in memory, which is MatMulNBits' layout (quantization.ts): the
// packed bytes are shared as they are whenever K is a whole number of groups.
import { toFloat32, isWeightDType, type WeightDType } from './dtype.js';
import { blocksPerRow, checkScheme, setZeroPoint, zeroPointBytesPerRow, zeroPointOf, type QuantBits, type QuantizedMatrix } from './quantization.js';

export const PACKED_SUFFIXES = { packed: 'weight_packed', scale: 'weight_scale', zeroPoint: 'weight_zero_point', shape: 'weight_shape' } as const;

/** The tensor names of quantized weight `weightName` (which ends in `.weight`). */
export function packedNames(weightName: string): { packed: string; scale: string; zeroPoint: string; shape: string } {
  const base = weightName.endsWith('.weight') ? weightName.slice(0, -'weight'.length) : `${weightName}.`;
  return {
    packed: base + PACKED_SUFFIXES.packed,
    scale: base + PACKED_SUFFIXES.scale,
    zeroPoint: base + PACKED_SUFFIXES.zeroPoint,
    shape: base + PACKED_SUFFIXES.shape,
  };
}

export class PackedWeightError extends Error {
  readonly code = 'bad_packed_weight';

  constructor(
    readonly tensor: string,
    /** What is wrong, without the tensor's name (load-time validation lists it beside the name). */
    readonly reason: string,
  ) {
    super(`quantized weight "${tensor}" cannot be read: ${reason}`);
    this.name = 'PackedWeightError';
  }
}

/** The raw parts of one packed weight as read from safetensors. */
export interface PackedParts {
  readonly name: string;
  /** little-endian int32 words, (N, ceil(K / f)) */
  readonly packed: Uint8Array;
  readonly packedShape: readonly number[];
  readonly scale: Uint8Array;
  readonly scaleDType: string;
  readonly scaleShape: readonly number[];
  readonly zeroPoint: Uint8Array | null;
  readonly shape: readonly [number, number];
}

/** What the checkpoint's quantization_config says, to settle shapes that do not tell on their own. */
export interface PackedHints {
  /** The num_bits of its groups. */
  readonly bits: readonly QuantBits[];
  /** The group_size of its groups. */
  readonly groupSizes: readonly number[];
}

/** What a packed weight's safetensors headers tell: enough to know its scheme before any byte is read. */
export type PackedHeaders = Pick<PackedParts, 'name' | 'packedShape' | 'scaleShape' | 'scaleDType' | 'shape'>;

/**
 * The bit width and group size of a pack-quantized weight, from its tensors' shapes alone (so that a
 * checkpoint is checked at load time from its headers: checkpoint-tensors.ts). The bit width follows
 * from the words per row and the group size from the scales per row; where a shape fits two (rows so
 * short that both widths fit, or input features not a whole number of groups), the checkpoint's own
 * values settle it. Throws PackedWeightError saying which shape does not fit.
 */
export function packedScheme(p: PackedHeaders, hints: PackedHints): { bits: QuantBits; blockSize: number; scaleDType: WeightDType } {
  const [N, K] = p.shape;
  const words = p.packedShape[1];
  if (p.packedShape.length !== 2 || p.packedShape[0] !== N || words === undefined || words === 0) {
    throw new PackedWeightError(p.name, `weight_packed has shape [${p.packedShape.join(', ')}] for a [${N}, ${K}] weight`);
  }
  const fits = ([4, 8] as const).filter((b) => Math.ceil((K * b) / 32) === words);
  const bits = fits.length === 1 ? fits[0] : fits.find((b) => hints.bits.length === 1 && hints.bits[0] === b);
  if (bits === undefined) throw new PackedWeightError(p.name, `${words} int32 words per row do not tell 4 from 8 bits for ${K} values`);
  const groups = p.scaleShape[1];
  if (p.scaleShape.length !== 2 || p.scaleShape[0] !== N || groups === undefined || groups === 0) {
    throw new PackedWeightError(p.name, `weight_scale has shape [${p.scaleShape.join(', ')}] for a [${N}, ${K}] weight`);
  }
  // Every power of two from 16 up to the declared sizes (one group per row fits any size of K or more).
  const sizes: number[] = [];
  for (let bs = 16; bs <= Math.max(16, 2 * K, ...hints.groupSizes); bs *= 2) if (blocksPerRow(K, bs) === groups) sizes.push(bs);
  const blockSize = sizes.find((bs) => hints.groupSizes.includes(bs)) ?? (sizes.length === 1 || groups === 1 ? sizes[0] : undefined);
  if (blockSize === undefined) throw new PackedWeightError(p.name, `${groups} scale groups per row of ${K} input features fit no power-of-two group size of at least 16${sizes.length > 1 ? ` unambiguously (${sizes.join(', ')})` : ''}`);
  try {
    checkScheme({ bits, blockSize, zeroPoints: false }); // checks bits and block size; zero points fit either
  } catch (err) {
    throw new PackedWeightError(p.name, (err as Error).message);
  }
  if (!isWeightDType(p.scaleDType)) throw new PackedWeightError(p.name, `weight_scale is ${p.scaleDType}; expected F32, F16 or BF16`);
  return { bits, blockSize, scaleDType: p.scaleDType };
}

/** Decodes a pack-quantized weight into MatMulNBits' layout (its scheme as packedScheme finds it). */
export function decodePacked(p: PackedParts, hints: PackedHints): QuantizedMatrix {
  const [N, K] = p.shape;
  const { bits, blockSize, scaleDType } = packedScheme(p, hints);
  const perWord = 32 / bits;
  const words = p.packedShape[1] as number;
  const groups = p.scaleShape[1] as number;
  const scales = toFloat32(p.scale, scaleDType);
  let zeroPointBytes: Uint8Array | null = null;
  const zpRow = zeroPointBytesPerRow(groups, bits);
  if (p.zeroPoint) {
    zeroPointBytes = new Uint8Array(N * zpRow);
    const zpWords = new DataView(p.zeroPoint.buffer, p.zeroPoint.byteOffset, p.zeroPoint.byteLength);
    const expected = Math.ceil(N / perWord) * groups * 4;
    if (p.zeroPoint.byteLength !== expected) throw new PackedWeightError(p.name, `weight_zero_point has ${p.zeroPoint.byteLength} bytes, expected ${expected}`);
    const mask = (1 << bits) - 1;
    for (let n = 0; n < N; n++) {
      for (let gIdx = 0; gIdx < groups; gIdx++) {
        const word = zpWords.getUint32((Math.floor(n / perWord) * groups + gIdx) * 4, true);
        setZeroPoint(zeroPointBytes, n * zpRow, gIdx, bits, (word >>> ((n % perWord) * bits)) & mask);
      }
    }
  }
  const rowBytes = (groups * blockSize * bits) / 8;
  const packedRowBytes = words * 4;
  let packed: Uint8Array;
  if (K % blockSize === 0 && rowBytes === packedRowBytes) {
    packed = p.packed;
  } else {
    // K is not a whole number of groups: rows are padded to a group here, to a word there. The padding
    // gets the last group's zero point, as quantizeMatrix pads (it then dequantizes to zero).
    packed = new Uint8Array(N * rowBytes);
    const wholeBytes = Math.floor((K * bits) / 8);
    const firstPartial = (wholeBytes * 8) / bits; // K - 1 when an odd K ends in half a byte, else K
    for (let n = 0; n < N; n++) {
      packed.set(p.packed.subarray(n * packedRowBytes, n * packedRowBytes + wholeBytes), n * rowBytes);
      const zp = zeroPointBytes ? zeroPointOf(zeroPointBytes, n * zpRow, groups - 1, bits) : 1 << (bits - 1);
      for (let k = firstPartial; k < groups * blockSize; k++) setValue(packed, n * rowBytes, k, bits, k < K ? valueAt(p.packed, n * packedRowBytes, k, bits) : zp);
    }
  }
  return { bits, blockSize, zeroPoints: zeroPointBytes !== null, rows: N, cols: K, packed, scales, zeroPointBytes };
}

/** Element k of a row of packed values starting at `rowStart`. */
function valueAt(bytes: Uint8Array, rowStart: number, k: number, bits: QuantBits): number {
  if (bits === 8) return bytes[rowStart + k]!;
  const byte = bytes[rowStart + (k >> 1)]!;
  return k & 1 ? byte >> 4 : byte & 0xf;
}

function setValue(bytes: Uint8Array, rowStart: number, k: number, bits: QuantBits, v: number): void {
  if (bits === 8) bytes[rowStart + k] = v;
  else bytes[rowStart + (k >> 1)] = k & 1 ? (bytes[rowStart + (k >> 1)]! & 0x0f) | (v << 4) : (bytes[rowStart + (k >> 1)]! & 0xf0) | v;
}

/** The tensors of a pack-quantized weight (F32 scales), ready to write to safetensors. */
export function encodePacked(m: QuantizedMatrix): { packed: Uint8Array; packedShape: number[]; scale: Uint8Array; scaleShape: number[]; zeroPoint: Uint8Array | null; zeroPointShape: number[] } {
  const { rows: N, cols: K, bits, blockSize } = m;
  const perWord = 32 / bits;
  const words = Math.ceil(K / perWord);
  const groups = blocksPerRow(K, blockSize);
  const rowBytes = (groups * blockSize * bits) / 8;
  let packed: Uint8Array;
  if (rowBytes === words * 4) {
    packed = m.packed;
  } else {
    packed = new Uint8Array(N * words * 4);
    const used = Math.ceil((K * bits) / 8);
    for (let n = 0; n < N; n++) packed.set(m.packed.subarray(n * rowBytes, n * rowBytes + used), n * words * 4);
  }
  let zeroPoint: Uint8Array | null = null;
  const zpRows = Math.ceil(N / perWord);
  if (m.zeroPointBytes) {
    zeroPoint = new Uint8Array(zpRows * groups * 4);
    const view = new DataView(zeroPoint.buffer);
    const zpRow = zeroPointBytesPerRow(groups, bits);
    for (let n = 0; n < N; n++) {
      for (let gIdx = 0; gIdx < groups; gIdx++) {
        const at = (Math.floor(n / perWord) * groups + gIdx) * 4;
        const zp = zeroPointOf(m.zeroPointBytes, n * zpRow, gIdx, bits);
        view.setUint32(at, (view.getUint32(at, true) | (zp << ((n % perWord) * bits))) >>> 0, true);
      }
    }
  }
  return {
    packed,
    packedShape: [N, words],
    scale: new Uint8Array(m.scales.buffer, m.scales.byteOffset, m.scales.byteLength),
    scaleShape: [N, groups],
    zeroPoint,
    zeroPointShape: [zpRows, groups],
  };
}
