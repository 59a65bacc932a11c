// Comparing the engine with a reference: logits, router top-k sets per layer and position, greedy tokens.
import assert from 'node:assert/strict';
import type { MoeModel } from '../../src/engine/moe-model.js';
import { argmax } from '../reference/reference-forward.js';

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'compared arrays differ in length');
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

const asSet = (experts: readonly number[]): string => [...experts].sort((x, y) => x - y).join(',');

export function assertRoutesEqual(actual: readonly (readonly (readonly number[])[] | null)[], expected: readonly (readonly (readonly number[])[] | null)[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: number of layers`);
  expected.forEach((layer, l) => {
    const got = actual[l];
    if (layer === null || got === null || got === undefined) {
      assert.equal(got ?? null, layer, `${what}: layer ${l} is sparse in one and dense in the other`);
      return;
    }
    assert.equal(got.length, layer.length, `${what}: layer ${l} positions`);
    layer.forEach((experts, t) => assert.equal(asSet(got[t]!), asSet(experts), `${what}: top-k experts at layer ${l}, position ${t}`));
  });
}

/** The engine's logits (every position) and routes for `ids`, then its greedy continuation of `steps` tokens via the KV cache. */
export async function runEngine(model: MoeModel, ids: readonly number[], steps: number): Promise<{ logits: Float32Array; routes: (number[][] | null)[]; greedy: number[] }> {
  const V = model.spec.vocabSize;
  const routes: (number[][] | null)[] = model.spec.sparseLayers.map(() => null);
  using kv = model.newSequence();
  const logits = await model.forward.step(kv, ids, 'all', {
    onRouting: ({ layer, routing: r }) => {
      routes[layer] = Array.from({ length: r.tokens }, (_, t) => [...r.experts.subarray(t * r.topK, (t + 1) * r.topK)]);
    },
  });
  const greedy: number[] = [];
  let last = logits.subarray((ids.length - 1) * V);
  for (let i = 0; i < steps; i++) {
    const next = argmax(last);
    greedy.push(next);
    if (i + 1 < steps) last = await model.forward.step(kv, [next], 'last');
  }
  return { logits, routes, greedy };
}
