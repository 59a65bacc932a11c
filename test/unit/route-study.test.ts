// The route study: requests of a routing trace re-batched across simulated replicas, each with the server's
// residency code, under a routing rule. No model: hand-made traces whose answers are known by hand.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { countVotes } from '../../src/experts/lookahead-votes.js';
import type { PolicyName } from '../../src/experts/policies/index.js';
import type { Trace } from '../../src/experts/replay/read-trace.js';
import { ROUTING_RULES, prefixBlockKeys, type RoutingRule } from '../../src/experts/replay/request-routing.js';
import { simulateRoutes, traceRequests, type RouteStudyOptions } from '../../src/experts/replay/route-study.js';
import { simulate } from '../../src/experts/replay/simulate.js';
import type { TraceHeader, TraceLine } from '../../src/experts/trace-format.js';
import { CLI_PATH } from '../helpers/paths.js';
import { seededRandom } from '../helpers/seeded-random.js';

// Two sparse layers of 8 experts, top-2, one byte each: a budget of 4 bytes holds one topic (2 experts at each layer).
const HEADER: TraceHeader = { trace: 'moe-serve routing trace', version: 1, model: 'test-moe', num_layers: 2, num_experts: 8, top_k: 2, expert_bytes: 1, sparse_layers: [0, 1] };
const TOPIC_A = [0, 1];
const TOPIC_B = [4, 5];

interface RequestSpec {
  readonly prompt: readonly number[];
  /** The experts every token of every step uses, at both layers. */
  readonly experts: readonly number[];
  /** Steps: the prompt, then one per further token. */
  readonly steps: number;
}

/** A trace of these requests, recorded one at a time (one request per pass), prompt_tokens on each first line. */
function traceOf(specs: readonly RequestSpec[]): Trace {
  const lines: TraceLine[] = [];
  let pass = 0;
  specs.forEach((spec, request) => {
    for (let step = 0; step < spec.steps; step++, pass++) {
      for (const layer of HEADER.sparse_layers) {
        const tokens = step === 0 ? spec.prompt.length : 1;
        lines.push({
          request,
          step,
          pass,
          layer,
          experts: Array.from({ length: tokens }, () => [...spec.experts]),
          lookahead: [],
          ...(step === 0 && layer === 0 ? { prompt_tokens: [...spec.prompt] } : {}),
        });
      }
    }
  });
  return { source: 'test', header: HEADER, lines };
}

const BASE = { replicas: 2, clients: 2, maxSeqs: 16, loadGuard: 100, prefixBlockTokens: 2, policy: 'lru', budgetBytes: 4, prefetchDepth: 0 } as const;

function run(trace: Trace, o: Partial<RouteStudyOptions> & { rule: RoutingRule }) {
  const served = new Map<number, Set<number>>(); // request id -> replicas that ran it
  const result = simulateRoutes(trace, {
    ...BASE,
    requests: traceRequests(trace).length,
    ...o,
    onPass: (replica, lines) => {
      for (const l of lines) {
        let set = served.get(l.request);
        if (!set) served.set(l.request, (set = new Set()));
        set.add(replica);
      }
    },
  });
  const replicaOf = (id: number) => [...(served.get(id) ?? [])];
  return { result, replicaOf };
}

describe('routing rules', () => {
  // Topics in the order A B B A A B B A: two clients send them two by two, so round-robin over two
  // replicas gives each replica A, B, A, B in turn, and each request finds the other topic resident.
  const ABBA = traceOf(Array.from({ length: 8 }, (_, i) => ({ prompt: [i, i], experts: [0, 3].includes(i % 4) ? TOPIC_A : TOPIC_B, steps: 2 })));

  test('expert affinity keeps each topic on one replica: a far higher hit ratio than round-robin', () => {
    const rr = run(ABBA, { rule: 'round-robin' }).result;
    const affinity = run(ABBA, { rule: 'expert-affinity' });
    // Round-robin: every request loads its topic's 4 experts at its prompt and hits them at its second step.
    assert.equal(rr.cache.accesses, 8 * 2 * 2 * 2);
    assert.equal(rr.cache.misses, 8 * 4);
    assert.equal(rr.cache.hitRatio, 0.5);
    // Affinity: only the first A and the first B load anything.
    assert.equal(affinity.result.cache.misses, 2 * 4);
    assert.equal(affinity.result.cache.hitRatio, 1 - 8 / 64);
    const topicA = [0, 3, 4, 7].map(affinity.replicaOf);
    const topicB = [1, 2, 5, 6].map(affinity.replicaOf);
    assert.deepEqual(topicA, [[0], [0], [0], [0]], 'every A on the replica that took the first A');
    assert.deepEqual(topicB, [[1], [1], [1], [1]]);
    assert.equal(affinity.result.bytesMovedPerToken, (8 * HEADER.expert_bytes) / 16, 'loads x expert bytes / tokens (2 per request)');
  });

  test('round-robin sends requests to each replica in turn, whatever their queues', () => {
    const trace = traceOf(Array.from({ length: 6 }, (_, i) => ({ prompt: [i], experts: TOPIC_A, steps: i === 0 ? 9 : 1 })));
    const { result, replicaOf } = run(trace, { rule: 'round-robin', clients: 1, replicas: 3 });
    assert.deepEqual([0, 1, 2, 3, 4, 5].map(replicaOf), [[0], [1], [2], [0], [1], [2]]);
    assert.deepEqual(result.replicas.map((r) => r.requests), [2, 2, 2]);
    assert.equal(result.requestImbalance, 1);
  });

  test('least-queue balances: a short request goes where the queue is shorter, so nothing waits', () => {
    // One long request and four short ones, two clients, one sequence per replica at a time.
    const trace = traceOf([
      { prompt: [1], experts: TOPIC_A, steps: 8 },
      ...Array.from({ length: 4 }, (_, i) => ({ prompt: [2 + i], experts: TOPIC_A, steps: 1 })),
    ]);
    const lq = run(trace, { rule: 'least-queue', maxSeqs: 1 });
    assert.deepEqual([0, 1, 2, 3, 4].map(lq.replicaOf), [[0], [1], [1], [1], [1]]);
    assert.equal(lq.result.meanWaitTicks, 0);
    assert.equal(lq.result.ticks, 8, 'the long request is the makespan');
    // Round-robin puts every other short request behind the long one.
    const rr = run(trace, { rule: 'round-robin', maxSeqs: 1 });
    assert.deepEqual([0, 1, 2].map(rr.replicaOf), [[0], [1], [0]]);
    assert.ok(rr.result.meanWaitTicks > 0, `round-robin waited ${rr.result.meanWaitTicks} ticks`);
    assert.ok(rr.result.ticks > lq.result.ticks);
  });

  test('prefix affinity sends the same prompt, and a longer match, to the same replica', () => {
    const prompts = [
      [1, 2, 3, 4],
      [5, 6, 7, 8],
      [9, 10, 11, 12],
      [13, 14, 15, 16],
    ];
    const order = [0, 1, 2, 3, 2, 0, 3, 1, 1, 3, 0, 2];
    const trace = traceOf(order.map((p) => ({ prompt: prompts[p] as number[], experts: TOPIC_A, steps: 1 })));
    const replicasOfPrompt = (replicaOf: (id: number) => number[]) => prompts.map((_, p) => new Set(order.flatMap((q, id) => (q === p ? replicaOf(id) : []))).size);
    const prefix = run(trace, { rule: 'prefix-affinity', replicas: 4, clients: 4 });
    assert.deepEqual(replicasOfPrompt(prefix.replicaOf), [1, 1, 1, 1], 'each prompt always on one replica');
    assert.deepEqual(prefix.result.replicas.map((r) => r.requests), [3, 3, 3, 3]);
    const rr = run(trace, { rule: 'round-robin', replicas: 4, clients: 4 });
    assert.ok(replicasOfPrompt(rr.replicaOf).some((n) => n > 1), 'round-robin spreads them');

    // [5, 6, 9, 9] shares its first block (2 tokens) with [5, 6, 7, 8], nothing with the others.
    const shared = traceOf([...prompts, [5, 6, 9, 9]].map((prompt) => ({ prompt, experts: TOPIC_A, steps: 1 })));
    const second = run(shared, { rule: 'prefix-affinity', replicas: 4, clients: 4 });
    assert.deepEqual(second.replicaOf(4), second.replicaOf(1));
    assert.deepEqual(second.replicaOf(1), [1]);
  });

  test('the load guard stops prefix affinity piling every request on one replica', () => {
    // Every request has the same prompt; 8 clients, 4 sequences per replica at a time.
    const trace = traceOf(Array.from({ length: 40 }, () => ({ prompt: [1, 2, 3, 4], experts: TOPIC_A, steps: 4 })));
    const unguarded = run(trace, { rule: 'prefix-affinity', clients: 8, maxSeqs: 4, loadGuard: 1000 }).result;
    const guarded = run(trace, { rule: 'prefix-affinity', clients: 8, maxSeqs: 4, loadGuard: 1 }).result;
    assert.deepEqual(unguarded.replicas.map((r) => r.requests), [40, 0], 'the first replica sent the prompt gets them all');
    assert.ok(guarded.requestImbalance <= 1.1, `guarded: ${guarded.replicas.map((r) => r.requests).join(', ')}`);
    assert.equal(guarded.meanWaitTicks, 0);
    assert.ok(unguarded.meanWaitTicks > 0);
    assert.equal(guarded.ticks, unguarded.ticks / 2, 'two replicas at work finish in half the ticks');
  });

  test('the load guard stops expert affinity queueing requests behind a busy warm replica', () => {
    // A long request of topic A holds replica 0; a short B warms replica 1; then short A requests follow.
    const trace = traceOf([
      { prompt: [1], experts: TOPIC_A, steps: 20 },
      { prompt: [2], experts: TOPIC_B, steps: 1 },
      ...Array.from({ length: 10 }, (_, i) => ({ prompt: [3 + i], experts: TOPIC_A, steps: 1 })),
    ]);
    const unguarded = run(trace, { rule: 'expert-affinity', maxSeqs: 1, loadGuard: 1000 });
    const guarded = run(trace, { rule: 'expert-affinity', maxSeqs: 1, loadGuard: 0 });
    assert.deepEqual(unguarded.replicaOf(2), [0], 'without a guard, A goes where A is warm, behind the long request');
    assert.ok(unguarded.result.meanWaitTicks > 0);
    assert.deepEqual(guarded.replicaOf(2), [1], 'with one, to the idle replica');
    assert.equal(guarded.result.meanWaitTicks, 0);
    assert.ok(guarded.result.ticks < unguarded.result.ticks);
  });

  test('expert-affinity-table learns token -> experts from computed prompts and routes like the oracle here', () => {
    // Prompts of topic A use token ids 1-2, topic B 5-6, so the table predicts a topic from the ids.
    const trace = traceOf(Array.from({ length: 8 }, (_, i) => ({ prompt: [0, 3].includes(i % 4) ? [1, 2] : [5, 6], experts: [0, 3].includes(i % 4) ? TOPIC_A : TOPIC_B, steps: 2 })));
    const table = run(trace, { rule: 'expert-affinity-table' }).result;
    const oracle = run(trace, { rule: 'expert-affinity' }).result;
    assert.equal(table.cache.misses, oracle.cache.misses);
    assert.equal(table.cache.misses, 2 * 4);
  });

  test('prompt blocks: whole blocks only, each key naming its whole prefix', () => {
    assert.equal(prefixBlockKeys([1, 2, 3], 2).length, 1, 'the partial last block is not hashed');
    assert.deepEqual(prefixBlockKeys([1], 2), []);
    const [a1, a2] = prefixBlockKeys([1, 2, 3, 4], 2);
    const [b1, b2] = prefixBlockKeys([1, 2, 9, 9], 2);
    const [c1, c2] = prefixBlockKeys([9, 9, 3, 4], 2);
    assert.equal(a1, b1);
    assert.notEqual(a2, b2);
    assert.notEqual(a2, c2, 'the same block after another prefix is another key');
    assert.notEqual(a1, c1);
  });
});

describe('one replica', () => {
  /** Random requests: 1-4 prompt tokens, 1-5 steps, with lookahead and votes for the next layer. */
  function randomTrace(seed: number, requests: number): Trace {
    const random = seededRandom(seed);
    const pick = () => {
      const a = Math.floor(random() * 8);
      const b = (a + 1 + Math.floor(random() * 7)) % 8;
      return [a, b];
    };
    const lines: TraceLine[] = [];
    let pass = 0;
    for (let request = 0; request < requests; request++) {
      const steps = 1 + Math.floor(random() * 5);
      const promptTokens = 1 + Math.floor(random() * 4);
      for (let step = 0; step < steps; step++, pass++) {
        const tokens = step === 0 ? promptTokens : 1;
        const routed = HEADER.sparse_layers.map(() => Array.from({ length: tokens }, pick));
        HEADER.sparse_layers.forEach((layer, s) => {
          const next = routed[s + 1];
          const votes = next ? countVotes(next.flat()) : undefined;
          lines.push({
            request,
            step,
            pass,
            layer,
            experts: routed[s] as number[][],
            lookahead: votes ? [[...votes.experts]] : [],
            lookahead_votes: votes ? [[...votes.votes]] : [],
            ...(step === 0 && s === 0 ? { prompt_tokens: Array.from({ length: promptTokens }, () => Math.floor(random() * 50)) } : {}),
          });
        });
      }
    }
    return { source: `random-${seed}`, header: HEADER, lines };
  }

  const counters = (r: { accesses: number; hits: number; misses: number; evictions: number; prefetchIssued: number; prefetchUsed: number; prefetchWasted: number }) => ({
    accesses: r.accesses,
    hits: r.hits,
    misses: r.misses,
    evictions: r.evictions,
    prefetchIssued: r.prefetchIssued,
    prefetchUsed: r.prefetchUsed,
    prefetchWasted: r.prefetchWasted,
  });
  const CONFIGS: { policy: PolicyName; budgetBytes: number; prefetchDepth: number }[] = [
    { policy: 'lru', budgetBytes: 3, prefetchDepth: 0 },
    { policy: 'lru', budgetBytes: 6, prefetchDepth: 1 },
    { policy: 'next-use', budgetBytes: 5, prefetchDepth: 0 },
    { policy: 'next-use', budgetBytes: 8, prefetchDepth: 1 },
    { policy: 'lfu', budgetBytes: 4, prefetchDepth: 1 },
  ];

  test("one client, one replica: every rule gives simulate()'s counters for the trace itself (recorded one request at a time)", () => {
    const trace = randomTrace(7, 30);
    for (const rule of ROUTING_RULES) {
      for (const c of CONFIGS) {
        const r = simulateRoutes(trace, { ...BASE, ...c, rule, replicas: 1, clients: 1, requests: 30 });
        assert.deepEqual(counters(r.cache), counters(simulate(trace, c)), `${rule} ${c.policy} ${c.budgetBytes} @ ${c.prefetchDepth}`);
      }
    }
  });

  test("re-batched by several clients: every rule gives simulate()'s counters for the passes it ran, written as a trace", () => {
    const trace = randomTrace(11, 25);
    for (const rule of ROUTING_RULES) {
      for (const c of CONFIGS) {
        const lines: TraceLine[] = [];
        // 4 clients, 3 running at most: batches of up to 3, a request sometimes waiting; 40 requests recycle the trace.
        const r = simulateRoutes(trace, { ...BASE, ...c, rule, replicas: 1, clients: 4, maxSeqs: 3, requests: 40, onPass: (_, l) => lines.push(...l) });
        assert.ok(r.meanWaitTicks > 0, 'some requests waited');
        const batch = new Map<number, Set<number>>();
        for (const l of lines) batch.set(l.pass as number, (batch.get(l.pass as number) ?? new Set()).add(l.request));
        assert.equal(Math.max(...[...batch.values()].map((s) => s.size)), 3, 'passes of up to 3 requests');
        const rebatched: Trace = { source: 'rebatched', header: HEADER, lines };
        assert.deepEqual(counters(r.cache), counters(simulate(rebatched, c)), `${rule} ${c.policy} ${c.budgetBytes} @ ${c.prefetchDepth}`);
      }
    }
  });
});

describe('moe-serve route-study', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-route-study-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const cli = (...args: string[]) => spawnSync(process.execPath, [CLI_PATH, 'route-study', ...args], { encoding: 'utf8' });
  const write = (name: string, trace: Trace) => {
    const path = join(dir, name);
    writeFileSync(path, [trace.header, ...trace.lines].map((l) => JSON.stringify(l)).join('\n'));
    return path;
  };
  const topics = traceOf(Array.from({ length: 8 }, (_, i) => ({ prompt: [i, i], experts: [0, 3].includes(i % 4) ? TOPIC_A : TOPIC_B, steps: 2 })));

  test('prints one table per (policy, depth, budget) with a row per (rule, replicas), and writes the tables and a chart', () => {
    const path = write('topics.jsonl', topics);
    const md = join(dir, 'topics.md');
    const r = cli('--trace', path, '--replicas', '1,2', '--policies', 'lru', '--budgets', '25%,50%', '--prefetch-depths', '0', '--clients-per-replica', '1', '--md', md, '--json');
    assert.equal(r.status, 0, r.stderr);
    const json = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(json.length, ROUTING_RULES.length * 2 * 2);
    assert.deepEqual(json.map((j) => j.clients).slice(0, 2), [1, 2], 'clients per replica x replicas');
    const tables = readFileSync(md, 'utf8');
    assert.equal(tables.match(/^### lru @ prefetch depth 0, budget (25|50)% per replica$/gm)?.length, 2);
    for (const rule of ROUTING_RULES) assert.match(tables, new RegExp(`^\\| ${rule} \\| 2 \\| [\\d.]+% \\|`, 'm'));
    assert.ok(r.stdout.includes(tables.split('\n')[2] as string), 'stdout has the same tables');
    const svg = readFileSync(`${path}.routes.svg`, 'utf8');
    assert.match(svg, /^<svg /);
    assert.equal(svg.match(/<polyline /g)?.length, ROUTING_RULES.length * 2, 'a line per (rule, budget)');
  });

  test('refuses rules that need prompt token ids on a trace without them, and bad flags, with usage help', () => {
    const path = write('no-prompts.jsonl', { ...topics, lines: topics.lines.map(({ prompt_tokens: _, ...line }) => line) });
    const prefix = cli('--trace', path, '--routing', 'round-robin,prefix-affinity');
    assert.equal(prefix.status, 2);
    assert.match(prefix.stderr, /--routing: prefix-affinity route by the prompts' token ids, which this trace does not record/);
    assert.equal(cli('--trace', path, '--routing', 'round-robin', '--replicas', '2', '--policies', 'lru', '--prefetch-depths', '0').status, 0);
    for (const [args, message] of [
      [['--routing', 'random'], /--routing: expected one of round-robin, least-queue/],
      [['--replicas', '0'], /--replicas: .*\(got "0"\)/],
      [['--budgets', '150%'], /--budgets: a percentage budget must be at most 100%/],
      [['--load-guard=-1'], /--load-guard: .*\(got "-1"\)/],
    ] as const) {
      const r = cli('--trace', path, ...args);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.match(r.stderr, /Usage: moe-serve route-study/);
    }
  });
});
