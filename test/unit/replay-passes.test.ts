// The replay groups trace lines back into the forward passes the server ran (continuous batching), and
// ranks a batch's lookahead as the forward pass does. No model: hand-made traces.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Trace } from '../../src/experts/replay/read-trace.js';
import { simulate } from '../../src/experts/replay/simulate.js';
import { batchPrediction, forwardPasses, traceAccesses } from '../../src/experts/replay/trace-accesses.js';
import type { TraceHeader, TraceLine } from '../../src/experts/trace-format.js';

const EXPERT_BYTES = 100;

function trace(lines: readonly TraceLine[]): Trace {
  const header: TraceHeader = { trace: 'moe-serve routing trace', version: 1, model: 'test-moe', num_layers: 2, num_experts: 8, top_k: 2, expert_bytes: EXPERT_BYTES, sparse_layers: [0, 1] };
  return { source: 'test', header, lines };
}

const line = (request: number, step: number, layer: number, experts: number[][], lookahead: number[][] = []): TraceLine => ({ request, step, layer, experts, lookahead });

// Pass 1: requests 0 and 1 together; pass 2: request 0 alone; pass 3: requests 0 and 1 again.
const BATCHED = [
  line(0, 0, 0, [[1, 2]], [[3, 4]]),
  line(1, 0, 0, [[2, 5]], [[4, 6]]),
  line(0, 0, 1, [[3, 4]]),
  line(1, 0, 1, [[4, 6]]),
  line(0, 1, 0, [[1, 2]]),
  line(0, 1, 1, [[3, 7]]),
  line(0, 2, 0, [[1, 2]]),
  line(1, 1, 0, [[1, 2]]),
  line(0, 2, 1, [[3, 4]]),
  line(1, 1, 1, [[3, 4]]),
];

describe('forwardPasses', () => {
  test('a pass ends where the layer goes down or a request comes again at the same layer', () => {
    const passes = forwardPasses(BATCHED);
    assert.deepEqual(
      passes.map((p) => p.map((layerLines) => layerLines.map((l) => `${l.request}@${l.layer}`))),
      [
        [['0@0', '1@0'], ['0@1', '1@1']],
        [['0@0'], ['0@1']],
        [['0@0', '1@0'], ['0@1', '1@1']],
      ],
    );
    // One sparse layer: the same request at the same layer starts a new pass.
    assert.equal(forwardPasses([line(0, 0, 0, [[1, 2]]), line(0, 1, 0, [[1, 2]])]).length, 2);
  });

  test("a pass's experts at a layer are used once, however many of its requests use them", () => {
    const accesses = traceAccesses(trace(BATCHED));
    assert.deepEqual(
      accesses.map((a) => a.used),
      [[1, 2, 5], [11, 12, 14], [1, 2], [11, 15], [1, 2], [11, 12]],
    );
    const r = simulate(trace(BATCHED), { policy: 'lru', budgetBytes: 16 * EXPERT_BYTES, prefetchDepth: 0 });
    assert.deepEqual([r.accesses, r.misses, r.hits], [14, 7, 7]);
  });
});

describe('batchPrediction', () => {
  test("one request's lookahead is the pass's, in its order", () => {
    assert.deepEqual(batchPrediction([{ tokens: 5, ranked: [7, 2, 4] }], 2), { ids: [7, 2, 4], exact: true });
  });

  test('one-token requests vote once for each expert they name: most votes first, ties to the lower id', () => {
    const r = batchPrediction(
      [
        { tokens: 1, ranked: [3, 6] },
        { tokens: 1, ranked: [1, 6] },
        { tokens: 1, ranked: [3, 5] },
      ],
      2,
    );
    assert.deepEqual(r, { ids: [3, 6, 1, 5], exact: true });
  });

  test('a prompt naming neither top-k nor tokens x top-k experts has unknown votes: estimated, and said so', () => {
    const r = batchPrediction(
      [
        { tokens: 3, ranked: [4, 1, 2] },
        { tokens: 1, ranked: [1, 6] },
      ],
      2,
    );
    assert.equal(r.exact, false);
    assert.deepEqual(new Set(r.ids), new Set([4, 1, 2, 6]));
    // Where a prompt's votes are known (all its tokens named the same top-k), the order is exact.
    assert.deepEqual(
      batchPrediction(
        [
          { tokens: 3, ranked: [4, 5] },
          { tokens: 1, ranked: [1, 5] },
        ],
        2,
      ),
      { ids: [5, 4, 1], exact: true },
    );
  });

  test('the simulator counts the prefetches it had to estimate', () => {
    const lines = [line(0, 0, 0, [[1, 2], [3, 4], [1, 5]], [[1, 2, 3]]), line(1, 0, 0, [[1, 2]], [[1, 6]]), line(0, 0, 1, [[1, 2], [1, 2], [3, 4]]), line(1, 0, 1, [[1, 6]])];
    assert.equal(simulate(trace(lines), { policy: 'lru', budgetBytes: 8 * EXPERT_BYTES, prefetchDepth: 1 }).estimatedPrefetches, 1);
    assert.equal(simulate(trace(lines.filter((l) => l.request === 0)), { policy: 'lru', budgetBytes: 8 * EXPERT_BYTES, prefetchDepth: 1 }).estimatedPrefetches, 0);
  });
});
