// `moe-serve replay` reports the device tier's hits, misses, evictions and prefetches that the server
// counted, exactly: 8 concurrent requests over loopback through the batching engine on the embedded
// tiny-moe model (6 sparse layers x 16 experts, top-4) with room for a third of its experts, a routing
// trace recorded by that same run, and the trace replayed under the same policy, budget and prefetch
// depth. The server's counters come from GET /v1/experts.
//
// Steps are as large as the engine makes them, and the requests after the first arrive while it
// decodes, so prompts (several tokens) share forward passes with decoding requests. The trace's pass
// numbers give the passes, and its lookahead votes give each pass's prefetch order, so nothing is
// estimated; the same trace without votes (as older traces were written) would have needed estimates.
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
import { forwardPasses } from '../../src/experts/replay/trace-accesses.js';
import { loadRoutingProfile } from '../../src/experts/routing-profile.js';
import { F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

/** A third of tiny-moe's 96 experts: a pass's experts at one layer (at most all 16) fit, six layers' do not. */
const BUDGET_FRACTION = 1 / 3;
const CONCURRENT = 8;
const MAX_TOKENS = 14;
/** The engine's token budget per step (prompt chunks plus one per decoding request): every prompt fits whole. */
const MAX_BATCH_TOKENS = 256;

interface RunConfig {
  readonly policy: PolicyName;
  readonly prefetchDepth: number;
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
 * Serves tiny-moe on 127.0.0.1 with `cfg` and a trace, sends one streamed completion and, once its first
 * token has come, CONCURRENT - 1 more at once; returns /v1/experts once the last loads have landed, the
 * trace, and its replay under the server's budget.
 */
async function serveAndReplay(cfg: RunConfig, tracePath: string): Promise<Run> {
  await using model = await MoeModel.load(TINY_MOE_DIR, {
    device: 'cpu',
    compute: F32,
    experts: { policy: cfg.policy, budgetFraction: BUDGET_FRACTION, prefetchDepth: cfg.prefetchDepth },
  });
  const trace = await model.openTrace(tracePath);
  await using engine = new BatchEngine(model, { maxBatchTokens: MAX_BATCH_TOKENS, maxSeqs: CONCURRENT, maxQueue: 32 });
  const app = buildApp({ serving: () => ({ model, engine, observer: () => trace.request() }), modelName: 'tiny-moe' });
  try {
    await app.listen({ host: '127.0.0.1', port: 0 });
    const origin = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const complete = (prompt: string, maxTokens: number, stream: boolean) =>
      fetch(`${origin}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-moe', prompt, max_tokens: maxTokens, temperature: 0, stream }),
      });
    const [leadPrompt, ...others] = BENCH_PROMPTS.slice(0, CONCURRENT);
    // The lead request decodes long enough for the others' prompts to join its passes.
    const lead = await complete(leadPrompt as string, MAX_TOKENS + 2 * CONCURRENT, true);
    assert.equal(lead.status, 200);
    const chunks = (lead.body as ReadableStream<Uint8Array>).getReader();
    assert.equal((await chunks.read()).done, false, 'the lead request streams its first token');
    const drainLead = async () => {
      while (!(await chunks.read()).done);
    };
    await Promise.all([
      drainLead(),
      ...others.map(async (prompt, i) => {
        const res = await complete(prompt, MAX_TOKENS + i, false);
        assert.equal(res.status, 200, await res.text());
      }),
    ]);
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

/** A trace as older servers wrote it: no pass numbers, no lookahead votes. */
function withoutPassesAndVotes(trace: Trace): Trace {
  return { ...trace, lines: trace.lines.map(({ pass: _pass, lookahead_votes: _votes, ...rest }) => rest) };
}

/** Each forward pass's lines by layer, as request/step/layer. */
function passShape(trace: Trace): string[][][] {
  return forwardPasses(trace.lines).map((pass) => pass.map((layerLines) => layerLines.map((l) => `${l.request}/${l.step}/${l.layer}`)));
}

/** Whether some forward pass computed a prompt (a line of several tokens) beside a decoding request (one token). */
function promptBesideDecode(trace: Trace): boolean {
  return forwardPasses(trace.lines).some((pass) => pass.some((layerLines) => layerLines.some((l) => l.experts.length > 1) && layerLines.some((l) => l.experts.length === 1)));
}

// Five policies ('static' preloading its hot set; 'next-use' hearing the lookahead even without
// prefetching), prefetching off and on.
const EXACT: readonly RunConfig[] = [
  { policy: 'lru', prefetchDepth: 0 },
  { policy: 'lfu', prefetchDepth: 0 },
  { policy: 'static', prefetchDepth: 0 },
  { policy: 'lfu-decay', prefetchDepth: 0 },
  { policy: 'next-use', prefetchDepth: 0 },
  { policy: 'lru', prefetchDepth: 1 },
  { policy: 'lfu', prefetchDepth: 1 },
  { policy: 'static', prefetchDepth: 1 },
  { policy: 'next-use', prefetchDepth: 1 },
];

describe("replaying a server run's routing trace gives the server's expert-cache counters", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'moe-serve-replay-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));
  const traceFile = (cfg: RunConfig) => join(dir, `${cfg.policy}-${cfg.prefetchDepth}.jsonl`);
  const runs = new Map<RunConfig, Run>();

  for (const cfg of EXACT) {
    test(`${cfg.policy}, prefetch depth ${cfg.prefetchDepth}, ${CONCURRENT} concurrent requests, prompts beside decodes: the same hits, misses, evictions and prefetches`, async () => {
      const run = await serveAndReplay(cfg, traceFile(cfg));
      runs.set(cfg, run);
      const { stats, sim, trace } = run;
      const capacity = Math.floor(stats.budgetBytes / stats.expertBytes);
      assert.ok(capacity >= 24 && capacity < 48, `room for ${capacity} experts`);
      assert.ok(stats.total.evictions > 0, 'the budget forces evictions');
      assert.equal(stats.overBudget, 0);
      assert.ok(lineAccesses(trace) > stats.total.accesses, 'requests shared forward passes and experts in them');
      assert.ok(promptBesideDecode(trace), 'a prompt shared a forward pass with a decoding request');
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

  test('without pass numbers and votes (an older trace) the passes are inferred alike, and some prefetch orders estimated', () => {
    for (const run of runs.values()) {
      const old = withoutPassesAndVotes(run.trace);
      // Six sparse layers: the inference is exact, so the numbered passes check it.
      assert.deepEqual(passShape(old), passShape(run.trace), `${run.cfg.policy} @ ${run.cfg.prefetchDepth}: the same passes`);
      if (run.cfg.prefetchDepth > 0) {
        const sim = replay({ ...run, trace: old }, run.stats.budgetBytes);
        assert.equal(sim.accesses, run.stats.total.accesses, `${run.cfg.policy}: accesses need no votes`);
        assert.ok(sim.estimatedPrefetches > 0, `${run.cfg.policy}: a prompt's votes were needed`);
      }
    }
  });
});
