// Element types of weights we can turn into float32, and the conversions between them.
// Safetensors stores little-endian data; every platform Node runs on in practice is little-endian, so the
// typed-array views below read the bytes as they are (checked once, see assertLittleEndianHost).

export type WeightDType = 'F32' | 'F16' | 'BF16';

const BYTES_PER_ELEMENT: Readonly<Record<WeightDType, number>> = { F32: 4, F16: 2, BF16: 2 };

export function isWeightDType(dtype: string): dtype is WeightDType {
  return Object.hasOwn(BYTES_PER_ELEMENT, dtype);
}

export function bytesPerElement(dtype: WeightDType): number {
  return BYTES_PER_ELEMENT[dtype];
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function assertLittleEndianHost(): void {
  if (!HOST_IS_LITTLE_ENDIAN) {
    throw new Error('moe-serve reads little-endian weights through typed-array views and needs a little-endian host');
  }
}

/**
 * Decodes little-endian `dtype` elements into float32.
 *
 * `into`, when given with the right length, receives bf16/f16 results instead of a new array (recycled
 * buffers spare the allocator and the garbage collector).
 *
 * The result never shares memory with a buffer someone else may reuse: it is a fresh array, except for
 * F32 input that is 4-byte aligned and spans its whole ArrayBuffer (as a `ByteRangeReader` returns), which
 * is viewed in place; the caller hands that buffer over. A slice of Node's Buffer pool (or of any larger
 * buffer) is always copied.
 */
export function toFloat32(bytes: Uint8Array, dtype: WeightDType, into?: Float32Array): Float32Array {
  assertLittleEndianHost();
  const elementBytes = bytesPerElement(dtype);
  if (bytes.byteLength % elementBytes !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${elementBytes} bytes each)`);
  }
  const count = bytes.byteLength / elementBytes;
  switch (dtype) {
    case 'F32': {
      const ownsWholeBuffer = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
      if (ownsWholeBuffer && bytes.buffer instanceof ArrayBuffer) return new Float32Array(bytes.buffer, 0, count);
      return new Float32Array(alignedCopy(bytes).buffer, 0, count);
    }
    case 'BF16': {
      // bf16 is the high half of a float32: widen by shifting the 16 bits up (NaN payloads survive).
      // Two elements per 32-bit load (little-endian: the first is the low half), ~1.5x a 16-bit loop.
      const source = bytes.byteOffset % 4 === 0 ? bytes : alignedCopy(bytes);
      const pairs = new Int32Array(source.buffer, source.byteOffset, count >>> 1);
      const out = reuse(into, count);
      const outBits = new Int32Array(out.buffer);
      for (let i = 0, j = 0; i < pairs.length; i++, j += 2) {
        const pair = pairs[i]!;
        outBits[j] = pair << 16;
        outBits[j + 1] = pair & -0x10000;
      }
      if (count % 2 === 1) outBits[count - 1] = uint16View(source, count)[count - 1]! << 16;
      return out;
    }
    case 'F16': {
      const halves = uint16View(bytes, count);
      const table = float16ToFloat32BitsTable();
      const out = reuse(into, count);
      // Copy bit patterns, not numbers, so NaN payloads are not canonicalised on the way through.
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) outBits[i] = table[halves[i]!]!;
      return out;
    }
  }
}

/** `into` when it is a whole, 4-byte-aligned buffer of `count` elements (every element is overwritten), else a new array. */
function reuse(into: Float32Array | undefined, count: number): Float32Array {
  return into !== undefined && into.length === count && into.byteOffset === 0 ? into : new Float32Array(count);
}

/** A Uint16Array over `bytes`, copying first when `bytes` is not 2-byte aligned. */
function uint16View(bytes: Uint8Array, count: number): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  return new Uint16Array(alignedCopy(bytes).buffer, 0, count);
}

function alignedCopy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return copy;
}

let float16Table: Uint32Array | undefined;

/** float32 bit patterns of all 65536 float16 bit patterns, built on first use (256 KiB). */
function float16ToFloat32BitsTable(): Uint32Array {
  if (float16Table !== undefined) return float16Table;
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = float16BitsToFloat32Bits(h);
  float16Table = table;
  return table;
}

function float16BitsToFloat32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exponent = (h >>> 10) & 0x1f;
  let mantissa = h & 0x3ff;
  if (exponent === 0x1f) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0; // inf, or NaN keeping its payload
  if (exponent !== 0) return (sign | ((exponent - 15 + 127) << 23) | (mantissa << 13)) >>> 0;
  if (mantissa === 0) return sign >>> 0; // signed zero
  // Subnormal: value = mantissa * 2^-24. Normalise so the leading 1 becomes the implicit bit.
  let e = -14;
  while ((mantissa & 0x400) === 0) {
    mantissa <<= 1;
    e -= 1;
  }
  return (sign | ((e + 127) << 23) | ((mantissa & 0x3ff) << 13)) >>> 0;
}

const scratchFloat = new Float32Array(1);
const scratchBits = new Uint32Array(scratchFloat.buffer);

/**
 * The float16 bit pattern nearest to `x` once rounded to float32 (ties to even), like
 * `torch.tensor(x, dtype=torch.float32).half()`. Overflow gives infinity; NaN stays NaN (quiet).
 */
export function float32ToFloat16Bits(x: number): number {
  scratchFloat[0] = x;
  const bits = scratchBits[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa !== 0 ? 0x200 | (mantissa >>> 13) : 0);
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;
  if (halfExponent <= 0) {
    // float16 subnormal: value / 2^-24, i.e. the 24-bit significand shifted right by 14 - halfExponent.
    const shift = 14 - halfExponent;
    if (shift > 24) return sign; // below half the smallest subnormal (also every float32 subnormal)
    const significand = mantissa | 0x800000;
    let half = significand >>> shift;
    const remainder = significand & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (remainder > halfway || (remainder === halfway && (half & 1) === 1)) half += 1; // may carry into the smallest normal
    return sign | half;
  }
  let half = (halfExponent << 10) | (mantissa >>> 13);
  const remainder = mantissa & 0x1fff;
  if (remainder > 0x1000 || (remainder === 0x1000 && (half & 1) === 1)) half += 1; // may carry up to infinity
  return sign | half;
}
