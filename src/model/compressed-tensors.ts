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
import { toFloat32, isWeightDType } from './dtype.js';
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
    reason: string,
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

/**
 * Decodes a pack-quantized weight into MatMulNBits' layout. The bit width follows from the words per row;
 * `bitsHint` (the checkpoint's num_bits, when it has one) settles rows so short that both widths fit.
 */
export function decodePacked(p: PackedParts, bitsHint: QuantBits | null): QuantizedMatrix {
  const [N, K] = p.shape;
  const words = p.packedShape[1];
  if (p.packedShape.length !== 2 || p.packedShape[0] !== N || words === undefined || words === 0) {
    throw new PackedWeightError(p.name, `weight_packed has shape [${p.packedShape.join(', ')}] for a [${N}, ${K}] weight`);
  }
  const fits = ([4, 8] as const).filter((b) => Math.ceil((K * b) / 32) === words);
  const bits = fits.length === 2 && bitsHint !== null ? bitsHint : fits.length === 1 ? fits[0] : undefined;
  if (bits === undefined) throw new PackedWeightError(p.name, `${words} int32 words per row do not tell 4 from 8 bits for ${K} values`);
  const perWord = 32 / bits;
  const groups = p.scaleShape[1];
  if (p.scaleShape.length !== 2 || p.scaleShape[0] !== N || groups === undefined || groups === 0) {
    throw new PackedWeightError(p.name, `weight_scale has shape [${p.scaleShape.join(', ')}] for a [${N}, ${K}] weight`);
  }
  const blockSize = Math.ceil(K / groups);
  if (blocksPerRow(K, blockSize) !== groups) throw new PackedWeightError(p.name, `${groups} scale groups do not divide ${K} input features`);
  try {
    checkScheme({ bits, blockSize, zeroPoints: p.zeroPoint !== null });
  } catch (err) {
    throw new PackedWeightError(p.name, (err as Error).message);
  }
  if (!isWeightDType(p.scaleDType)) throw new PackedWeightError(p.name, `weight_scale is ${p.scaleDType}; expected F32, F16 or BF16`);
  const scales = toFloat32(p.scale, p.scaleDType);
  const rowBytes = (groups * blockSize * bits) / 8;
  const packedRowBytes = words * 4;
  let packed: Uint8Array;
  if (rowBytes === packedRowBytes) {
    packed = p.packed;
  } else {
    // K is not a whole number of groups: rows are padded to a group here, to a word there.
    const mid = 1 << (bits - 1);
    packed = new Uint8Array(N * rowBytes).fill(bits === 8 ? mid : mid | (mid << 4));
    const used = Math.ceil((K * bits) / 8);
    for (let n = 0; n < N; n++) packed.set(p.packed.subarray(n * packedRowBytes, n * packedRowBytes + used), n * rowBytes);
    if (bits === 4 && K % 2 === 1) for (let n = 0; n < N; n++) packed[n * rowBytes + (used - 1)] = (packed[n * rowBytes + (used - 1)]! & 0x0f) | (mid << 4);
  }
  let zeroPointBytes: Uint8Array | null = null;
  if (p.zeroPoint) {
    const zpRow = zeroPointBytesPerRow(groups, bits);
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
  return { bits, blockSize, zeroPoints: zeroPointBytes !== null, rows: N, cols: K, packed, scales, zeroPointBytes };
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
