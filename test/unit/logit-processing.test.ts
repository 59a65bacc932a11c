import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { applyPenalties, tokenLogprob, type Penalties } from '../../src/engine/logit-processing.js';
import { NonFiniteLogitsError, createRng, sampleToken, type Rng, type SamplingParams } from '../../src/engine/sampler.js';
import { SequenceSampler } from '../../src/engine/sequence-sampler.js';
import { asToken } from '../../src/tokenizer/token.js';

const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0 };
const SAMPLED: SamplingParams = { temperature: 0.9, topP: 0.95, topK: 40 };

function randomLogits(rng: Rng, size: number, scale = 20): Float32Array {
  return Float32Array.from({ length: size }, () => (rng.next() - 0.5) * scale);
}

/** log(softmax(x)[t]) the textbook way, in float64 with no max subtraction: fine for logits of moderate size. */
function naiveLogSoftmax(logits: Float32Array, t: number): number {
  let sum = 0;
  for (const x of logits) sum += Math.exp(x);
  return Math.log(Math.exp(logits[t]!) / sum);
}

/** The n best tokens by a full sort: higher logit first, lower index among ties. */
function fullSortTop(logits: Float32Array, n: number): number[] {
  const order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b);
  return order.slice(0, n);
}

function chooseAll(sampler: SequenceSampler, rows: readonly Float32Array[]): number[] {
  return rows.map((row) => sampler.next(row).token);
}

describe('applyPenalties', () => {
  test('subtracts frequency * count + presence from each generated token, and leaves the others', () => {
    const logits = Float32Array.of(1, 2, 3, 4, 5);
    const counts = new Map([[1, 1], [3, 3]]);
    const penalized = applyPenalties(logits, counts, { presence: 0.5, frequency: 0.25 });
    assert.deepEqual([...penalized], [1, 2 - 0.25 - 0.5, 3, 4 - 0.75 - 0.5, 5]);
    assert.deepEqual([...logits], [1, 2, 3, 4, 5], 'the input row is not modified');
  });

  test('negative penalties raise the logits of generated tokens', () => {
    const penalized = applyPenalties(Float32Array.of(0, 0, 0), new Map([[2, 2]]), { presence: -1, frequency: -2 });
    assert.deepEqual([...penalized], [0, 0, 5]);
  });

  test('returns the same row, uncopied, when both penalties are 0 or nothing was generated yet', () => {
    const logits = Float32Array.of(1, 2, 3);
    assert.equal(applyPenalties(logits, new Map([[0, 4]]), { presence: 0, frequency: 0 }), logits);
    assert.equal(applyPenalties(logits, new Map(), { presence: 1, frequency: 1 }), logits);
  });
});

describe('tokenLogprob', () => {
  test("the token's logprob is its log-softmax, computed in float64", () => {
    const rng = createRng(11);
    for (const size of [1, 2, 50, 3000]) {
      const logits = randomLogits(rng, size);
      for (let trial = 0; trial < 20; trial++) {
        const t = Math.floor(rng.next() * size);
        const { token, logprob } = tokenLogprob(logits, asToken(t), 0);
        assert.equal(token, t);
        assert.ok(Math.abs(logprob - naiveLogSoftmax(logits, t)) < 1e-12, `size ${size} token ${t}: ${logprob}`);
      }
    }
  });

  test('is stable for logits far from zero, where exp overflows', () => {
    const logits = Float32Array.of(1000, 999, 990);
    const shifted = Float32Array.of(10, 9, 0);
    for (const t of [0, 1, 2]) {
      const { logprob } = tokenLogprob(logits, asToken(t), 0);
      assert.ok(Math.abs(logprob - naiveLogSoftmax(shifted, t)) < 1e-12, `token ${t}: ${logprob}`);
    }
  });

  test('the probabilities of a whole row add up to 1 within 1e-9', () => {
    const rng = createRng(12);
    for (const size of [3, 20, 5000]) {
      const logits = randomLogits(rng, size, 40);
      let total = 0;
      for (let t = 0; t < size; t++) total += Math.exp(tokenLogprob(logits, asToken(t), 0).logprob);
      assert.ok(Math.abs(total - 1) < 1e-9, `size ${size}: ${total}`);
      // the same through the top list when it covers the row
      if (size <= 20) {
        const top = tokenLogprob(logits, asToken(0), size).top;
        assert.ok(Math.abs(top.reduce((s, e) => s + Math.exp(e.logprob), 0) - 1) < 1e-9);
      }
    }
  });

  test('top holds the n largest of a full sort, best first, ties to the lower index', () => {
    const rng = createRng(13);
    for (const size of [1, 5, 20, 257, 4096]) {
      for (const n of [0, 1, 3, 20]) {
        for (const rounded of [false, true]) {
          // rounding to integers makes many ties
          const logits = randomLogits(rng, size).map((x) => (rounded ? Math.round(x) : x));
          const { top } = tokenLogprob(logits, asToken(0), n);
          const expected = fullSortTop(logits, n);
          assert.deepEqual(top.map((e) => e.token), expected, `size ${size} n ${n} rounded ${rounded}`);
          for (let i = 1; i < top.length; i++) assert.ok(top[i - 1]!.logprob >= top[i]!.logprob, 'descending');
          top.forEach((e) => assert.equal(e.logprob, tokenLogprob(logits, e.token, 0).logprob));
        }
      }
    }
  });

  test('throws NonFiniteLogitsError when the row has no finite maximum', () => {
    assert.throws(() => tokenLogprob(Float32Array.of(-Infinity, -Infinity), asToken(0), 1), NonFiniteLogitsError);
  });
});

describe('SequenceSampler', () => {
  test('counts only the tokens it generated: frequency grows with repeats, presence does not', () => {
    const row = Float32Array.of(3, 2.5, 0);
    const rows = Array.from({ length: 6 }, () => row);
    const chosen = (penalties: Penalties) => chooseAll(new SequenceSampler({ sampling: GREEDY, penalties }), rows);
    assert.deepEqual(chosen({ presence: 0, frequency: 0 }), [0, 0, 0, 0, 0, 0]);
    // frequency 1: token 0 scores 3 - n0, token 1 scores 2.5 - n1
    assert.deepEqual(chosen({ presence: 0, frequency: 1 }), [0, 1, 0, 1, 0, 1]);
    // presence 1: each scores at most 1 less, however often it came
    assert.deepEqual(chosen({ presence: 1, frequency: 0 }), [0, 1, 0, 0, 0, 0]);
    assert.deepEqual([...row], [3, 2.5, 0], 'the rows are not modified');
  });

  test('zero penalties and logprobs change no token, greedy or sampled', () => {
    const rng = createRng(21);
    const rows = Array.from({ length: 50 }, () => randomLogits(rng, 500));
    for (const sampling of [GREEDY, SAMPLED]) {
      const plain = chooseAll(new SequenceSampler({ sampling, seed: 5 }), rows);
      const direct = createRng(5);
      assert.deepEqual(plain, rows.map((row) => sampleToken(row, sampling, direct)));
      const zero = new SequenceSampler({ sampling, seed: 5, penalties: { presence: 0, frequency: 0 }, logprobs: 3 });
      assert.deepEqual(chooseAll(zero, rows), plain);
    }
  });

  test("reports the chosen token's logprob after penalties, and greedy's token is always top[0]", () => {
    const row = Float32Array.of(3, 2.5, 0);
    const sampler = new SequenceSampler({ sampling: GREEDY, penalties: { presence: 0, frequency: 1 }, logprobs: 2 });
    const first = sampler.next(row);
    const second = sampler.next(row);
    assert.equal(first.logprob?.logprob, tokenLogprob(row, asToken(0), 0).logprob);
    const penalized = Float32Array.of(2, 2.5, 0);
    assert.equal(second.token, 1);
    assert.deepEqual(second.logprob, tokenLogprob(penalized, asToken(1), 2));
    assert.equal(second.logprob?.top[0]?.token, 1);

    const rng = createRng(22);
    const greedy = new SequenceSampler({ sampling: GREEDY, penalties: { presence: 0.3, frequency: 0.7 }, logprobs: 5 });
    for (let step = 0; step < 100; step++) {
      // few distinct values, so ties and penalized repeats are common
      const { token, logprob } = greedy.next(randomLogits(rng, 30, 6).map(Math.round));
      assert.equal(logprob?.top[0]?.token, token, `step ${step}`);
      assert.equal(logprob?.top.length, 5);
    }
  });

  test('reports no logprobs unless asked, and an empty top list for logprobs 0', () => {
    const row = Float32Array.of(1, 2);
    assert.equal(new SequenceSampler({ sampling: GREEDY }).next(row).logprob, undefined);
    assert.deepEqual(new SequenceSampler({ sampling: GREEDY, logprobs: 0 }).next(row).logprob?.top, []);
  });

  test('rejects penalties outside [-2, 2] and logprobs that are not an integer in 0..20 with RangeError', () => {
    for (const bad of [2.01, -2.5, Number.NaN, Infinity]) {
      assert.throws(() => new SequenceSampler({ sampling: GREEDY, penalties: { presence: bad, frequency: 0 } }), /presence penalty/);
      assert.throws(() => new SequenceSampler({ sampling: GREEDY, penalties: { presence: 0, frequency: bad } }), RangeError);
    }
    for (const bad of [-1, 21, 1.5, Number.NaN]) {
      assert.throws(() => new SequenceSampler({ sampling: GREEDY, logprobs: bad }), /logprobs must be an integer from 0 to 20/);
    }
    for (const ok of [-2, 2]) new SequenceSampler({ sampling: GREEDY, penalties: { presence: ok, frequency: ok }, logprobs: 20 });
  });
});
