import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  NonFiniteLogitsError,
  SamplingParamsError,
  createRng,
  randomSeed,
  sampleToken,
  type Rng,
  type SamplingParams,
} from '../../src/engine/sampler.js';

const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0 };
const PLAIN: SamplingParams = { temperature: 1, topP: 1, topK: 0 };

function randomLogits(rng: Rng, size: number): Float32Array {
  return Float32Array.from({ length: size }, () => (rng.next() - 0.5) * 20);
}

function frequencies(logits: Float32Array, params: SamplingParams, draws: number, seed: number): number[] {
  const rng = createRng(seed);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) {
    const token = sampleToken(logits, params, rng);
    counts[token] = (counts[token] ?? 0) + 1;
  }
  return counts.map((c) => c / draws);
}

describe('createRng', () => {
  test('matches the reference C xoshiro128** seeded by SplitMix64', () => {
    // From Blackman and Vigna's splitmix64.c and xoshiro128starstar.c, state = (lo, hi) of two SplitMix64
    // outputs, each double built from two outputs as (a >> 5) * 2^26 + (b >> 6), divided by 2^53.
    const expected: Record<number, number[]> = {
      0: [0.87025477440427201, 0.66979715053109778, 0.36165862067339571, 0.75919063867070502, 0.61726604091350246],
      42: [0.41370166815658871, 0.0039839933778147429, 0.65008370276388672, 0.68460201861414161, 0.83064748854815251],
      [-1]: [0.11122081116347982, 0.12938300625619603, 0.014282055722108056, 0.57706732748012712, 0.42084859995360246],
    };
    for (const [seed, values] of Object.entries(expected)) {
      const rng = createRng(Number(seed));
      assert.deepEqual(values.map(() => rng.next()), values, `seed ${seed}`);
    }
  });

  test('draws in [0, 1)', () => {
    const rng = createRng(randomSeed());
    for (let i = 0; i < 10_000; i++) {
      const x = rng.next();
      assert.ok(x >= 0 && x < 1, String(x));
    }
  });

  test('rejects a seed that is not a safe integer', () => {
    assert.throws(() => createRng(1.5), RangeError);
  });
});

describe('sampleToken', () => {
  test('greedy picks the highest logit, and the lowest index among tied maxima', () => {
    const rng = createRng(1);
    assert.equal(sampleToken(Float32Array.of(1, 3, 2), GREEDY, rng), 1);
    assert.equal(sampleToken(Float32Array.of(0, 5, -1, 5, 5), GREEDY, rng), 1);
    assert.equal(sampleToken(Float32Array.of(-Infinity, -Infinity, -2), GREEDY, rng), 2);
  });

  test('draws the same tokens from the same seed', () => {
    const logits = randomLogits(createRng(3), 1000);
    const params: SamplingParams = { temperature: 0.8, topP: 0.95, topK: 50 };
    const draw = (seed: number): number[] => {
      const rng = createRng(seed);
      return Array.from({ length: 100 }, () => sampleToken(logits, params, rng));
    };
    assert.deepEqual(draw(99), draw(99));
    assert.notDeepEqual(draw(99), draw(100));
  });

  test('top-k 1 is greedy, ties included', () => {
    const rng = createRng(5);
    for (let trial = 0; trial < 200; trial++) {
      const logits = randomLogits(rng, 300).map(Math.round);
      assert.equal(sampleToken(logits, { temperature: 2, topP: 1, topK: 1 }, rng), sampleToken(logits, GREEDY, rng));
    }
  });

  test('a tiny top-p keeps only the most probable token', () => {
    const rng = createRng(6);
    for (let trial = 0; trial < 200; trial++) {
      const logits = randomLogits(rng, 300).map(Math.round);
      assert.equal(sampleToken(logits, { temperature: 1, topP: 1e-9, topK: 0 }, rng), sampleToken(logits, GREEDY, rng));
    }
  });

  test('top-k samples only from the k highest logits, and from each of them', () => {
    const logits = Float32Array.of(0, 5, 1, 4.5, 4, 2);
    const seen = frequencies(logits, { temperature: 1, topP: 1, topK: 3 }, 5000, 8);
    assert.deepEqual(seen.map((f) => f > 0), [false, true, false, true, true, false]);
  });

  test('top-p keeps the smallest set of most probable tokens whose mass reaches it', () => {
    const logits = Float32Array.from([0.5, 0.3, 0.15, 0.05], Math.log);
    const within75 = frequencies(logits, { temperature: 1, topP: 0.75, topK: 0 }, 5000, 9);
    assert.deepEqual(within75.map((f) => f > 0), [true, true, false, false]);
    assert.ok(Math.abs(within75[0]! - 0.625) < 0.03, `renormalized: ${within75[0]}`);
    const within85 = frequencies(logits, { temperature: 1, topP: 0.85, topK: 0 }, 5000, 10);
    assert.deepEqual(within85.map((f) => f > 0), [true, true, true, false]);
  });

  test('top-p breaks ties between equally probable tokens toward the lower index', () => {
    const flat = new Float32Array(1000);
    const seen = frequencies(flat, { temperature: 1, topP: 0.4995, topK: 0 }, 20_000, 14);
    assert.equal(seen.findLastIndex((f) => f > 0), 499);
    assert.ok(seen.slice(0, 500).every((f) => f > 0));
  });

  test('draws a 3-token softmax at its probabilities over 20k draws', () => {
    const logits = Float32Array.of(1, 2, 3);
    const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
    const expected = [Math.exp(1) / z, Math.exp(2) / z, Math.exp(3) / z];
    const seen = frequencies(logits, PLAIN, 20_000, 11);
    // 0.015 is over four standard deviations of a frequency from 20k draws.
    seen.forEach((f, i) => assert.ok(Math.abs(f - expected[i]!) < 0.015, `token ${i}: ${f} vs ${expected[i]}`));
  });

  test('divides the logits by the temperature before the softmax', () => {
    const seen = frequencies(Float32Array.of(0, Math.log(2)), { temperature: 0.5, topP: 1, topK: 0 }, 20_000, 12);
    assert.ok(Math.abs(seen[1]! - 0.8) < 0.015, `${seen[1]}`);
  });

  test('treats a vanishingly small temperature as greedy instead of producing NaN', () => {
    const logits = Float32Array.of(1, 3, 2);
    assert.equal(sampleToken(logits, { temperature: 1e-300, topP: 1, topK: 0 }, createRng(1)), 1);
  });

  test('top-k and top-p on a 256k vocabulary sample only tokens a full sort would allow', () => {
    const rng = createRng(13);
    const logits = randomLogits(rng, 256_000);
    const byProbability = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b);
    const topK = new Set(byProbability.slice(0, 40));
    const max = logits[byProbability[0]!]!;
    const weights = byProbability.map((i) => Math.exp(logits[i]! - max));
    const total = weights.reduce((a, b) => a + b, 0);
    let kept = 0;
    for (let mass = 0; mass < 0.9 * total; kept++) mass += weights[kept]!;
    const nucleus = new Set(byProbability.slice(0, kept));
    for (let i = 0; i < 50; i++) {
      assert.ok(topK.has(sampleToken(logits, { temperature: 1, topP: 1, topK: 40 }, rng)));
      assert.ok(nucleus.has(sampleToken(logits, { temperature: 1, topP: 0.9, topK: 0 }, rng)));
    }
  });

  test('throws SamplingParamsError naming the invalid field', () => {
    const rng = createRng(1);
    const logits = Float32Array.of(0, 1);
    const invalid: [Partial<SamplingParams>, keyof SamplingParams][] = [
      [{ temperature: -0.1 }, 'temperature'],
      [{ temperature: Number.NaN }, 'temperature'],
      [{ topP: 0 }, 'topP'],
      [{ topP: 1.5 }, 'topP'],
      [{ topK: -1 }, 'topK'],
      [{ topK: 2.5 }, 'topK'],
    ];
    for (const [override, field] of invalid) {
      assert.throws(
        () => sampleToken(logits, { ...PLAIN, ...override }, rng),
        (error: unknown) => error instanceof SamplingParamsError && error.field === field,
        JSON.stringify(override),
      );
    }
  });

  test('throws NonFiniteLogitsError when every logit is -Infinity', () => {
    const logits = Float32Array.of(-Infinity, -Infinity);
    assert.throws(() => sampleToken(logits, PLAIN, createRng(1)), NonFiniteLogitsError);
  });
});
