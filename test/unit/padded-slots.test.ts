// Routed-experts runs on GPU providers pad their slot count so that few sessions are ever compiled.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { paddedSlots } from '../../src/engine/expert-routes.js';

test('a run of n experts takes the next power of two of slots, at most the run limit and never fewer than n', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 8, 9, 17, 32].map((n) => paddedSlots(n, 32)), [1, 2, 4, 4, 8, 8, 16, 32, 32]);
  // A limit that is not a power of two is itself a slot count.
  assert.deepEqual([8, 9, 12].map((n) => paddedSlots(n, 12)), [8, 12, 12]);
  const counts = new Set(Array.from({ length: 32 }, (_, i) => paddedSlots(i + 1, 32)));
  assert.deepEqual([...counts], [1, 2, 4, 8, 16, 32]);
});
