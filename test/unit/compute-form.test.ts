import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  COMPUTE_DTYPES,
  computeBytes,
  computeBytesFor,
  computeToFloat32,
  concatRows,
  toComputeForm,
  toFloat16,
  type ComputeMatrix,
  type QuantOptions,
  type StoredMatrix,
} from '../../src/model/compute-form.js';
import { float32ToFloat16Bits, toFloat32, type WeightDType } from '../../src/model/dtype.js';
import { dequantizeMatrix, quantizeMatrix, type QuantizedMatrix } from '../../src/model/quantization.js';
import { seededRandom } from '../helpers/seeded-random.js';


function randomMatrix(random: () => number, rows: number, cols: number): Float32Array {
  return Float32Array.from({ length: rows * cols }, () => (random() < 0.05 ? 0 : (random() * 2 - 1) * 3));
}

/** The matrix as a checkpoint stores it in `dtype` (bf16 by truncation, f16 rounded to nearest). */
function stored(dtype: WeightDType, rows: number, cols: number, values: Float32Array): StoredMatrix & { kind: 'float' } {
  const bytes =
    dtype === 'F32'
      ? new Uint8Array(values.slice().buffer)
      : dtype === 'F16'
        ? new Uint8Array(Uint16Array.from(values, float32ToFloat16Bits).buffer)
        : new Uint8Array(Uint16Array.from(new Uint32Array(values.slice().buffer), (b) => b >>> 16).buffer);
  return { kind: 'float', dtype, rows, cols, bytes };
}

function storedQuantized(random: () => number, rows: number, cols: number, bits: 4 | 8, blockSize: number, zeroPoints: boolean): StoredMatrix & { kind: 'quantized' } {
  return { kind: 'quantized', quantized: quantizeMatrix(randomMatrix(random, rows, cols), rows, cols, { bits, blockSize, zeroPoints }) };
}

function quantizedOf(m: ComputeMatrix): QuantizedMatrix {
  assert.ok(m.dtype === 'int8' || m.dtype === 'int4', `expected a quantized matrix, got ${m.dtype}`);
  return m.quantized;
}

/** The largest |scale| of the block holding each element. */
function scaleOfElement(q: QuantizedMatrix, i: number): number {
  const n = Math.floor(i / q.cols);
  const b = Math.floor((i % q.cols) / q.blockSize);
  return Math.abs(q.scales[n * Math.ceil(q.cols / q.blockSize) + b]!);
}

const Q: QuantOptions = { blockSize: 32, zeroPoints: false };

describe('toComputeForm', () => {
  it('hands a quantized matrix over as it is when asked for its own bit width, whatever the options say', () => {
    const random = seededRandom(1);
    for (const [bits, dtype] of [
      [4, 'int4'],
      [8, 'int8'],
    ] as const) {
      const s = storedQuantized(random, 3, 40, bits, 16, true);
      const m = toComputeForm(s, dtype, { blockSize: 128, zeroPoints: false });
      assert.equal(m.dtype, dtype);
      assert.equal(quantizedOf(m), s.quantized);
      assert.deepEqual([m.rows, m.cols], [3, 40]);
    }
  });

  it('requantizes a quantized matrix asked for the other width, with the given block size and zero points', () => {
    const random = seededRandom(2);
    const s = storedQuantized(random, 3, 40, 4, 32, false);
    const m = toComputeForm(s, 'int8', { blockSize: 16, zeroPoints: true });
    const q = quantizedOf(m);
    assert.deepEqual([q.bits, q.blockSize, q.rows, q.cols], [8, 16, 3, 40]);
    assert.notEqual(q.zeroPointBytes, null);
    assert.deepEqual(q, quantizeMatrix(dequantizeMatrix(s.quantized), 3, 40, { bits: 8, blockSize: 16, zeroPoints: true }));
  });

  it('dequantizes a quantized matrix asked for f32 or f16', () => {
    const random = seededRandom(3);
    const s = storedQuantized(random, 2, 48, 8, 16, false);
    const f32 = toComputeForm(s, 'f32', Q);
    assert.ok(f32.dtype === 'f32');
    assert.deepEqual(f32.data, dequantizeMatrix(s.quantized));
    const f16 = toComputeForm(s, 'f16', Q);
    assert.ok(f16.dtype === 'f16');
    assert.deepEqual([...f16.data], [...dequantizeMatrix(s.quantized)].map(float32ToFloat16Bits));
  });

  it('hands F16 bytes over as the f16 form, a view of the same memory', () => {
    const s = stored('F16', 2, 3, Float32Array.from([1, -2, 0.5, 65504, 2 ** -24, -0]));
    const m = toComputeForm(s, 'f16', Q);
    assert.ok(m.dtype === 'f16');
    assert.equal(m.data.buffer, s.bytes.buffer);
    assert.equal(m.data.byteOffset, s.bytes.byteOffset);
    assert.deepEqual([...m.data], [0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000]);
    s.bytes[0] = 0x01; // a write through the checkpoint's bytes shows: no copy was made
    assert.equal(m.data[0], 0x3c01);
  });

  it('gives the same f16 values for F16 bytes at an odd byte offset', () => {
    const aligned = stored('F16', 1, 4, Float32Array.from([1, -2, 0.5, 3]));
    const shifted = new Uint8Array(aligned.bytes.byteLength + 1).subarray(1);
    shifted.set(aligned.bytes);
    const m = toComputeForm({ ...aligned, bytes: shifted }, 'f16', Q);
    assert.ok(m.dtype === 'f16');
    assert.deepEqual([...m.data], [0x3c00, 0xc000, 0x3800, 0x4200]);
  });

  it('widens F32, BF16 and F16 to f32 exactly', () => {
    const values = Float32Array.from([1, -2.5, 0.15625, 3.140625, -0, 1e-3]);
    for (const dtype of ['F32', 'BF16', 'F16'] as const) {
      const s = stored(dtype, 2, 3, values);
      const m = toComputeForm(s, 'f32', Q);
      assert.ok(m.dtype === 'f32');
      assert.deepEqual(m.data, toFloat32(s.bytes, dtype), dtype);
    }
  });

  it('writes a BF16 or F16 widening into the given buffer', () => {
    for (const dtype of ['BF16', 'F16'] as const) {
      const into = new Float32Array(4);
      const m = toComputeForm(stored(dtype, 2, 2, Float32Array.from([1, 2, 3, 4])), 'f32', Q, into);
      assert.ok(m.dtype === 'f32');
      assert.equal(m.data, into, dtype);
      assert.deepEqual([...into], [1, 2, 3, 4], dtype);
    }
  });

  it('rounds F32 and BF16 to f16 to nearest even', () => {
    const values = Float32Array.from([1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520, 2 ** -25, -1e-10, 0.1]);
    const m = toComputeForm(stored('F32', 1, 6, values), 'f16', Q);
    assert.ok(m.dtype === 'f16');
    assert.deepEqual([...m.data], [0x3c00, 0x3c02, 0x7c00, 0x0000, 0x8000, 0x2e66]);
  });

  it('quantizes float weights to int8 and int4 with the given block size and zero points', () => {
    const random = seededRandom(4);
    const values = randomMatrix(random, 3, 50);
    for (const [dtype, bits] of [
      ['int8', 8],
      ['int4', 4],
    ] as const) {
      for (const q of [
        { blockSize: 16, zeroPoints: false },
        { blockSize: 32, zeroPoints: true },
      ]) {
        for (const stDType of ['F32', 'BF16'] as const) {
          const s = stored(stDType, 3, 50, values);
          const m = toComputeForm(s, dtype, q);
          assert.deepEqual(quantizedOf(m), quantizeMatrix(toFloat32(s.bytes, stDType), 3, 50, { bits, ...q }), `${stDType} -> ${dtype}`);
        }
      }
    }
  });
});

describe('toFloat16', () => {
  it('agrees with float32ToFloat16Bits on ties, overflow, subnormals, signed zeros, infinities and NaN', () => {
    const edges = [
      1 + 2 ** -11, // tie: even is 1
      1 + 3 * 2 ** -11, // tie: even is 0x3c02
      1 + 2 ** -11 + 2 ** -20,
      65504,
      65519,
      65520,
      2 ** -25,
      3 * 2 ** -25,
      2 ** -14 - 2 ** -25,
      -0,
      0,
      Infinity,
      -Infinity,
      NaN,
      -1e-10,
    ];
    const out = toFloat16(Float32Array.from(edges));
    assert.deepEqual([...out], edges.map(float32ToFloat16Bits));
    assert.deepEqual([...out.subarray(0, 13)], [0x3c00, 0x3c02, 0x3c01, 0x7bff, 0x7bff, 0x7c00, 0x0000, 0x0002, 0x0400, 0x8000, 0x0000, 0x7c00, 0xfc00]);
    assert.equal(out[13]! & 0x7c00, 0x7c00);
    assert.notEqual(out[13]! & 0x3ff, 0);
  });
});

describe('computeToFloat32', () => {
  it('gives f32 data back as it is', () => {
    const data = Float32Array.from([1, -0, 3.5]);
    assert.equal(computeToFloat32({ dtype: 'f32', rows: 1, cols: 3, data }), data);
  });

  it('inverts toComputeForm within the precision of each form', () => {
    const random = seededRandom(5);
    const rows = 4;
    const cols = 70; // two full blocks of 32 and a partial one
    const values = randomMatrix(random, rows, cols);
    const s = stored('F32', rows, cols, values);
    const f16 = computeToFloat32(toComputeForm(s, 'f16', Q));
    for (let i = 0; i < values.length; i++) {
      // Round to nearest: within half an f16 ulp, 2^-11 relative for normal values, 2^-25 near zero.
      assert.ok(Math.abs(f16[i]! - values[i]!) <= Math.max(Math.abs(values[i]!) * 2 ** -11, 2 ** -25), `f16 element ${i}`);
    }
    const cases = [
      { dtype: 'int8', q: { blockSize: 32, zeroPoints: false }, steps: 0.5 },
      { dtype: 'int8', q: { blockSize: 16, zeroPoints: true }, steps: 0.5 },
      { dtype: 'int4', q: { blockSize: 32, zeroPoints: true }, steps: 0.5 },
      // Symmetric int4 has one step less on one side of zero: values there may clamp, a whole step off.
      { dtype: 'int4', q: { blockSize: 32, zeroPoints: false }, steps: 1 },
    ] as const;
    for (const { dtype, q, steps } of cases) {
      const m = toComputeForm(s, dtype, q);
      const back = computeToFloat32(m);
      assert.deepEqual(back, dequantizeMatrix(quantizedOf(m)));
      assert.equal(back.length, rows * cols);
      for (let i = 0; i < values.length; i++) {
        const d = scaleOfElement(quantizedOf(m), i);
        assert.ok(Math.abs(back[i]! - values[i]!) <= d * (steps + 2 ** -16), `${dtype} ${JSON.stringify(q)} element ${i}: ${values[i]} came back as ${back[i]}`);
      }
    }
  });
});

describe('concatRows', () => {
  it('stacks the rows of f32 and f16 matrices in order', () => {
    const a: ComputeMatrix = { dtype: 'f32', rows: 1, cols: 2, data: Float32Array.from([1, 2]) };
    const b: ComputeMatrix = { dtype: 'f32', rows: 2, cols: 2, data: Float32Array.from([3, 4, 5, 6]) };
    const ab = concatRows([a, b]);
    assert.ok(ab.dtype === 'f32');
    assert.deepEqual([ab.rows, ab.cols], [3, 2]);
    assert.deepEqual(computeToFloat32(ab), Float32Array.from([1, 2, 3, 4, 5, 6]));
    const h = concatRows([
      { dtype: 'f16', rows: 1, cols: 3, data: Uint16Array.from([1, 2, 3]) },
      { dtype: 'f16', rows: 1, cols: 3, data: Uint16Array.from([4, 5, 6]) },
      { dtype: 'f16', rows: 1, cols: 3, data: Uint16Array.from([7, 8, 9]) },
    ]);
    assert.ok(h.dtype === 'f16');
    assert.deepEqual([h.rows, h.cols], [3, 3]);
    assert.deepEqual(h.data, Uint16Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]));
  });

  it('stacks quantized rows into what quantizing the stacked float rows gives', () => {
    // Blocks never span rows, so quantize(stack(w1, w2)) = stack(quantize(w1), quantize(w2)) exactly.
    const random = seededRandom(6);
    const cols = 40; // a partial block; at 4 bits an odd number of zero points per row
    for (const [dtype, bits] of [
      ['int8', 8],
      ['int4', 4],
    ] as const) {
      for (const zeroPoints of [false, true]) {
        const ws = [1, 3, 2].map((rows) => randomMatrix(random, rows, cols));
        const parts = ws.map((w): ComputeMatrix => ({ dtype, rows: w.length / cols, cols, quantized: quantizeMatrix(w, w.length / cols, cols, { bits, blockSize: 16, zeroPoints }) }));
        const all = Float32Array.from(ws.flatMap((w) => [...w]));
        const stacked = concatRows(parts);
        assert.equal(stacked.dtype, dtype);
        assert.deepEqual([stacked.rows, stacked.cols], [6, cols]);
        assert.deepEqual(quantizedOf(stacked), quantizeMatrix(all, 6, cols, { bits, blockSize: 16, zeroPoints }), `${dtype}, zero points ${zeroPoints}`);
      }
    }
  });

  it('returns a single matrix as it is', () => {
    const a: ComputeMatrix = { dtype: 'f32', rows: 1, cols: 2, data: Float32Array.from([1, 2]) };
    assert.equal(concatRows([a]), a);
  });

  it('refuses an empty list', () => {
    assert.throws(() => concatRows([]), RangeError);
  });

  it('refuses to stack different dtypes, bit widths, column counts, block sizes or zero-point choices', () => {
    const random = seededRandom(7);
    const quantized = (dtype: 'int8' | 'int4', cols: number, blockSize: number, zeroPoints: boolean): ComputeMatrix => ({
      dtype,
      rows: 2,
      cols,
      quantized: quantizeMatrix(randomMatrix(random, 2, cols), 2, cols, { bits: dtype === 'int8' ? 8 : 4, blockSize, zeroPoints }),
    });
    const pairs: [string, ComputeMatrix, ComputeMatrix][] = [
      ['f32 onto f16', { dtype: 'f16', rows: 1, cols: 2, data: new Uint16Array(2) }, { dtype: 'f32', rows: 1, cols: 2, data: new Float32Array(2) }],
      ['f32 of other widths', { dtype: 'f32', rows: 1, cols: 2, data: new Float32Array(2) }, { dtype: 'f32', rows: 1, cols: 3, data: new Float32Array(3) }],
      ['int4 onto int8', quantized('int8', 32, 16, false), quantized('int4', 32, 16, false)],
      ['int8 of other widths', quantized('int8', 32, 16, false), quantized('int8', 48, 16, false)],
      ['other block sizes', quantized('int4', 64, 16, false), quantized('int4', 64, 32, false)],
      ['with and without zero points', quantized('int4', 64, 16, true), quantized('int4', 64, 16, false)],
    ];
    for (const [what, a, b] of pairs) assert.throws(() => concatRows([a, b]), RangeError, what);
  });
});

describe('computeBytes and computeBytesFor', () => {
  it('agree on every compute dtype, block size and zero-point choice', () => {
    const random = seededRandom(8);
    for (const dtype of COMPUTE_DTYPES) {
      for (const q of [
        { blockSize: 16, zeroPoints: false },
        { blockSize: 32, zeroPoints: true },
        { blockSize: 128, zeroPoints: true },
      ]) {
        for (const [rows, cols] of [
          [3, 40],
          [2, 64],
          [1, 7],
        ] as const) {
          const m = toComputeForm(stored('BF16', rows, cols, randomMatrix(random, rows, cols)), dtype, q);
          assert.equal(computeBytes(m), computeBytesFor(rows, cols, dtype, q), `${dtype} ${rows} x ${cols} ${JSON.stringify(q)}`);
        }
      }
    }
  });

  it('count 4 and 2 bytes per f32 and f16 element', () => {
    assert.equal(computeBytesFor(3, 5, 'f32', Q), 60);
    assert.equal(computeBytesFor(3, 5, 'f16', Q), 30);
    assert.equal(computeBytes({ dtype: 'f16', rows: 3, cols: 5, data: new Uint16Array(15) }), 30);
  });
});
