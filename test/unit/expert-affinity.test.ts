// The expert-affinity table: learned from committed steps' routing, it predicts a prompt's experts per
// sparse layer and scores them by the share resident. No model: routings are built by hand.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ExpertAffinity, PREDICTED_PER_TOP_K, type AffinityShape, type ExpertResidency } from '../../src/engine/expert-affinity.js';
import type { Routing } from '../../src/engine/routing.js';

/** Layers 0 and 2 sparse, layer 1 dense; 8 experts, top-2. */
const SHAPE: AffinityShape = { numLayers: 3, numExperts: 8, topK: 2, sparseLayers: [true, false, true] };

/** A routing of tokens to the given experts (one top-k list per token). */
function routing(experts: readonly (readonly number[])[]): Routing {
  const topK = experts[0]?.length ?? 0;
  return { tokens: experts.length, topK, experts: Int32Array.from(experts.flat()), weights: new Float32Array(experts.length * topK).fill(1 / topK) };
}

/** Residency from a set of "layer:expert" keys. */
function residency(resident: readonly string[], residentShare = 0): ExpertResidency {
  const set = new Set(resident);
  return { isResident: (layer, expert) => set.has(`${layer}:${expert}`), residentShare };
}

describe('ExpertAffinity', () => {
  test('a one-token prompt is predicted to go where that token id was last routed, per sparse layer', () => {
    const a = new ExpertAffinity(SHAPE);
    a.onStepRouting(0, [7, 9], routing([[3, 1], [0, 5]]));
    a.onStepRouting(1, [7, 9], routing([[6, 6], [6, 6]])); // dense: ignored
    a.onStepRouting(2, [7, 9], routing([[2, 4], [4, 6]]));
    assert.equal(a.tokenIdsSeen, 2);
    assert.deepEqual(a.predict([7]).experts, [[1, 3], [2, 4]], 'one entry per sparse layer; equal votes by id');
    assert.deepEqual(a.predict([9]).experts, [[0, 5], [4, 6]]);
  });

  test("a token id's latest routing replaces the earlier one", () => {
    const a = new ExpertAffinity(SHAPE);
    a.onStepRouting(0, [7], routing([[3, 1]]));
    a.onStepRouting(0, [7], routing([[5, 6]]));
    assert.deepEqual(a.predict([7]).experts[0], [5, 6]);
  });

  test("a prompt's tokens vote: most voted first, ties to the lower id, at most top_k x PREDICTED_PER_TOP_K per layer", () => {
    const a = new ExpertAffinity(SHAPE);
    // Layer 0: expert 7 has 3 votes, 2 has 2, the rest 1 each.
    a.onStepRouting(0, [10, 11, 12, 13, 14], routing([[7, 2], [7, 2], [7, 0], [1, 3], [4, 5]]));
    a.onStepRouting(2, [10, 11, 12, 13, 14], routing([[0, 1], [0, 1], [0, 1], [0, 1], [0, 1]]));
    const p = a.predict([10, 11, 12, 13, 14]);
    assert.equal(PREDICTED_PER_TOP_K * SHAPE.topK, 4);
    assert.deepEqual(p.experts, [[7, 2, 0, 1], [0, 1]]);
    // A token repeated in the prompt votes each time it appears.
    assert.deepEqual(a.predict([13, 13, 13, 10]).experts[0]?.slice(0, 2), [1, 3]);
  });

  test('scores the share of predicted experts resident now, and an unknown prompt by the cache\'s resident share', () => {
    const a = new ExpertAffinity(SHAPE);
    a.onStepRouting(0, [7], routing([[3, 1]]));
    a.onStepRouting(2, [7], routing([[2, 4]]));
    const p = a.predict([7]);
    assert.equal(a.score(p, residency([])), 0);
    assert.equal(a.score(p, residency(['0:3', '2:4', '2:3'])), 0.5, '0:3 and 2:4 of the four predicted; 2:3 was not predicted');
    assert.equal(a.score(p, residency(['0:1', '0:3', '2:2', '2:4'])), 1);
    assert.equal(a.score(a.predict([99]), residency(['0:3'], 0.25)), 0.25, 'nothing known about token 99');
  });

  test('keeps a prediction until the table learns one of the token ids it lacked', () => {
    const a = new ExpertAffinity(SHAPE);
    a.onStepRouting(0, [7], routing([[3, 1]]));
    a.onStepRouting(2, [7], routing([[2, 4]]));
    const first = a.predict([7, 8]);
    assert.deepEqual(first.unknownTokenIds, [8]);
    a.onStepRouting(0, [7], routing([[5, 6]]));
    assert.equal(a.predict([7, 8], first), first, 'token 7 was relearned, but it was known already');
    a.onStepRouting(0, [8], routing([[0, 2]]));
    a.onStepRouting(2, [8], routing([[0, 2]]));
    const second = a.predict([7, 8], first);
    assert.notEqual(second, first);
    assert.deepEqual(second.unknownTokenIds, []);
    assert.deepEqual(second.experts, [[0, 2, 5, 6], [2, 0, 4]]);
  });

  test('grows past its first rows without losing what it learned, and holds expert ids beyond 255', () => {
    const shape: AffinityShape = { numLayers: 1, numExperts: 300, topK: 1, sparseLayers: [true] };
    const a = new ExpertAffinity(shape);
    const ids = Array.from({ length: 3000 }, (_, i) => i * 7);
    a.onStepRouting(0, ids, routing(ids.map((_, i) => [i % 300])));
    assert.equal(a.tokenIdsSeen, 3000);
    for (const i of [0, 1023, 1024, 2999]) assert.deepEqual(a.predict([ids[i] as number]).experts, [[i % 300]], `token ${ids[i]}`);
  });

  test('refuses a routing whose rows are not the tokens given', () => {
    const a = new ExpertAffinity(SHAPE);
    assert.throws(() => a.onStepRouting(0, [1, 2, 3], routing([[0, 1]])), RangeError);
  });
});
