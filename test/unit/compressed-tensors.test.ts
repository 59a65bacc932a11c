import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PackedWeightError, decodePacked, encodePacked, packedNames, type PackedHints, type PackedParts } from '../../src/model/compressed-tensors.js';
import { float32ToFloat16Bits } from '../../src/model/dtype.js';
import { dequantizeMatrix, quantizedValue, quantizeMatrix, zeroPointOf, type QuantBits } from '../../src/model/quantization.js';
import { seededRandom } from '../helpers/seeded-random.js';


// ---- compressed-tensors' pack_to_int32 / unpack_from_int32, written here from their description ----

/**
 * pack_to_int32 along dim 1: each signed value is stored unsigned (+ 2^(bits-1)), value i of a word in
 * bits [i*bits, (i+1)*bits); rows are padded with (unsigned) zeros to whole words. Little-endian bytes.
 */
function packRows(values: readonly (readonly number[])[], bits: QuantBits): Uint8Array {
  const perWord = 32 / bits;
  const words = Math.ceil((values[0]?.length ?? 0) / perWord);
  const view = new DataView(new ArrayBuffer(values.length * words * 4));
  values.forEach((row, n) => {
    for (let w = 0; w < words; w++) {
      let word = 0;
      for (let i = 0; i < perWord; i++) {
        const v = row[w * perWord + i];
        if (v !== undefined) word += (v + 2 ** (bits - 1)) * 2 ** (i * bits);
      }
      view.setUint32((n * words + w) * 4, word, true);
    }
  });
  return new Uint8Array(view.buffer);
}

/** pack_to_int32 along dim 0 (zero points, values[n][g]): word (j, g) holds rows j*f .. j*f+f-1 of column g. */
function packColumns(values: readonly (readonly number[])[], bits: QuantBits): Uint8Array {
  const perWord = 32 / bits;
  const groups = values[0]?.length ?? 0;
  const wordRows = Math.ceil(values.length / perWord);
  const view = new DataView(new ArrayBuffer(wordRows * groups * 4));
  for (let j = 0; j < wordRows; j++) {
    for (let g = 0; g < groups; g++) {
      let word = 0;
      for (let i = 0; i < perWord; i++) {
        const v = values[j * perWord + i]?.[g];
        if (v !== undefined) word += (v + 2 ** (bits - 1)) * 2 ** (i * bits);
      }
      view.setUint32((j * groups + g) * 4, word, true);
    }
  }
  return new Uint8Array(view.buffer);
}

/** unpack_from_int32 along dim 1, without the signed shift: the first `cols` unsigned values of each row. */
function unpackRows(bytes: Uint8Array, rows: number, cols: number, bits: QuantBits): number[][] {
  const perWord = 32 / bits;
  const words = Math.ceil(cols / perWord);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: rows }, (_, n) =>
    Array.from({ length: cols }, (_, k) => (view.getUint32((n * words + Math.floor(k / perWord)) * 4, true) >>> ((k % perWord) * bits)) & ((1 << bits) - 1)),
  );
}

function words32(values: readonly number[]): Uint8Array {
  const view = new DataView(new ArrayBuffer(values.length * 4));
  values.forEach((v, i) => view.setUint32(i * 4, v >>> 0, true));
  return new Uint8Array(view.buffer);
}

function f32Bytes(values: readonly number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

/** Signed `bits`-bit values, (rows, cols). */
function randomSigned(random: () => number, rows: number, cols: number, bits: QuantBits): number[][] {
  const half = 2 ** (bits - 1);
  return Array.from({ length: rows }, () => Array.from({ length: cols }, () => Math.floor(random() * 2 * half) - half));
}

/** Scales exactly representable in F32, F16 and BF16. */
function randomScales(random: () => number, rows: number, groups: number): number[][] {
  const choices = [0.5, -0.25, 0.125, 1.5, 2, -3, 0.0078125];
  return Array.from({ length: rows }, () => Array.from({ length: groups }, () => choices[Math.floor(random() * choices.length)]!));
}

function randomWeights(random: () => number, rows: number, cols: number): Float32Array {
  return Float32Array.from({ length: rows * cols }, () => (random() < 0.05 ? 0 : random() * 2 - 1));
}

const NAME = 'model.layers.0.mlp.experts.3.down_proj.weight';

/** No quantization_config to go by: the shapes alone must tell bits and group size. */
const NO_HINTS: PackedHints = { bits: [], groupSizes: [] };

/** A checkpoint's quantization_config with one group of `bits` and `groupSize`. */
function hints(bits: QuantBits, groupSize: number): PackedHints {
  return { bits: [bits], groupSizes: [groupSize] };
}

/** The parts of a weight as a checkpoint would hold them: packed words of signed values, F32 scales, optional zero points. */
function checkpointParts(q: number[][], scales: number[][], zeroPoints: number[][] | null, bits: QuantBits): PackedParts {
  const rows = q.length;
  const cols = q[0]!.length;
  return {
    name: NAME,
    packed: packRows(q, bits),
    packedShape: [rows, Math.ceil((cols * bits) / 32)],
    scale: f32Bytes(scales.flat()),
    scaleDType: 'F32',
    scaleShape: [rows, scales[0]!.length],
    zeroPoint: zeroPoints && packColumns(zeroPoints, bits),
    shape: [rows, cols],
  };
}

function partsOfEncoded(e: ReturnType<typeof encodePacked>, rows: number, cols: number): PackedParts {
  return { name: NAME, packed: e.packed, packedShape: e.packedShape, scale: e.scale, scaleDType: 'F32', scaleShape: e.scaleShape, zeroPoint: e.zeroPoint, shape: [rows, cols] };
}

function expectPackedWeightError(parts: PackedParts, message: RegExp, given: PackedHints = NO_HINTS): void {
  assert.throws(() => decodePacked(parts, given), (e: unknown) => {
    assert.ok(e instanceof PackedWeightError, `expected PackedWeightError, got ${String(e)}`);
    assert.equal(e.code, 'bad_packed_weight');
    assert.equal(e.tensor, NAME);
    assert.ok(e.message.includes(`"${NAME}"`), e.message);
    assert.match(e.message, message);
    return true;
  });
}

/** Shapes that reach both paths of the decoder: rows shared as they are, and rows copied out to whole groups. */
const ROUND_TRIP_SHAPES = [
  { bits: 4, cols: 64, blockSize: 32 }, // whole groups
  { bits: 8, cols: 64, blockSize: 16 },
  { bits: 4, cols: 63, blockSize: 32 }, // odd K, the last group one short: words and groups take the same bytes
  { bits: 8, cols: 63, blockSize: 32 },
  { bits: 4, cols: 137, blockSize: 16 }, // K % 8 = 1: 18 words and 9 groups, 72 bytes either way
  { bits: 4, cols: 151, blockSize: 16 }, // K % 8 = 7: 19 words (76 bytes) against 10 groups (80 bytes)
  { bits: 8, cols: 91, blockSize: 16 }, // K % 4 = 3: 23 words (92 bytes) against 6 groups (96 bytes)
] as const;

describe('pack-quantized words', () => {
  it("reproduces compressed-tensors' documented example: 8-bit [1, 2] packs to the int32 33409", () => {
    assert.deepEqual([...new Int32Array(packRows([[1, 2]], 8).buffer)], [33409]);
    // The same word leads a row of 16 values at 8 bits; the other words hold signed zeros (0x80 bytes).
    const parts: PackedParts = {
      name: NAME,
      packed: words32([33409, 0x80808080, 0x80808080, 0x80808080]),
      packedShape: [1, 4],
      scale: f32Bytes([0.5]),
      scaleDType: 'F32',
      scaleShape: [1, 1],
      zeroPoint: null,
      shape: [1, 16],
    };
    const m = decodePacked(parts, hints(8, 16)); // one scale for 16 values fits groups of 16 and 32
    assert.equal(m.bits, 8);
    assert.equal(m.blockSize, 16);
    assert.equal(m.zeroPointBytes, null);
    assert.deepEqual(
      Array.from({ length: 16 }, (_, k) => quantizedValue(m, 0, k)),
      [129, 130, 0, 0, ...new Array<number>(12).fill(128)],
    );
    assert.deepEqual([...dequantizeMatrix(m)], [0.5, 1, -64, -64, ...new Array<number>(12).fill(0)]);
  });

  it('reads 4 bits as eight values to a word, value i in bits [4i, 4i + 4), stored as signed + 8', () => {
    const signed = Array.from({ length: 16 }, (_, k) => k - 8);
    assert.deepEqual([...new Uint32Array(packRows([signed], 4).buffer)], [0x76543210, 0xfedcba98]);
    const parts: PackedParts = {
      name: NAME,
      packed: words32([0x76543210, 0xfedcba98]),
      packedShape: [1, 2],
      scale: f32Bytes([0.25]),
      scaleDType: 'F32',
      scaleShape: [1, 1],
      zeroPoint: null,
      shape: [1, 16],
    };
    const m = decodePacked(parts, hints(4, 16));
    assert.equal(m.bits, 4);
    assert.equal(m.blockSize, 16);
    assert.deepEqual([...m.packed], [0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe]);
    assert.deepEqual(Array.from({ length: 16 }, (_, k) => quantizedValue(m, 0, k)), Array.from({ length: 16 }, (_, k) => k));
    assert.deepEqual([...dequantizeMatrix(m)], signed.map((v) => v * 0.25));
  });

  it('decodes symmetric weights in groups with F32, F16 and BF16 scales', () => {
    const random = seededRandom(21);
    const rows = 3;
    const cols = 64;
    const groups = 2;
    for (const bits of [4, 8] as const) {
      const q = randomSigned(random, rows, cols, bits);
      const scales = randomScales(random, rows, groups);
      const scaleBytes = {
        F32: f32Bytes(scales.flat()),
        F16: new Uint8Array(Uint16Array.from(scales.flat(), float32ToFloat16Bits).buffer),
        BF16: new Uint8Array(Uint16Array.from(new Uint32Array(Float32Array.from(scales.flat()).buffer), (b) => b >>> 16).buffer),
      };
      for (const [scaleDType, scale] of Object.entries(scaleBytes)) {
        const m = decodePacked({ ...checkpointParts(q, scales, null, bits), scale, scaleDType }, NO_HINTS);
        const where = `${bits} bits, ${scaleDType} scales`;
        assert.equal(m.bits, bits, where);
        assert.equal(m.blockSize, 32, where);
        assert.deepEqual([...m.scales], scales.flat(), where);
        const out = dequantizeMatrix(m);
        for (let n = 0; n < rows; n++) {
          for (let k = 0; k < cols; k++) {
            assert.equal(quantizedValue(m, n, k), q[n]![k]! + 2 ** (bits - 1), `${where}: (${n}, ${k})`);
            assert.equal(out[n * cols + k], q[n]![k]! * scales[n]![Math.floor(k / 32)]!, `${where}: (${n}, ${k})`);
          }
        }
      }
    }
  });

  it('reads 4-bit zero points of rows 0, 1, 2 from the low nibbles of one word', () => {
    // Unsigned zero points 1, 2, 3 (signed -7, -6, -5) packed along dim 0: 0x321.
    const parts: PackedParts = {
      name: NAME,
      packed: words32([0x88888888, 0x88888888, 0x88888888, 0x88888888, 0x88888888, 0x88888888]),
      packedShape: [3, 2],
      scale: f32Bytes([1, 1, 1]),
      scaleDType: 'F32',
      scaleShape: [3, 1],
      zeroPoint: words32([0x321]),
      shape: [3, 16],
    };
    assert.deepEqual([...packColumns([[-7], [-6], [-5]], 4)], [...words32([0x321])]);
    const m = decodePacked(parts, hints(4, 16));
    assert.deepEqual([...m.zeroPointBytes!], [1, 2, 3]);
    const out = dequantizeMatrix(m);
    assert.deepEqual([out[0], out[16], out[32]], [7, 6, 5]); // q = 8 each
  });

  it('decodes zero points packed along the rows: word (n / f, g) holds rows n .. n + f - 1 of group g', () => {
    const random = seededRandom(22);
    for (const { bits, rows, cols, groups } of [
      { bits: 8, rows: 5, cols: 32, groups: 2 }, // 4 rows to a word: two word rows, the second mostly padding
      { bits: 4, rows: 9, cols: 48, groups: 3 }, // 8 rows to a word, and an odd number of groups per row
    ] as const) {
      const q = randomSigned(random, rows, cols, bits);
      const zp = randomSigned(random, rows, groups, bits);
      const scales = randomScales(random, rows, groups);
      const parts = checkpointParts(q, scales, zp, bits);
      assert.equal(parts.zeroPoint!.byteLength, Math.ceil(rows / (32 / bits)) * groups * 4);
      const m = decodePacked(parts, NO_HINTS);
      const zpRow = Math.ceil((groups * bits) / 8);
      const out = dequantizeMatrix(m);
      for (let n = 0; n < rows; n++) {
        for (let g = 0; g < groups; g++) assert.equal(zeroPointOf(m.zeroPointBytes!, n * zpRow, g, bits), zp[n]![g]! + 2 ** (bits - 1), `${bits} bits: zero point (${n}, ${g})`);
        for (let k = 0; k < cols; k++) {
          const g = Math.floor(k / (cols / groups));
          assert.equal(out[n * cols + k], Math.fround((q[n]![k]! - zp[n]![g]!) * scales[n]![g]!), `${bits} bits: (${n}, ${k})`);
        }
      }
    }
  });
});

describe('encodePacked and decodePacked', () => {
  it("encodePacked(decodePacked(x)) gives back a checkpoint's values, scales and zero points", () => {
    const random = seededRandom(31);
    for (const { bits, cols, blockSize } of ROUND_TRIP_SHAPES) {
      for (const asymmetric of [false, true]) {
        const rows = 9;
        const groups = Math.ceil(cols / blockSize);
        const q = randomSigned(random, rows, cols, bits);
        const scales = randomScales(random, rows, groups);
        const zp = asymmetric ? randomSigned(random, rows, groups, bits) : null;
        const x = checkpointParts(q, scales, zp, bits);
        const where = `${bits} bits, K ${cols}, group ${blockSize}, ${asymmetric ? 'asymmetric' : 'symmetric'}`;
        const e = encodePacked(decodePacked(x, NO_HINTS));
        assert.deepEqual(e.packedShape, x.packedShape, where);
        // Padding bits past K are not part of the weight (unpack_from_int32 drops them).
        assert.deepEqual(unpackRows(e.packed, rows, cols, bits), unpackRows(x.packed, rows, cols, bits), where);
        assert.deepEqual(e.scaleShape, x.scaleShape, where);
        assert.deepEqual([...e.scale], [...x.scale], where);
        assert.deepEqual(e.zeroPoint && [...e.zeroPoint], x.zeroPoint && [...x.zeroPoint], where);
        if (asymmetric) assert.deepEqual(e.zeroPointShape, [Math.ceil(rows / (32 / bits)), groups], where);
        // Our own encoding comes back byte for byte.
        const again = encodePacked(decodePacked(partsOfEncoded(e, rows, cols), NO_HINTS));
        assert.deepEqual([...again.packed], [...e.packed], where);
        assert.deepEqual(again.zeroPoint && [...again.zeroPoint], e.zeroPoint && [...e.zeroPoint], where);
      }
    }
  });

  it('decodePacked(encodePacked(m)) gives back the quantized matrix', () => {
    const random = seededRandom(32);
    const cases = [
      ...ROUND_TRIP_SHAPES.map((s) => ({ ...s, zeroPoints: false })),
      { bits: 4, cols: 64, blockSize: 32, zeroPoints: true },
      { bits: 8, cols: 256, blockSize: 128, zeroPoints: true },
      { bits: 4, cols: 48, blockSize: 16, zeroPoints: true }, // odd number of 4-bit zero points per row
    ] as const;
    for (const { bits, cols, blockSize, zeroPoints } of cases) {
      for (const rows of [1, 5, 9]) {
        const m = quantizeMatrix(randomWeights(random, rows, cols), rows, cols, { bits, blockSize, zeroPoints });
        const back = decodePacked(partsOfEncoded(encodePacked(m), rows, cols), NO_HINTS);
        assert.deepEqual(back, m, `${bits} bits, ${rows} x ${cols}, block ${blockSize}, zero points ${zeroPoints}`);
      }
    }
  });

  it("pads a checkpoint's short last group with the symmetric zero 2^(bits-1) when it copies rows out to whole groups", () => {
    // compressed-tensors pads rows to whole words with unsigned 0 (signed -2^(bits-1)), which is not zero.
    // K = 151 in groups of 16 is 19 words (76 bytes) but 10 groups (80 bytes) per row, with an odd 4-bit tail.
    const random = seededRandom(36);
    for (const { bits, cols } of [
      { bits: 4, cols: 151 },
      { bits: 8, cols: 91 },
    ] as const) {
      const rows = 3;
      const groups = Math.ceil(cols / 16);
      const m = decodePacked(checkpointParts(randomSigned(random, rows, cols, bits), randomScales(random, rows, groups), null, bits), NO_HINTS);
      assert.equal(m.blockSize, 16);
      for (let n = 0; n < rows; n++) for (let k = cols; k < groups * 16; k++) assert.equal(quantizedValue(m, n, k), 2 ** (bits - 1), `${bits} bits: (${n}, ${k})`);
    }
  });

  it("pads a short last group with its zero point, as quantizeMatrix does, whatever the checkpoint's padding held", () => {
    // quantization.ts: "A last partial block is padded with zp (zero)".
    // Symmetric, K = 137 in groups of 16: words and groups have the same 72 bytes per row, shared as they are.
    const random = seededRandom(37);
    {
      const [rows, cols, groups] = [3, 137, 9];
      const m = decodePacked(checkpointParts(randomSigned(random, rows, cols, 4), randomScales(random, rows, groups), null, 4), NO_HINTS);
      for (let n = 0; n < rows; n++) for (let k = cols; k < groups * 16; k++) assert.equal(quantizedValue(m, n, k), 8, `symmetric 4 bits, K ${cols}: (${n}, ${k})`);
    }
    // With zero points, each row's last group is padded with that group's zero point.
    for (const { bits, cols } of [
      { bits: 4, cols: 136 },
      { bits: 8, cols: 91 },
    ] as const) {
      const rows = 4;
      const m = quantizeMatrix(randomWeights(random, rows, cols), rows, cols, { bits, blockSize: 16, zeroPoints: true });
      const back = decodePacked(partsOfEncoded(encodePacked(m), rows, cols), NO_HINTS);
      const where = `zero points, ${bits} bits, K ${cols}`;
      assert.deepEqual([...dequantizeMatrix(back)], [...dequantizeMatrix(m)], where);
      assert.deepEqual([...back.zeroPointBytes!], [...m.zeroPointBytes!], where);
      assert.deepEqual([...back.packed], [...m.packed], where);
    }
  });

  it('infers the group size from the scales per row when the last group is much shorter than the others', () => {
    // K = 100 in groups of 32 has 4 groups, the last of 4 values; K = 20 is one group, of 32 (16 would make 2).
    const random = seededRandom(34);
    for (const { bits, cols, blockSize, zeroPoints } of [
      { bits: 4, cols: 100, blockSize: 32, zeroPoints: false },
      { bits: 8, cols: 100, blockSize: 32, zeroPoints: false },
      { bits: 8, cols: 20, blockSize: 32, zeroPoints: false },
      { bits: 4, cols: 200, blockSize: 128, zeroPoints: false },
    ] as const) {
      const rows = 3;
      const m = quantizeMatrix(randomWeights(random, rows, cols), rows, cols, { bits, blockSize, zeroPoints });
      const where = `${bits} bits, K ${cols}, group ${blockSize}`;
      let back;
      try {
        back = decodePacked(partsOfEncoded(encodePacked(m), rows, cols), NO_HINTS);
      } catch (err) {
        assert.fail(`${where}: ${(err as Error).message}`);
      }
      assert.deepEqual(back, m, where);
    }
  });

  it('reads a weight of one group per row at the group size the checkpoint declares, however large', () => {
    // 64 input features in one group fit groups of 64, 128, 256, ...: the same values, so the declared one is taken.
    const random = seededRandom(35);
    for (const blockSize of [64, 128, 256, 1024]) {
      const rows = 2;
      const cols = 64;
      const m = quantizeMatrix(randomWeights(random, rows, cols), rows, cols, { bits: 4, blockSize, zeroPoints: false });
      let back;
      try {
        back = decodePacked(partsOfEncoded(encodePacked(m), rows, cols), hints(4, blockSize));
      } catch (err) {
        assert.fail(`group ${blockSize}: ${(err as Error).message}`);
      }
      assert.equal(back.blockSize, blockSize);
      assert.deepEqual(back, m, `group ${blockSize}`);
    }
  });
});

describe('decodePacked errors', () => {
  /** A valid 4-bit (2, 32) weight: 4 words per row, two groups of 16. */
  function valid(): PackedParts {
    return checkpointParts([new Array<number>(32).fill(1), new Array<number>(32).fill(-1)], [[1, 1], [2, 2]], null, 4);
  }

  it('decodes the valid weight these cases start from', () => {
    const m = decodePacked(valid(), NO_HINTS);
    assert.deepEqual([m.bits, m.blockSize, m.rows, m.cols], [4, 16, 2, 32]);
  });

  it('rejects a weight_packed shape that does not fit the weight, naming the tensor', () => {
    for (const packedShape of [[3, 4], [1, 4], [2], [2, 0], [2, 4, 1], [8]]) expectPackedWeightError({ ...valid(), packedShape }, /weight_packed has shape/);
    // 5 words per row fit neither 4 bits (4 words) nor 8 bits (8 words).
    expectPackedWeightError({ ...valid(), packedShape: [2, 5] }, /5 int32 words per row do not tell 4 from 8 bits for 32 values/);
  });

  it('rejects a scale dtype other than F32, F16 or BF16', () => {
    for (const scaleDType of ['F64', 'I32', 'F8_E4M3', 'f32']) expectPackedWeightError({ ...valid(), scaleDType }, new RegExp(`weight_scale is ${scaleDType}; expected F32, F16 or BF16`));
  });

  it('rejects a scale shape that does not fit the weight', () => {
    for (const scaleShape of [[3, 2], [2], [2, 0]]) expectPackedWeightError({ ...valid(), scaleShape }, /weight_scale has shape/);
    // 3 groups of 32 input features: no power-of-two group size of at least 16 makes 3.
    expectPackedWeightError({ ...valid(), scaleShape: [2, 3] }, /3 scale groups per row of 32 input features fit no power-of-two group size/);
  });

  it('reads one group per row of a power-of-two K, undeclared, as one group of K (every larger size means the same)', () => {
    // One group of 32 values fits groups of 32 and 64; both cover the row.
    const m = decodePacked({ ...valid(), scale: f32Bytes([1, 2]), scaleShape: [2, 1] }, { bits: [], groupSizes: [] });
    assert.equal(m.blockSize, 32);
  });

  it('rejects a zero point whose byte length does not fit the rows and groups', () => {
    // 2 rows of 4-bit zero points fit one word row: 2 groups x 4 bytes.
    for (const bytes of [0, 4, 12]) expectPackedWeightError({ ...valid(), zeroPoint: new Uint8Array(bytes) }, new RegExp(`weight_zero_point has ${bytes} bytes, expected 8`));
  });

  it('refuses rows of 4 or fewer values without a single declared bit width', () => {
    // One word holds 4 values at 8 bits or 8 at 4 bits: both fit a row of up to 4.
    const parts: PackedParts = { name: NAME, packed: words32([33409]), packedShape: [1, 1], scale: f32Bytes([1]), scaleDType: 'F32', scaleShape: [1, 1], zeroPoint: null, shape: [1, 2] };
    expectPackedWeightError(parts, /1 int32 words per row do not tell 4 from 8 bits for 2 values/);
    expectPackedWeightError(parts, /do not tell 4 from 8 bits/, { bits: [4, 8], groupSizes: [32] });
  });

  it('reads rows of 4 or fewer values at the bit width the checkpoint declares', () => {
    // The documented word 33409 = 0x8281: [1, 2] at 8 bits (unsigned 129, 130); nibbles 1, 8 at 4 bits.
    const parts: PackedParts = { name: NAME, packed: words32([33409]), packedShape: [1, 1], scale: f32Bytes([1]), scaleDType: 'F32', scaleShape: [1, 1], zeroPoint: null, shape: [1, 2] };
    for (const [bits, values] of [
      [8, [1, 2]],
      [4, [-7, 0]],
    ] as const) {
      let m;
      try {
        m = decodePacked(parts, { bits: [bits], groupSizes: [] });
      } catch (err) {
        assert.fail(`declared ${bits} bits: ${(err as Error).message}`);
      }
      assert.equal(m.bits, bits);
      assert.deepEqual([...dequantizeMatrix(m)], values, `declared ${bits} bits`);
    }
  });
});

describe('packedNames', () => {
  it('names the packed tensors of X.weight X.weight_packed, _scale, _zero_point and _shape', () => {
    assert.deepEqual(packedNames('a.b.weight'), {
      packed: 'a.b.weight_packed',
      scale: 'a.b.weight_scale',
      zeroPoint: 'a.b.weight_zero_point',
      shape: 'a.b.weight_shape',
    });
  });
});
