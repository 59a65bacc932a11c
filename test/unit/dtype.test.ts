import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { bytesPerElement, float32ToFloat16Bits, toFloat32 } from '../../src/model/dtype.js';

/** Little-endian bytes of 16-bit patterns. */
function halfBytes(bits: readonly number[]): Uint8Array {
  return new Uint8Array(Uint16Array.from(bits).buffer);
}

function float32Bits(values: Float32Array): number[] {
  return [...new Uint32Array(values.buffer, values.byteOffset, values.length)];
}

/** Independent float16 decoding from the definition, for checking the lookup table. */
function float16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

describe('bytesPerElement', () => {
  it('gives the storage size of each weight dtype', () => {
    assert.equal(bytesPerElement('F32'), 4);
    assert.equal(bytesPerElement('F16'), 2);
    assert.equal(bytesPerElement('BF16'), 2);
  });
});

describe('toFloat32 from BF16', () => {
  it('decodes known bit patterns, including subnormals, infinities, NaN and negative zero', () => {
    const out = toFloat32(halfBytes([0x3f80, 0xc000, 0x3e20, 0x0001, 0x8000, 0x7f80, 0xff80, 0x7fc0]), 'BF16');
    assert.deepEqual([...out.subarray(0, 3)], [1, -2, 0.15625]);
    assert.equal(out[3], 2 ** -133); // smallest bf16 subnormal is a float32 subnormal
    assert.ok(Object.is(out[4], -0));
    assert.equal(out[5], Infinity);
    assert.equal(out[6], -Infinity);
    assert.ok(Number.isNaN(out[7]));
  });

  it('keeps every bit: the result is the pattern shifted into the high half', () => {
    const patterns = [0x0000, 0x7f81, 0xffff, 0x1234, 0xabcd];
    assert.deepEqual(float32Bits(toFloat32(halfBytes(patterns), 'BF16')), patterns.map((p) => (p << 16) >>> 0));
  });
});

describe('toFloat32 from F16', () => {
  it('decodes known bit patterns, including subnormals, infinities, NaN and negative zero', () => {
    const out = toFloat32(
      halfBytes([0x3c00, 0xc000, 0x3555, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x8001]),
      'F16',
    );
    assert.deepEqual([...out.subarray(0, 7)], [1, -2, 0.333251953125, 65504, 2 ** -24, 1023 * 2 ** -24, 2 ** -14]);
    assert.ok(Object.is(out[7], -0));
    assert.equal(out[8], Infinity);
    assert.equal(out[9], -Infinity);
    assert.ok(Number.isNaN(out[10]));
    assert.equal(out[11], -(2 ** -24));
  });

  it('decodes all 65536 patterns exactly as the float16 definition says', () => {
    const all = Array.from({ length: 65536 }, (_, h) => h);
    const out = toFloat32(halfBytes(all), 'F16');
    for (const h of all) {
      const expected = float16Value(h);
      if (Number.isNaN(expected)) assert.ok(Number.isNaN(out[h]), `0x${h.toString(16)}`);
      else assert.ok(Object.is(out[h], expected), `0x${h.toString(16)}: got ${out[h]}, expected ${expected}`);
    }
  });

  it('keeps NaN payloads', () => {
    assert.deepEqual(float32Bits(toFloat32(halfBytes([0x7c01, 0xfe00]), 'F16')), [0x7f802000, 0xffc00000]);
  });
});

describe('toFloat32 alignment and ownership', () => {
  it('decodes input at any byte offset the same as aligned input', () => {
    const patterns = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000]; // an odd count exercises the last-element path
    for (const dtype of ['F16', 'BF16'] as const) {
      const aligned = halfBytes(patterns);
      for (const offset of [1, 2, 3]) {
        const unaligned = new Uint8Array(aligned.byteLength + offset).subarray(offset);
        unaligned.set(aligned);
        assert.deepEqual(toFloat32(unaligned, dtype), toFloat32(aligned, dtype), `${dtype} at offset ${offset}`);
      }
    }
    const f32 = new Uint8Array(Float32Array.from([1.5, -3, 1e-40]).buffer);
    const shifted = new Uint8Array(f32.byteLength + 3).subarray(3);
    shifted.set(f32);
    assert.deepEqual([...toFloat32(shifted, 'F32')], [...new Float32Array(f32.buffer)]);
  });

  it('copies F32 input that is a slice of a pooled Buffer, so reusing the pool cannot change the result', () => {
    const pooled = Buffer.from(new Uint8Array(Float32Array.from([1, 2, 3]).buffer));
    assert.ok(pooled.buffer.byteLength > pooled.byteLength, 'expected a slice of the Buffer pool');
    const out = toFloat32(pooled, 'F32');
    pooled.fill(0);
    assert.deepEqual([...out], [1, 2, 3]);
    assert.notEqual(out.buffer, pooled.buffer);
  });

  it('views aligned F32 input that spans its whole buffer without copying', () => {
    const bytes = new Uint8Array(Float32Array.from([4, 5]).buffer);
    const out = toFloat32(bytes, 'F32');
    assert.equal(out.buffer, bytes.buffer);
    assert.deepEqual([...out], [4, 5]);
  });

  it('rejects a byte count that is not a whole number of elements', () => {
    assert.throws(() => toFloat32(new Uint8Array(3), 'BF16'), RangeError);
    assert.throws(() => toFloat32(new Uint8Array(6), 'F32'), RangeError);
  });
});

describe('float32ToFloat16Bits', () => {
  it('round-trips every float16 bit pattern through toFloat32', () => {
    const all = Array.from({ length: 65536 }, (_, h) => h);
    const decoded = toFloat32(halfBytes(all), 'F16');
    for (const h of all) {
      const back = float32ToFloat16Bits(decoded[h]!);
      const isNaN16 = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN16) {
        assert.equal(back & 0x7c00, 0x7c00, `0x${h.toString(16)}`);
        assert.notEqual(back & 0x3ff, 0, `0x${h.toString(16)}`);
      } else {
        assert.equal(back, h, `0x${h.toString(16)} came back as 0x${back.toString(16)}`);
      }
    }
  });

  it('rounds to nearest, ties to even', () => {
    const cases: [number, number][] = [
      [1 + 2 ** -11, 0x3c00], // tie between 1 and 1+2^-10: even is 1
      [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02: even is 0x3c02
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
      [65519, 0x7bff],
      [65520, 0x7c00], // rounds up past the largest finite half
      [1e10, 0x7c00],
      [-1e10, 0xfc00],
      [2 ** -25, 0x0000], // tie between 0 and the smallest subnormal: even is 0
      [1.5 * 2 ** -25, 0x0001],
      [3 * 2 ** -25, 0x0002], // tie between subnormals 1 and 2
      [2 ** -14 - 2 ** -25, 0x0400], // largest-subnormal tie carries into the smallest normal
      [1e-10, 0x0000],
      [-1e-10, 0x8000],
      [-0, 0x8000],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
    ];
    for (const [x, bits] of cases) {
      assert.equal(float32ToFloat16Bits(x), bits, `${x} -> 0x${float32ToFloat16Bits(x).toString(16)}, want 0x${bits.toString(16)}`);
    }
    const nan = float32ToFloat16Bits(NaN);
    assert.equal(nan & 0x7c00, 0x7c00);
    assert.notEqual(nan & 0x3ff, 0);
  });
});
