import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { createRng } from '../../src/engine/sampler.js';
import { POLICY_NAMES } from '../../src/experts/policies/index.js';
import { belady } from '../../src/experts/replay/belady.js';
import { hitRatioChartSvg } from '../../src/experts/replay/hit-ratio-chart.js';
import { parseTrace, TraceFormatError, type Trace } from '../../src/experts/replay/read-trace.js';
import { loadsAvoided, simulate } from '../../src/experts/replay/simulate.js';
import type { TraceHeader, TraceLine } from '../../src/experts/trace-format.js';
import { CLI_PATH } from '../helpers/paths.js';

const EXPERT_BYTES = 100;

function header(o: Partial<TraceHeader> = {}): TraceHeader {
  return {
    trace: 'moe-serve routing trace',
    version: 1,
    model: 'test-moe',
    num_layers: 1,
    num_experts: 8,
    top_k: 1,
    expert_bytes: EXPERT_BYTES,
    sparse_layers: [0],
    ...o,
  };
}

/** One layer, one token per step using expert `e`: an ordinary page-reference string. */
function sequenceTrace(experts: readonly number[]): Trace {
  const lines = experts.map((e, step) => ({ request: 0, step, layer: 0, experts: [[e]], lookahead: [] }));
  return { source: 'test', header: header(), lines };
}

/**
 * Decode steps (plus a prompt step of `promptTokens` tokens) over all-sparse layers, experts drawn with
 * Zipf-like popularity (a different ranking per layer); lookahead[0] names the next layer's true experts,
 * each swapped for a random one with probability 1 - `lookaheadAccuracy`.
 */
function zipfTrace(seed: number, o: { layers: number; experts: number; topK: number; steps: number; promptTokens: number; lookaheadAccuracy: number }): Trace {
  const rng = createRng(seed);
  const random = () => rng.next();
  const ranking = Array.from({ length: o.layers }, () => [...Array(o.experts).keys()].sort(() => random() - 0.5));
  const weights = Array.from({ length: o.experts }, (_, r) => 1 / (r + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const draw = (layer: number) => {
    const chosen = new Set<number>();
    while (chosen.size < o.topK) {
      let x = random() * total;
      let r = 0;
      while (r < o.experts - 1 && x >= weights[r]!) x -= weights[r++]!;
      chosen.add(ranking[layer]![r]!);
    }
    return [...chosen];
  };
  const lines: TraceLine[] = [];
  for (let step = 0; step < o.steps; step++) {
    const tokens = step === 0 ? o.promptTokens : 1;
    const routing = Array.from({ length: o.layers }, (_, layer) => Array.from({ length: tokens }, () => draw(layer)));
    routing.forEach((experts, layer) => {
      const next = routing[layer + 1];
      const predicted = next ? [...new Set(next.flat().map((e) => (random() < o.lookaheadAccuracy ? e : Math.floor(random() * o.experts))))] : [];
      lines.push({ request: 0, step, layer, experts, lookahead: next ? [predicted] : [] });
    });
  }
  const layers = [...Array(o.layers).keys()];
  return { source: `zipf-${seed}`, header: header({ num_layers: o.layers, num_experts: o.experts, top_k: o.topK, sparse_layers: layers }), lines };
}

function traceFileText(trace: Trace): string {
  return [trace.header, ...trace.lines].map((l) => JSON.stringify(l)).join('\n') + '\n';
}

// The textbook reference string (Silberschatz, Operating System Concepts), with 3 frames:
// LRU takes 12 faults, OPT 9.
const TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];

describe('simulate', () => {
  test('LRU on the textbook reference string with 3 experts of room: 12 misses, 8 hits', () => {
    const r = simulate(sequenceTrace(TEXTBOOK), { policy: 'lru', budgetBytes: 3 * EXPERT_BYTES, prefetchDepth: 0 });
    assert.deepEqual([r.accesses, r.hits, r.misses, r.evictions], [20, 8, 12, 9]);
    assert.equal(r.hitRatio, 0.4);
    assert.equal(r.prefetchRecall, null);
  });

  test('LFU keeps the frequently used expert that LRU evicts (a a b c a b c b a, room for 2)', () => {
    // By hand: LFU evicts b at c (b used once, a twice), so a hits at t4 and t8; LRU evicts a at c.
    const seq = [1, 1, 2, 3, 1, 2, 3, 2, 1];
    const lfu = simulate(sequenceTrace(seq), { policy: 'lfu', budgetBytes: 2 * EXPERT_BYTES, prefetchDepth: 0 });
    const lru = simulate(sequenceTrace(seq), { policy: 'lru', budgetBytes: 2 * EXPERT_BYTES, prefetchDepth: 0 });
    assert.deepEqual([lfu.hits, lfu.misses, lfu.evictions], [3, 6, 4]);
    assert.deepEqual([lru.hits, lru.misses, lru.evictions], [2, 7, 5]);
  });

  test("'none' never hits, whatever the budget and prefetch depth", () => {
    const trace = zipfTrace(1, { layers: 3, experts: 8, topK: 2, steps: 50, promptTokens: 4, lookaheadAccuracy: 1 });
    for (const prefetchDepth of [0, 1]) {
      const r = simulate(trace, { policy: 'none', budgetBytes: 24 * EXPERT_BYTES, prefetchDepth });
      assert.equal(r.hits, 0);
      assert.equal(r.prefetchIssued, 0);
      assert.equal(r.misses, r.accesses);
    }
  });

  test('a budget of every expert leaves only compulsory misses (one per distinct expert); all and belady miss nothing', () => {
    const trace = zipfTrace(2, { layers: 3, experts: 8, topK: 2, steps: 80, promptTokens: 3, lookaheadAccuracy: 1 });
    const distinct = new Set(trace.lines.flatMap((l) => l.experts.flat().map((e) => l.layer * 8 + e))).size;
    const budgetBytes = 24 * EXPERT_BYTES;
    for (const policy of ['lru', 'lfu'] as const) {
      const r = simulate(trace, { policy, budgetBytes, prefetchDepth: 0 });
      assert.equal(r.misses, distinct, policy);
      assert.equal(r.evictions, 0, policy);
    }
    assert.equal(simulate(trace, { policy: 'all', budgetBytes, prefetchDepth: 0 }).misses, 0);
    assert.equal(belady(trace, budgetBytes).misses, 0);
  });

  test('an expert the current line uses is never evicted to make room for another of its experts', () => {
    // Room for 2; 5 then 7 resident, 5 least recent. The line {1, 5} misses 1 first: LRU alone would
    // evict 5, but 5 is in use by this line, so 7 goes and 5 hits.
    const trace: Trace = {
      source: 'test',
      header: header(),
      lines: [
        { request: 0, step: 0, layer: 0, experts: [[5]], lookahead: [] },
        { request: 0, step: 1, layer: 0, experts: [[7]], lookahead: [] },
        { request: 0, step: 2, layer: 0, experts: [[1], [5]], lookahead: [] },
        { request: 0, step: 3, layer: 0, experts: [[7]], lookahead: [] },
      ],
    };
    const r = simulate(trace, { policy: 'lru', budgetBytes: 2 * EXPERT_BYTES, prefetchDepth: 0 });
    assert.equal(r.hits, 1);
    assert.equal(r.misses, 4);
  });

  test('a perfect lookahead raises the hit ratio, and its prefetches are used', () => {
    const trace = zipfTrace(3, { layers: 4, experts: 16, topK: 2, steps: 200, promptTokens: 1, lookaheadAccuracy: 1 });
    const budgetBytes = 16 * EXPERT_BYTES; // a quarter of the 64 experts
    const demand = simulate(trace, { policy: 'lru', budgetBytes, prefetchDepth: 0 });
    const prefetched = simulate(trace, { policy: 'lru', budgetBytes, prefetchDepth: 1 });
    assert.ok(prefetched.hitRatio > demand.hitRatio + 0.2, `${prefetched.hitRatio} vs ${demand.hitRatio}`);
    assert.ok(prefetched.prefetchUsed > 0);
    assert.ok(prefetched.prefetchUsed + prefetched.prefetchWasted <= prefetched.prefetchIssued);
    // Every layer but the first of each step was predicted exactly (all lines use 2 experts).
    assert.equal(prefetched.prefetchRecall, 3 / 4);
  });
});

describe('belady', () => {
  test("on the textbook reference string: OPT's 9 faults, less the 3 compulsory ones by starting warm", () => {
    // By hand: 7, 0, 1 start resident. 2 evicts 7 (used last); 3 evicts 1; 4 evicts 0 (it must take room
    // for its use, and 0 is needed last); 0 evicts 4; 1 evicts 3; 7 evicts 2. Six misses, each evicting.
    const r = belady(sequenceTrace(TEXTBOOK), 3 * EXPERT_BYTES);
    assert.deepEqual([r.accesses, r.hits, r.misses, r.evictions], [20, 14, 6, 6]);
  });

  test('avoids at least as many loads as every policy, prefetching or not, on random traces with Zipf-like popularity', () => {
    let prefetchHitsAboveBound = 0;
    for (let seed = 10; seed < 30; seed++) {
      const trace = zipfTrace(seed, { layers: 3, experts: 16, topK: 2 + (seed % 3), steps: 120, promptTokens: seed % 2 === 0 ? 12 : 1, lookaheadAccuracy: 0.7 });
      for (const experts of [2, 5, 12, 24, 48]) {
        const budgetBytes = experts * EXPERT_BYTES;
        const bound = belady(trace, budgetBytes).hitRatio;
        // 'all' is left out: it ignores the budget.
        for (const policy of POLICY_NAMES.filter((p) => p !== 'all')) {
          for (const prefetchDepth of [0, 1, 2]) {
            const r = simulate(trace, { policy, budgetBytes, prefetchDepth });
            const avoided = loadsAvoided(r);
            assert.ok(bound >= avoided - 1e-12, `seed ${seed}, ${experts} experts, ${policy} @ ${prefetchDepth}: belady ${bound} < loads avoided ${avoided}`);
            if (r.hitRatio > bound) prefetchHitsAboveBound++;
          }
        }
      }
    }
    // Hit ratios with prefetching do pass the bound (a prefetched hit was a load), which is why the bound is on loads.
    assert.ok(prefetchHitsAboveBound > 0);
  });
});

describe('parseTrace', () => {
  const good = traceFileText(sequenceTrace([1, 2]));

  test('reads the header and every line, filling in an empty lookahead', async () => {
    const t = await parseTrace(good.replace(',"lookahead":[]', '').split('\n'), 'mem');
    assert.equal(t.header.model, 'test-moe');
    assert.deepEqual(
      t.lines.map((l) => l.experts),
      [[[1]], [[2]]],
    );
    assert.deepEqual(t.lines[0]?.lookahead, []);
  });

  test('names the file, line and problem for a malformed line', async () => {
    const lines = good.split('\n');
    lines[2] = '{"request":0,"step":1,"layer":0,"experts":[[1, -2]]}';
    await assert.rejects(parseTrace(lines, 'my.trace'), (err: unknown) => {
      assert.ok(err instanceof TraceFormatError);
      assert.equal(err.lineNumber, 3);
      assert.match(err.message, /^my\.trace:3: bad routing line at experts\.0\.1/);
      return true;
    });
  });

  test('rejects experts and layers the header does not have, and a missing header', async () => {
    const lines = good.split('\n');
    await assert.rejects(parseTrace([lines[0]!, '{"request":0,"step":0,"layer":0,"experts":[[9]]}'], 'f'), /f:2: experts\[0\] has expert 9, but the model has 8/);
    await assert.rejects(parseTrace([lines[0]!, '{"request":0,"step":0,"layer":3,"experts":[[1]]}'], 'f'), /f:2: layer 3 is not one of the header's sparse_layers/);
    await assert.rejects(parseTrace([lines[1]!], 'f'), /f:1: bad header/);
    await assert.rejects(parseTrace(['{not json'], 'f'), /f:1: not JSON/);
    await assert.rejects(parseTrace([], 'f'), /empty trace/);
  });
});

describe('hitRatioChartSvg', () => {
  test('draws one path per line, depth 1 dashed, and is deterministic', () => {
    const points = [
      { budgetPercent: 10, hitRatio: 0.2 },
      { budgetPercent: 50, hitRatio: 0.7 },
    ];
    const lines = [
      { kind: 'policy', policy: 'lru', prefetchDepth: 0, points },
      { kind: 'policy', policy: 'lru', prefetchDepth: 1, points },
      { kind: 'belady', points },
    ] as const;
    const svg = hitRatioChartSvg('a <model> & co', lines);
    assert.equal(svg, hitRatioChartSvg('a <model> & co', lines));
    assert.match(svg, /^<svg /);
    assert.equal(svg.match(/<path /g)?.length, 3);
    assert.equal(svg.match(/stroke-dasharray/g)?.length, 2); // the depth-1 path and its legend sample
    assert.match(svg, /a &lt;model&gt; &amp; co/);
  });
});

describe('moe-serve replay', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-replay-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const cli = (...args: string[]) => spawnSync(process.execPath, [CLI_PATH, 'replay', ...args], { encoding: 'utf8' });

  test('prints JSON lines and a table, and writes a well-formed SVG chart next to the trace', () => {
    const tracePath = join(dir, 'small.jsonl');
    writeFileSync(tracePath, traceFileText(zipfTrace(4, { layers: 3, experts: 8, topK: 2, steps: 40, promptTokens: 5, lookaheadAccuracy: 0.8 })));
    const r = cli('--trace', tracePath, '--budgets', '25%,50%,100%', '--json');
    assert.equal(r.status, 0, r.stderr);
    const json = r.stdout.split('\n').filter((l) => l.startsWith('{'));
    assert.equal(json.length, POLICY_NAMES.length * 2 * 3 + 3);
    const row = JSON.parse(json[0]!) as Record<string, unknown>;
    assert.deepEqual([row.policy, row.prefetch_depth, row.budget, row.budget_bytes], ['lru', 0, '25%', 600]);
    assert.match(r.stdout, /\| policy @ prefetch depth \| 25% \| 50% \| 100% \|/);
    assert.match(r.stdout, /\| lru @ 1 \| [\d.]+% \| [\d.]+% \| [\d.]+% \|/);
    assert.match(r.stdout, /\| belady \| [\d.]+% \| [\d.]+% \| 100\.0% \|/);
    assert.match(r.stdout, new RegExp(`chart written to ${tracePath.replace(/[.\\]/g, '\\$&')}\\.svg`));
    const svg = readFileSync(`${tracePath}.svg`, 'utf8');
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.match(svg, /<\/svg>\n$/);
    assert.equal(svg.match(/<path /g)?.length, POLICY_NAMES.length * 2 + 1);
    assert.equal(svg.match(/<text/g)?.length, svg.match(/<\/text>/g)?.length);
  });

  test('reports a malformed trace line with its file and line number', () => {
    const tracePath = join(dir, 'bad.jsonl');
    writeFileSync(tracePath, `${JSON.stringify(header())}\n{"request":0,"step":0,"layer":0,"experts":[[1]]}\n{"request":0,"step":"one","layer":0,"experts":[[1]]}\n`);
    const r = cli('--trace', tracePath);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`${tracePath.replace(/[.\\]/g, '\\$&')}:3: bad routing line at step`));
  });

  test('rejects a bad --budgets value with usage help', () => {
    const tracePath = join(dir, 'ok.jsonl');
    writeFileSync(tracePath, traceFileText(sequenceTrace([1, 2, 3])));
    for (const [budgets, message] of [
      ['10%,lots', /--budgets: expected a percentage like 25% or a size like 64mb .*\(got "lots"\)/],
      ['150%', /--budgets: a percentage budget must be at most 100%/],
      ['1%', /--budgets: 1% is 8 bytes, less than one expert \(100 bytes\)/],
    ] as const) {
      const r = cli('--trace', tracePath, '--budgets', budgets);
      assert.equal(r.status, 2, budgets);
      assert.match(r.stderr, message);
      assert.match(r.stderr, /Usage: moe-serve replay/);
    }
  });
});
