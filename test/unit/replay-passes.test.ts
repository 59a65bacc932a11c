// The replay groups trace lines back into the forward passes the server ran (continuous batching), and
// ranks a batch's lookahead as the forward pass does. No model: hand-made traces.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { countVotes, sumVotes } from '../../src/experts/lookahead-votes.js';
import { parseTrace, type Trace } from '../../src/experts/replay/read-trace.js';
import { simulate } from '../../src/experts/replay/simulate.js';
import { batchPrediction, forwardPasses, traceAccesses } from '../../src/experts/replay/trace-accesses.js';
import type { TraceHeader, TraceLine } from '../../src/experts/trace-format.js';
import { seededRandom } from '../helpers/seeded-random.js';

const EXPERT_BYTES = 100;

function trace(lines: readonly TraceLine[], sparseLayers = [0, 1]): Trace {
  const header: TraceHeader = { trace: 'moe-serve routing trace', version: 1, model: 'test-moe', num_layers: 2, num_experts: 8, top_k: 2, expert_bytes: EXPERT_BYTES, sparse_layers: sparseLayers };
  return { source: 'test', header, lines };
}

const line = (request: number, step: number, layer: number, experts: number[][], lookahead: number[][] = []): TraceLine => ({ request, step, layer, experts, lookahead });
/** A line as the server writes it now: with its pass number, and its lookahead's votes. */
const passLine = (pass: number, request: number, step: number, layer: number, experts: number[][], lookahead: number[][] = [], votes: number[][] = []): TraceLine => ({
  ...line(request, step, layer, experts, lookahead),
  pass,
  lookahead_votes: votes,
});
const passShape = (lines: readonly TraceLine[]) => forwardPasses(lines).map((p) => p.map((layerLines) => layerLines.map((l) => `${l.request}@${l.layer}`)));

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

  test('lines that carry pass numbers are grouped by them: exact with one sparse layer, where inference is not', () => {
    // Request 0 alone in pass 0, request 1 alone in pass 1, both in pass 2: one sparse layer (layer 1).
    const lines = [passLine(0, 0, 0, 1, [[1, 2]]), passLine(1, 1, 0, 1, [[2, 5]]), passLine(2, 0, 1, 1, [[1, 2]]), passLine(2, 1, 1, 1, [[3, 4]])];
    assert.deepEqual(passShape(lines), [[['0@1']], [['1@1']], [['0@1', '1@1']]]);
    // Without the numbers, request 1 looks batched with request 0's first pass.
    const unnumbered = lines.map(({ pass: _pass, ...rest }) => rest);
    assert.deepEqual(passShape(unnumbered), [[['0@1', '1@1']], [['0@1', '1@1']]]);
    // The replay counts what the server counted: expert 2 used by two passes, not shared by one.
    const r = simulate(trace(lines, [1]), { policy: 'lru', budgetBytes: 16 * EXPERT_BYTES, prefetchDepth: 0 });
    assert.deepEqual([r.accesses, r.misses, r.hits], [8, 5, 3]);
    assert.equal(simulate(trace(unnumbered, [1]), { policy: 'lru', budgetBytes: 16 * EXPERT_BYTES, prefetchDepth: 0 }).accesses, 7);
  });

  test('numbered passes: layers ascending within a pass, passes in number order; a trace missing any number is inferred', () => {
    const numbered = BATCHED.map((l, i) => ({ ...l, pass: [0, 0, 0, 0, 1, 1, 2, 2, 2, 2][i] as number }));
    assert.deepEqual(passShape(numbered), passShape(BATCHED));
    assert.deepEqual(passShape([numbered[4], numbered[0], numbered[2], numbered[1]] as TraceLine[]), [[['0@0', '1@0'], ['0@1']], [['0@0']]]);
    // One line without a number (a trace appended to by an older server): all inferred.
    const mixed = [passLine(0, 0, 0, 0, [[1, 2]]), line(0, 1, 0, [[1, 2]]), passLine(0, 1, 0, 0, [[1, 2]])];
    assert.deepEqual(passShape(mixed), [[['0@0']], [['0@0', '1@0']]]);
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

  test("with recorded votes, a prompt's votes are added to the others' exactly, where the estimate would rank otherwise", () => {
    // A 4-token prompt, top-2: tokens {4, 1}, {4, 1}, {4, 2}, {4, 2}; and one decoding token {2, 6}.
    const prompt = { tokens: 4, ranked: [4, 1, 2] };
    const decode = { tokens: 1, ranked: [2, 6], votes: [1, 1] };
    assert.deepEqual(batchPrediction([{ ...prompt, votes: [4, 2, 2] }, decode], 2), { ids: [4, 2, 1, 6], exact: true });
    // Without them, the prompt's votes are estimated from its ranking (4, 2.7, 1.3): another order.
    assert.deepEqual(batchPrediction([prompt, decode], 2), { ids: [4, 1, 2, 6], exact: false });
  });

  test('the replay prefetches the batch order the recorded votes give, and estimates nothing', () => {
    const lines = [
      passLine(0, 0, 0, 0, [[4, 1], [4, 1], [4, 2], [4, 2]], [[4, 1, 2]], [[4, 2, 2]]),
      passLine(0, 1, 3, 0, [[2, 6]], [[2, 6]], [[1, 1]]),
      passLine(0, 0, 0, 1, [[4, 1], [4, 1], [4, 2], [4, 2]]),
      passLine(0, 1, 3, 1, [[2, 6]]),
    ];
    const [first] = traceAccesses(trace(lines));
    assert.deepEqual(first?.predicted, [[12, 10, 9, 14]]);
    assert.deepEqual(first?.predictedExact, [true]);
    assert.equal(simulate(trace(lines), { policy: 'lru', budgetBytes: 8 * EXPERT_BYTES, prefetchDepth: 1 }).estimatedPrefetches, 0);
  });

  test('the simulator counts the prefetches it had to estimate', () => {
    const lines = [line(0, 0, 0, [[1, 2], [3, 4], [1, 5]], [[1, 2, 3]]), line(1, 0, 0, [[1, 2]], [[1, 6]]), line(0, 0, 1, [[1, 2], [1, 2], [3, 4]]), line(1, 0, 1, [[1, 6]])];
    assert.equal(simulate(trace(lines), { policy: 'lru', budgetBytes: 8 * EXPERT_BYTES, prefetchDepth: 1 }).estimatedPrefetches, 1);
    assert.equal(simulate(trace(lines.filter((l) => l.request === 0)), { policy: 'lru', budgetBytes: 8 * EXPERT_BYTES, prefetchDepth: 1 }).estimatedPrefetches, 0);
  });
});

describe('lookahead votes', () => {
  test("a batch's votes summed from its sequences' rank as votes over all its tokens (what forward.ts relies on)", () => {
    const random = seededRandom(7);
    for (let trial = 0; trial < 200; trial++) {
      // Sequences of 1 to 5 tokens, each token naming 2 distinct experts of 8.
      const sequences = Array.from({ length: 1 + Math.floor(random() * 6) }, () =>
        Array.from({ length: 1 + Math.floor(random() * 5) }, () => {
          const a = Math.floor(random() * 8);
          return [a, (a + 1 + Math.floor(random() * 7)) % 8];
        }).flat(),
      );
      assert.deepEqual(sumVotes(sequences.map((s) => countVotes(s))), countVotes(sequences.flat()));
    }
  });

  test('ranks most votes first, ties to the lower id', () => {
    assert.deepEqual(countVotes([5, 3, 3, 1, 5, 7]), { experts: [3, 5, 1, 7], votes: [2, 2, 1, 1] });
  });

  test('a trace line whose votes do not line up with its lookahead is refused', async () => {
    const header = JSON.stringify(trace([]).header);
    const ok = '{"request":0,"step":0,"pass":0,"layer":0,"experts":[[1,2]],"lookahead":[[3,4]],"lookahead_votes":[[1,1]]}';
    assert.equal((await parseTrace([header, ok], 'f')).lines[0]?.pass, 0);
    await assert.rejects(parseTrace([header, ok.replace('[[1,1]]', '[[1]]')], 'f'), /f:2: lookahead_votes\[0\] has 1 counts for lookahead\[0\]'s 2 experts/);
    await assert.rejects(parseTrace([header, ok.replace('[[1,1]]', '[]')], 'f'), /f:2: lookahead_votes has 0 depths, but lookahead has 1/);
    await assert.rejects(parseTrace([header, ok.replace('[[1,1]]', '[[1,0]]')], 'f'), /f:2: bad routing line at lookahead_votes/);
  });
});
