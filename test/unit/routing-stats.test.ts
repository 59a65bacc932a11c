import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { routingStats } from '../../src/experts/routing-stats.js';
import type { TraceLine } from '../../src/experts/trace-format.js';
import { seededRandom } from '../helpers/seeded-random.js';

const header = (E: number, k: number, layers: number[]) => ({ num_experts: E, top_k: k, sparse_layers: layers });
const line = (request: number, step: number, layer: number, experts: number[][], lookahead: number[][] = []): TraceLine => ({ request, step, layer, experts, lookahead });

/** k distinct experts drawn uniformly from E. */
function uniformPick(random: () => number, E: number, k: number): number[] {
  const chosen = new Set<number>();
  while (chosen.size < k) chosen.add(Math.floor(random() * E));
  return [...chosen];
}

describe('routing statistics', () => {
  it('gives the known answers of a hand-made trace', () => {
    // E = 4, k = 2, layers 0 and 1; one request: a two-token prompt then one decode step.
    const s = routingStats(header(4, 2, [0, 1]), [
      line(0, 0, 0, [[0, 1], [0, 2]], [[1, 2, 3]]),
      line(0, 0, 1, [[1, 2], [1, 3]]),
      line(0, 1, 0, [[0, 1]], [[1, 2]]),
      line(0, 1, 1, [[1, 2]]),
    ]);
    assert.equal(s.independent, 0.5);
    assert.equal(s.tokenLayers, 6);
    // layer 0: expert 0 in 3 of 6 slots, 1 in 2, 2 in 1; the top 10% of 4 experts is one expert.
    assert.equal(s.topExperts, 1);
    // layer 1 has the same shares (expert 1: 3, 2: 2, 3: 1)
    const h = -(0.5 * Math.log2(0.5) + (1 / 3) * Math.log2(1 / 3) + (1 / 6) * Math.log2(1 / 6)) / 2;
    assert.ok(Math.abs(s.entropyMean - h) < 1e-12);
    assert.equal(s.topShareMean, 0.5);
    // layer 0: {0,1}->{0,2} 1/2, {0,2}->{0,1} 1/2; layer 1: {1,2}->{1,3} 1/2, {1,3}->{1,2} 1/2
    assert.equal(s.temporalReuse, 0.5);
    // only the decode step counts: predicted {1,2}, used {1,2}
    assert.equal(s.lookaheadRecall, 1);
    // i=0: tokens {1,2},{1,3},{1,2} -> j=1 always; i=1: {1,2},{1,2} -> 1; i=2: {1,3} -> 1
    assert.equal(s.coactivation, 1);
    assert.equal(s.coactivationBaseline, 1);
  });

  it('shows no skew, reuse or cross-layer lift for independent uniform routing', () => {
    const random = seededRandom(7);
    const E = 32;
    const k = 4;
    const lines: TraceLine[] = [];
    for (let request = 0; request < 8; request++) {
      for (let step = 0; step < 200; step++) {
        for (const layer of [0, 1, 2]) lines.push(line(request, step, layer, [uniformPick(random, E, k)], [uniformPick(random, E, k)]));
      }
    }
    const s = routingStats(header(E, k, [0, 1, 2]), lines);
    assert.ok(s.entropyMean > 0.99, `entropy ${s.entropyMean}`);
    assert.ok(s.topShareMean < 0.11, `top share ${s.topShareMean}`);
    for (const [name, v] of [
      ['temporal reuse', s.temporalReuse],
      ['lookahead recall', s.lookaheadRecall],
    ] as const) {
      assert.ok(v !== null && Math.abs(v - k / E) < 0.02, `${name} ${v}`);
    }
    // The thresholds the synthetic model must pass are well above what this routing reaches.
    assert.ok((s.temporalReuse ?? 1) < 2 * s.independent);
    assert.ok((s.lookaheadRecall ?? 1) < 2 * s.independent);
  });
});
