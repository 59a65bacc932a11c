import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  QuantSchemeError,
  checkScheme,
  dequantizeMatrix,
  quantizedBytes,
  quantizedValue,
  quantizeMatrix,
  type QuantBits,
  type QuantizedMatrix,
  type QuantScheme,
} from '../../src/model/quantization.js';
import { seededRandom } from '../helpers/seeded-random.js';


/** A (rows, cols) matrix of values in (-1, 1), with a few exact zeros and a few larger outliers. */
function randomMatrix(random: () => number, rows: number, cols: number): Float32Array {
  return Float32Array.from({ length: rows * cols }, () => {
    const r = random();
    if (r < 0.05) return 0;
    if (r < 0.08) return (random() - 0.5) * 20;
    return random() * 2 - 1;
  });
}

/** The 4-bit values of packed bytes, lower-index element (low nibble) first. */
function nibbles(bytes: Uint8Array): number[] {
  return [...bytes].flatMap((b) => [b & 0xf, b >> 4]);
}

/** The scale of the block that holds element (n, k). */
function scaleAt(m: QuantizedMatrix, n: number, k: number): number {
  return m.scales[n * Math.ceil(m.cols / m.blockSize) + Math.floor(k / m.blockSize)]!;
}

/** Float32 rounding of the dequantized product adds at most 2^-17 |d| to the half step (|q - zp| <= 255). */
const HALF_STEP = 0.5 + 2 ** -16;

/** Block sizes and column counts that include a partial last block and a row shorter than one block. */
const SHAPES = [16, 32, 128].flatMap((blockSize) => [2 * blockSize, 2 * blockSize + 7, blockSize - 3].map((cols) => ({ blockSize, cols })));

describe('quantizeMatrix packed layout', () => {
  it('packs 4-bit values two per byte, the lower-index element in the low nibble', () => {
    // -8 .. 7 then 7 .. -8: the first -8 is the element of largest magnitude, so d = -8 / -8 = 1 and q = w + 8.
    const w = Float32Array.from({ length: 32 }, (_, k) => (k < 16 ? k - 8 : 23 - k));
    const m = quantizeMatrix(w, 1, 32, { bits: 4, blockSize: 32, zeroPoints: false });
    assert.deepEqual([...m.packed], [0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
    assert.deepEqual([...m.scales], [1]);
    assert.equal(m.zeroPointBytes, null);
    assert.deepEqual(
      Array.from({ length: 32 }, (_, k) => quantizedValue(m, 0, k)),
      Array.from({ length: 32 }, (_, k) => w[k]! + 8),
    );
    assert.deepEqual([...dequantizeMatrix(m)], [...w]);
  });

  it('gives a 4-bit block whose largest-magnitude element is positive a negative scale, mapping that element to q = 0', () => {
    // m = 4, d = 4 / -8 = -0.5; q = round(w / -0.5) + 8.
    const w = new Float32Array(16);
    w.set([4, -3.5, 2, -1, 0.5]);
    const m = quantizeMatrix(w, 1, 16, { bits: 4, blockSize: 16, zeroPoints: false });
    assert.deepEqual([...m.scales], [-0.5]);
    assert.deepEqual(nibbles(m.packed).slice(0, 6), [0, 15, 4, 10, 7, 8]);
    assert.deepEqual([...m.packed], [0xf0, 0xa4, 0x87, 0x88, 0x88, 0x88, 0x88, 0x88]);
    // (8 - 8) * -0.5 is -0: compare values, not signs of zero.
    assert.deepEqual([...dequantizeMatrix(m)].map((v) => v + 0), [...w]);
  });

  it('clamps 4-bit values on the short side of the range to q = 15, as llama.cpp q4_0 does', () => {
    // m = -8 gives d = 1: 8 and 7.6 round to q = 16 and would overflow; 7.4 rounds to 15 within half a step.
    const w = new Float32Array(16);
    w.set([-8, 8, 7.6, 7.4]);
    const m = quantizeMatrix(w, 1, 16, { bits: 4, blockSize: 16, zeroPoints: false });
    assert.deepEqual([...m.scales], [1]);
    assert.deepEqual(nibbles(m.packed).slice(0, 4), [0, 15, 15, 15]);
    assert.deepEqual([...dequantizeMatrix(m).subarray(0, 4)], [-8, 7, 7, 7]);
  });

  it('uses d = amax / 127 and zero point 128 at 8 bits, one byte per element, one scale per block', () => {
    // Block 0 has amax 127 (d = 1); block 1 holds the same values halved (d = 0.5), so the same bytes.
    const block = [-127, 127, 0, 1, -1, 2.4, -2.6, 100, 0, 0, 0, 0, 0, 0, 0, 0];
    const w = Float32Array.from([...block, ...block.map((v) => v / 2)]);
    const m = quantizeMatrix(w, 1, 32, { bits: 8, blockSize: 16, zeroPoints: false });
    const q = [1, 255, 128, 129, 127, 130, 125, 228, 128, 128, 128, 128, 128, 128, 128, 128];
    assert.deepEqual([...m.packed], [...q, ...q]);
    assert.deepEqual([...m.scales], [1, 0.5]);
  });

  it('rounds the 8-bit scale to float32', () => {
    const w = new Float32Array(16);
    w[3] = -2.54;
    const m = quantizeMatrix(w, 1, 16, { bits: 8, blockSize: 16, zeroPoints: false });
    assert.equal(m.scales[0], Math.fround(Math.fround(2.54) / 127));
    assert.equal(m.packed[3], 1);
  });

  it('lays the packed bytes out by row, then block, then element, with scales by row then block', () => {
    const rows = 3;
    const blocks = 3;
    const blockSize = 16;
    const cols = blocks * blockSize;
    // One non-zero element per block, at a position that differs from block to block.
    const at = (n: number, b: number): number => b * blockSize + ((n + b) % blockSize);
    const w = new Float32Array(rows * cols);
    for (let n = 0; n < rows; n++) for (let b = 0; b < blocks; b++) w[n * cols + at(n, b)] = (n + 1) * (b + 1);
    for (const bits of [8, 4] as const) {
      const m = quantizeMatrix(w, rows, cols, { bits, blockSize, zeroPoints: false });
      const blockBytes = (blockSize * bits) / 8;
      assert.equal(m.packed.length, rows * blocks * blockBytes);
      const values = bits === 8 ? [...m.packed] : nibbles(m.packed);
      const expected = new Array<number>(rows * blocks * blockSize).fill(bits === 8 ? 128 : 8);
      // The positive maximum maps to 255 at 8 bits and to 0 at 4 bits (negative scale).
      for (let n = 0; n < rows; n++) for (let b = 0; b < blocks; b++) expected[(n * blocks + b) * blockSize + (at(n, b) % blockSize)] = bits === 8 ? 255 : 0;
      assert.deepEqual(values, expected, `${bits} bits`);
      const scales = Array.from({ length: rows * blocks }, (_, i) => {
        const amax = (Math.floor(i / blocks) + 1) * ((i % blocks) + 1);
        return Math.fround(bits === 8 ? amax / 127 : amax / -8);
      });
      assert.deepEqual([...m.scales], scales, `${bits} bits`);
    }
  });

  it('pads a partial last block with the zero point', () => {
    const random = seededRandom(7);
    const rows = 2;
    const cols = 20; // a full block of 16, then 4 values and 12 of padding
    const w = randomMatrix(random, rows, cols);
    const four = quantizeMatrix(w, rows, cols, { bits: 4, blockSize: 16, zeroPoints: false });
    assert.equal(four.packed.length, rows * 2 * 8);
    for (let n = 0; n < rows; n++) assert.deepEqual([...four.packed.subarray((n * 2 + 1) * 8 + 2, (n * 2 + 2) * 8)], [0x88, 0x88, 0x88, 0x88, 0x88, 0x88], `row ${n}`);
    const eight = quantizeMatrix(w, rows, cols, { bits: 8, blockSize: 16, zeroPoints: false });
    assert.equal(eight.packed.length, rows * 2 * 16);
    for (let n = 0; n < rows; n++) assert.ok(eight.packed.subarray((n * 2 + 1) * 16 + 4, (n * 2 + 2) * 16).every((b) => b === 128), `row ${n}`);
    const asymmetric = quantizeMatrix(w, rows, cols, { bits: 8, blockSize: 16, zeroPoints: true });
    for (let n = 0; n < rows; n++) {
      const zp = asymmetric.zeroPointBytes![n * 2 + 1]!;
      assert.ok(asymmetric.packed.subarray((n * 2 + 1) * 16 + 4, (n * 2 + 2) * 16).every((b) => b === zp), `row ${n} pads with its zero point ${zp}`);
    }
  });

  it('rejects a matrix whose length is not rows x cols', () => {
    assert.throws(() => quantizeMatrix(new Float32Array(31), 1, 32, { bits: 8, blockSize: 32, zeroPoints: false }), RangeError);
  });
});

describe('quantizeMatrix with zero points', () => {
  it('stores one zero-point byte per block at 8 bits', () => {
    // Block 0 spans [-1, 3]: d = 4/255, zp = round(63.75) = 64. Block 1 is all >= 0: zp = 0. Block 2 all <= 0: zp = 255.
    const w = new Float32Array(48);
    w.set([-1, 3], 0);
    w.set([0.5, 2, 1], 16);
    w.set([-2, -1], 32);
    const m = quantizeMatrix(w, 1, 48, { bits: 8, blockSize: 16, zeroPoints: true });
    assert.deepEqual([...m.zeroPointBytes!], [64, 0, 255]);
    assert.deepEqual([...m.packed.subarray(0, 3)], [0, 255, 64]); // the ends of the range, then zero
    assert.deepEqual([...m.scales], [4 / 255, 2 / 255, 2 / 255].map(Math.fround));
  });

  it('packs 4-bit zero points two blocks per byte, the even block in the low nibble', () => {
    // Three blocks per row, so each row has two zero-point bytes, the second half empty.
    const w = new Float32Array(2 * 48);
    w.set([-1, 3], 0); // zp = round(1 / (4/15)) = round(3.75) = 4
    w.set([0.5, 2], 16); // zp = 0
    w.set([-2, -0.5], 32); // zp = 15
    w.set([-2, -1], 48); // zp = 15
    w.set([-3, 1], 64); // zp = round(3 / (4/15)) = round(11.25) = 11
    w.set([0, 1], 80); // zp = 0
    const m = quantizeMatrix(w, 2, 48, { bits: 4, blockSize: 16, zeroPoints: true });
    assert.deepEqual([...m.zeroPointBytes!], [0x04, 0x0f, 0xbf, 0x00]);
  });

  it('dequantizes zero to exactly zero and every element to within d/2', () => {
    const random = seededRandom(11);
    let zeros = 0;
    for (const bits of [4, 8] as const) {
      for (const { blockSize, cols } of SHAPES) {
        const rows = 4;
        const w = randomMatrix(random, rows, cols);
        const m = quantizeMatrix(w, rows, cols, { bits, blockSize, zeroPoints: true });
        const out = dequantizeMatrix(m);
        assert.equal(out.length, rows * cols);
        for (let i = 0; i < w.length; i++) {
          const n = Math.floor(i / cols);
          const d = scaleAt(m, n, i % cols);
          const where = `bits ${bits}, block ${blockSize}, cols ${cols}, element ${i}`;
          assert.ok(d >= 0, where);
          if (w[i] === 0) {
            zeros++;
            assert.ok(out[i] === 0, `${where}: zero came back as ${out[i]}`);
          }
          assert.ok(Math.abs(out[i]! - w[i]!) <= d * HALF_STEP, `${where}: ${w[i]} came back as ${out[i]} with d = ${d}`);
        }
      }
    }
    assert.ok(zeros > 0, 'the data should hold zeros');
  });
});

describe('dequantizeMatrix(quantizeMatrix(w)), symmetric', () => {
  it('is within |d|/2 of w at 8 bits, for every block size and a partial last block', () => {
    const random = seededRandom(1);
    for (const { blockSize, cols } of SHAPES) {
      const rows = 5;
      const w = randomMatrix(random, rows, cols);
      const m = quantizeMatrix(w, rows, cols, { bits: 8, blockSize, zeroPoints: false });
      const out = dequantizeMatrix(m);
      assert.equal(out.length, rows * cols, 'padding never reaches the output');
      for (let i = 0; i < w.length; i++) {
        const d = scaleAt(m, Math.floor(i / cols), i % cols);
        assert.ok(Math.abs(out[i]! - w[i]!) <= Math.abs(d) * HALF_STEP, `block ${blockSize}, cols ${cols}, element ${i}: ${w[i]} came back as ${out[i]}`);
      }
    }
  });

  it('is within |d|/2 of w at 4 bits, except beyond 7.5 steps on the short side, which comes back as 7d', () => {
    // 4-bit symmetric has 8 steps on one side of zero and 7 on the other: the element of largest
    // magnitude m sits on q = 0 (w / d = -8), values opposite to m with w / d > 7.5 clamp to q = 15.
    const random = seededRandom(2);
    let clamped = 0;
    for (const { blockSize, cols } of SHAPES) {
      const rows = 5;
      const w = randomMatrix(random, rows, cols);
      const m = quantizeMatrix(w, rows, cols, { bits: 4, blockSize, zeroPoints: false });
      const out = dequantizeMatrix(m);
      assert.equal(out.length, rows * cols, 'padding never reaches the output');
      for (let i = 0; i < w.length; i++) {
        const d = scaleAt(m, Math.floor(i / cols), i % cols);
        const where = `block ${blockSize}, cols ${cols}, element ${i}: ${w[i]} came back as ${out[i]} with d = ${d}`;
        const steps = d === 0 ? 0 : w[i]! / d;
        assert.ok(steps >= -8 - 1e-6, where);
        if (steps > 7.5) {
          clamped++;
          assert.equal(out[i], Math.fround(7 * d), where);
          assert.ok(Math.abs(out[i]! - w[i]!) <= Math.abs(d) * (1 + 2 ** -16), where);
        } else {
          assert.ok(Math.abs(out[i]! - w[i]!) <= Math.abs(d) * HALF_STEP, where);
        }
      }
    }
    assert.ok(clamped > 0, 'the data should reach the clamped side of some block');
  });

  it('gives a block of zeros scale 0, and it dequantizes to exact zeros', () => {
    // Row 0: a zero block beside a non-zero one; row 1 all zeros (with negative zeros).
    const w = new Float32Array(2 * 32);
    w.set([0.5, -0.25, 1], 16);
    w.set([-0, -0, 0], 32);
    for (const bits of [4, 8] as const) {
      for (const zeroPoints of [false, true]) {
        const m = quantizeMatrix(w, 2, 32, { bits, blockSize: 16, zeroPoints });
        const where = `${bits} bits, zero points ${zeroPoints}`;
        assert.ok(m.scales[0] === 0 && m.scales[2] === 0 && m.scales[3] === 0, `${where}: scales ${[...m.scales].join(', ')}`);
        const out = dequantizeMatrix(m);
        for (const i of [...Array.from({ length: 16 }, (_, k) => k), ...Array.from({ length: 32 }, (_, k) => 32 + k)]) {
          assert.ok(out[i] === 0, `${where}: element ${i} is ${out[i]}`);
        }
        assert.ok(out.every((v) => Number.isFinite(v)), where);
      }
    }
  });
});

describe('dequantizeMatrix', () => {
  it('reads only cols elements of each row, whatever the padding of a partial last block holds', () => {
    // Hand-made: 2 rows of 3 values, 4 bits, block 16, scale 0.5, padding nibbles all 0xf.
    const packed = new Uint8Array(16).fill(0xff);
    packed.set([0x9a, 0xfb], 0); // q = 10, 9, 11
    packed.set([0x86, 0xf0], 8); // q = 6, 8, 0
    const m: QuantizedMatrix = { bits: 4, blockSize: 16, zeroPoints: false, rows: 2, cols: 3, packed, scales: Float32Array.from([0.5, 2]), zeroPointBytes: null };
    assert.deepEqual([...dequantizeMatrix(m)], [1, 0.5, 1.5, -4, 0, -16]);
  });

  it('subtracts each block its own zero point', () => {
    // 8 bits, 2 blocks of 16 in one row, zero points 10 and 200.
    const packed = new Uint8Array(32).fill(10);
    packed.fill(200, 16);
    packed[0] = 12;
    packed[16] = 190;
    const m: QuantizedMatrix = { bits: 8, blockSize: 16, zeroPoints: true, rows: 1, cols: 32, packed, scales: Float32Array.from([0.25, 4]), zeroPointBytes: Uint8Array.from([10, 200]) };
    const out = dequantizeMatrix(m);
    assert.equal(out[0], 0.5);
    assert.equal(out[16], -40);
    assert.ok(out.every((v, i) => i === 0 || i === 16 || v === 0));
  });
});

describe('quantizedBytes', () => {
  it('equals the packed, scale and zero-point bytes of a quantized matrix', () => {
    const random = seededRandom(3);
    for (const bits of [4, 8] as const) {
      for (const zeroPoints of [false, true]) {
        for (const { blockSize, cols } of SHAPES) {
          const rows = 3;
          const m = quantizeMatrix(randomMatrix(random, rows, cols), rows, cols, { bits, blockSize, zeroPoints });
          const actual = m.packed.byteLength + m.scales.byteLength + (m.zeroPointBytes?.byteLength ?? 0);
          assert.equal(quantizedBytes(rows, cols, { bits, blockSize, zeroPoints }), actual, `${bits} bits, block ${blockSize}, cols ${cols}, zero points ${zeroPoints}`);
        }
      }
    }
  });

  it('counts a 2 x 40 int4 matrix in blocks of 16 with zero points as 48 + 24 + 4 bytes', () => {
    // 3 blocks per row: 8 bytes of values each, a 4-byte scale each, two zero-point bytes per row.
    assert.equal(quantizedBytes(2, 40, { bits: 4, blockSize: 16, zeroPoints: true }), 76);
  });
});

describe('checkScheme', () => {
  it('accepts 4 or 8 bits with a power-of-two block size of at least 16', () => {
    for (const bits of [4, 8] as const) for (const blockSize of [16, 32, 64, 128, 256, 4096]) checkScheme({ bits, blockSize, zeroPoints: false });
  });

  it('rejects other bit widths with QuantSchemeError', () => {
    for (const bits of [0, 1, 2, 3, 5, 16, 32]) {
      const scheme = { bits: bits as QuantBits, blockSize: 32, zeroPoints: false };
      assert.throws(() => checkScheme(scheme), (e: unknown) => {
        assert.ok(e instanceof QuantSchemeError, `bits ${bits}`);
        assert.equal(e.code, 'bad_quant_scheme');
        assert.match(e.message, new RegExp(`got ${bits}$`));
        return true;
      });
      assert.throws(() => quantizeMatrix(new Float32Array(32), 1, 32, scheme), QuantSchemeError, `quantizeMatrix with bits ${bits}`);
    }
  });

  it('rejects block sizes that are not powers of two of at least 16 with QuantSchemeError', () => {
    for (const blockSize of [0, 1, 2, 8, 12, 24, 48, 100, 16.5, -16, NaN, Infinity]) {
      const scheme: QuantScheme = { bits: 4, blockSize, zeroPoints: false };
      assert.throws(() => checkScheme(scheme), QuantSchemeError, `block size ${blockSize}`);
      assert.throws(() => quantizeMatrix(new Float32Array(32), 1, 32, scheme), QuantSchemeError, `quantizeMatrix with block size ${blockSize}`);
    }
  });
});
