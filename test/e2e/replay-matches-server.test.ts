// `moe-serve replay` reports the device tier's hits, misses and evictions that the server counted, exactly:
// concurrent requests over loopback through the batching engine on the embedded tiny-moe model (6 sparse
// layers x 16 experts, top-4) with room for a third of its experts, a routing trace recorded by that same
// run, and the trace replayed under the same policy, budget and prefetch depth. The server's counters
// come from GET /v1/experts.
//
// What a trace cannot give exactly: the order of a batch's lookahead when a prompt (several tokens)
// shares a forward pass with other requests, since a trace line ranks its request's predicted experts
// without their vote counts. The simulator counts those prefetches (estimatedPrefetches); runs that must
// match exactly with prefetching on use a step budget of 2 tokens, where a pass holds either one request
// or two requests of one token each, and the order is always known.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildApp } from '../../src/api/build-app.js';
import { BENCH_PROMPTS } from '../../src/cli/bench-prompts.js';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { ExpertIds, type ExpertId } from '../../src/experts/expert-id.js';
import type { ExpertCacheStats, ExpertCounters } from '../../src/experts/expert-stats.js';
import type { PolicyName } from '../../src/experts/policies/index.js';
import { readTrace, type Trace } from '../../src/experts/replay/read-trace.js';
import { simulate, type ReplayResult } from '../../src/experts/replay/simulate.js';
import { loadRoutingProfile } from '../../src/experts/routing-profile.js';
import { F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

/** A third of tiny-moe's 96 experts: four requests' experts at one layer (up to 16) fit, six layers' do not. */
const BUDGET_FRACTION = 1 / 3;
const CONCURRENT = 4;
const MAX_TOKENS = 14;

interface RunConfig {
  readonly policy: PolicyName;
  readonly prefetchDepth: number;
  /** The engine's token budget per step: prompt chunks plus one per decoding request. */
  readonly maxBatchTokens: number;
}

interface Run {
  readonly cfg: RunConfig;
  readonly stats: ExpertCacheStats;
  readonly trace: Trace;
  /** The 'static' policy's routing profile, for its replays. */
  readonly profile: readonly ExpertId[] | undefined;
  readonly sim: ReplayResult;
}

const DEVICE_COUNTERS = ['accesses', 'hits', 'misses', 'evictions', 'prefetchIssued', 'prefetchUsed', 'prefetchWasted'] as const;

/** The device tier's counters, which the simulator and the server both keep. */
function deviceCounters(c: Pick<ExpertCounters, (typeof DEVICE_COUNTERS)[number]>): Record<(typeof DEVICE_COUNTERS)[number], number> {
  return Object.fromEntries(DEVICE_COUNTERS.map((k) => [k, c[k]])) as Record<(typeof DEVICE_COUNTERS)[number], number>;
}

/** The 'static' hot set the server loads by default: models/tiny-moe/training_report.json. */
async function staticProfile(): Promise<ExpertId[]> {
  return loadRoutingProfile(join(TINY_MOE_DIR, 'training_report.json'), new ExpertIds(6, 16));
}

function replay(run: Pick<Run, 'cfg' | 'trace' | 'profile'>, budgetBytes: number, prefetchDepth = run.cfg.prefetchDepth): ReplayResult {
  return simulate(run.trace, { policy: run.cfg.policy, budgetBytes, prefetchDepth, profile: run.profile });
}

/**
 * Serves tiny-moe on 127.0.0.1 with `cfg` and a trace, sends CONCURRENT completions at once, and returns
 * /v1/experts once the last loads have landed, the trace, and its replay under the server's budget.
 */
async function serveAndReplay(cfg: RunConfig, tracePath: string): Promise<Run> {
  await using model = await MoeModel.load(TINY_MOE_DIR, {
    device: 'cpu',
    compute: F32,
    experts: { policy: cfg.policy, budgetFraction: BUDGET_FRACTION, prefetchDepth: cfg.prefetchDepth },
  });
  const trace = await model.openTrace(tracePath);
  await using engine = new BatchEngine(model, { maxBatchTokens: cfg.maxBatchTokens, maxSeqs: 8, maxQueue: 32 });
  const app = buildApp({ serving: () => ({ model, engine, observer: () => trace.request() }), modelName: 'tiny-moe' });
  try {
    await app.listen({ host: '127.0.0.1', port: 0 });
    const origin = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    await Promise.all(
      BENCH_PROMPTS.slice(0, CONCURRENT).map(async (prompt, i) => {
        const res = await fetch(`${origin}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'tiny-moe', prompt, max_tokens: MAX_TOKENS + i, temperature: 0 }),
        });
        assert.equal(res.status, 200, await res.text());
      }),
    );
    assert.equal(await trace.close(), null, 'the trace was written in full');
    const recorded = await readTrace(tracePath);
    const profile = cfg.policy === 'static' ? await staticProfile() : undefined;
    const sim = replay({ cfg, trace: recorded, profile }, model.experts.stats().budgetBytes);
    const stats = await statsOnceLoaded(origin, sim.misses + sim.prefetchIssued + sim.preloaded);
    return { cfg, stats, trace: recorded, profile, sim };
  } finally {
    await trace.close();
    await app.close();
  }
}

/**
 * GET /v1/experts once `loads` loads have gone through the host tier (or after 5 s). Prefetches issued in
 * the last step may still be loading when the last answer is written; the device tier's counters are
 * final by then, since the store counts a prefetch, a hit or an eviction when it is issued, not when the
 * load lands.
 */
async function statsOnceLoaded(origin: string, loads: number): Promise<ExpertCacheStats> {
  const until = Date.now() + 5000;
  for (;;) {
    const res = await fetch(`${origin}/v1/experts`);
    assert.equal(res.status, 200);
    const stats = (await res.json()) as ExpertCacheStats;
    if (stats.total.hostHits + stats.total.hostMisses >= loads || Date.now() > until) return stats;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Accesses if every trace line (one request's step at one layer) were its own use of the cache, as the
 * simulator replayed them before it grouped lines into forward passes. More than the server counts when
 * requests that shared a pass used the same expert.
 */
function lineAccesses(trace: Trace): number {
  return trace.lines.reduce((n, l) => n + new Set(l.experts.flat()).size, 0);
}

// Prefetching off, steps as large as the engine makes them: prompts share passes with each other and with
// decoding requests. Prefetching on (depth 1 and 2, three policies, 'static' preloading its hot set) with
// two tokens a step, so that every pass's lookahead order is known.
const EXACT: readonly RunConfig[] = [
  { policy: 'lru', prefetchDepth: 0, maxBatchTokens: 256 },
  { policy: 'lfu', prefetchDepth: 0, maxBatchTokens: 256 },
  { policy: 'lru', prefetchDepth: 1, maxBatchTokens: 2 },
  { policy: 'lfu', prefetchDepth: 1, maxBatchTokens: 2 },
  { policy: 'static', prefetchDepth: 1, maxBatchTokens: 2 },
  { policy: 'lru', prefetchDepth: 2, maxBatchTokens: 2 },
];

describe("replaying a server run's routing trace gives the server's expert-cache counters", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'moe-serve-replay-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));
  const traceFile = (cfg: RunConfig) => join(dir, `${cfg.policy}-${cfg.prefetchDepth}-${cfg.maxBatchTokens}.jsonl`);
  const runs = new Map<RunConfig, Run>();

  for (const cfg of EXACT) {
    test(`${cfg.policy}, prefetch depth ${cfg.prefetchDepth}, ${CONCURRENT} concurrent requests, ${cfg.maxBatchTokens} tokens a step: the same hits, misses, evictions and prefetches`, async () => {
      const run = await serveAndReplay(cfg, traceFile(cfg));
      runs.set(cfg, run);
      const { stats, sim, trace } = run;
      const capacity = Math.floor(stats.budgetBytes / stats.expertBytes);
      assert.ok(capacity >= 24 && capacity < 48, `room for ${capacity} experts`);
      assert.ok(stats.total.evictions > 0, 'the budget forces evictions');
      assert.equal(stats.overBudget, 0);
      assert.ok(lineAccesses(trace) > stats.total.accesses, 'requests shared forward passes and experts in them');
      assert.equal(sim.estimatedPrefetches, 0, 'every prefetch order is known from the trace');
      assert.deepEqual(deviceCounters(sim), deviceCounters(stats.total));
      // The host tier is not simulated (a load that joins a read in flight is a host miss, so its split
      // depends on when reads land), but it serves exactly the loads the device tier starts.
      assert.equal(stats.total.hostHits + stats.total.hostMisses, sim.misses + sim.prefetchIssued + sim.preloaded);
      if (cfg.prefetchDepth > 0) assert.ok(stats.total.prefetchUsed > 0);
    });
  }

  test('the comparison can fail: one expert less of budget, or no prefetching, replays to other counts', () => {
    assert.equal(runs.size, EXACT.length);
    for (const run of runs.values()) {
      const { stats, cfg } = run;
      const server = deviceCounters(stats.total);
      assert.notDeepEqual(deviceCounters(replay(run, stats.budgetBytes - stats.expertBytes)), server, `${cfg.policy} @ ${cfg.prefetchDepth}, smaller budget`);
      // (A trace recorded without prefetching has no lookahead to prefetch from.)
      if (cfg.prefetchDepth > 0) assert.notDeepEqual(deviceCounters(replay(run, stats.budgetBytes, 0)), server, `${cfg.policy} @ ${cfg.prefetchDepth}, depth 0`);
    }
  });

  test('prefetching with prompts batched beside other requests: accesses exact, and the replay says where it estimated', async () => {
    const cfg: RunConfig = { policy: 'lru', prefetchDepth: 1, maxBatchTokens: 256 };
    const { stats, sim } = await serveAndReplay(cfg, traceFile(cfg));
    assert.equal(sim.accesses, stats.total.accesses);
    assert.ok(sim.estimatedPrefetches > 0, 'a prompt shared a pass with other requests');
  });
});
