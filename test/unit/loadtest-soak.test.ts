// The soak's accounting and verdict as pure functions: what a client's event log means, how clients are
// split between kinds, RSS growth after warm-up, the event-loop summary, the checks and the flags.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { UsageError } from '../../src/cli/cli-error.js';
import { parseLoadtestArgs, SOAK_MIN_CLIENTS } from '../../load-tests/options.js';
import type { ServerDelta } from '../../load-tests/server-snapshot.js';
import { SOAK_CLIENT_KINDS } from '../../load-tests/soak-clients.js';
import { emptyCounts, soakOutcome, type SoakEvent } from '../../load-tests/soak-outcome.js';
import { allocateClients, sampleIntervalMs, type SoakRun, type SoakSample } from '../../load-tests/soak-run.js';
import { eventLoopSummary, rssSummary, soakChecks, warmUpMs } from '../../load-tests/soak-verdict.js';

const status = (s: number): SoakEvent => ({ type: 'status', status: s });
const finish = (reason: string): SoakEvent => ({ type: 'finish', reason });
const DONE: SoakEvent = { type: 'done' };
const CANCEL: SoakEvent = { type: 'cancel' };
const TIMEOUT: SoakEvent = { type: 'timeout' };
const closed = (code?: number): SoakEvent => (code === undefined ? { type: 'closed' } : { type: 'closed', code });
const error = (errorType: string | null, code: string | null = null): SoakEvent => ({ type: 'error', errorType, code });

describe('soak outcome of a request', () => {
  test('a finish then the end of the answer is complete, on every transport', () => {
    assert.equal(soakOutcome([status(200), finish('length'), DONE], 'reading'), 'complete', 'SSE or non-streamed');
    assert.equal(soakOutcome([finish('stop'), DONE], 'reading'), 'complete', 'WebSocket done');
    assert.equal(soakOutcome([status(200), finish('length'), DONE], 'stopped'), 'complete', 'a stopped reader the server did not cut');
  });

  test('[DONE] without a finish_reason is a broken protocol, not a complete answer', () => {
    assert.equal(soakOutcome([status(200), DONE], 'reading'), 'other-error');
  });

  test('429 by status or error body is rate-limited; 5xx by status or server_error is a server error; other statuses are other errors', () => {
    assert.equal(soakOutcome([status(429)], 'reading'), 'rate-limited');
    assert.equal(soakOutcome([error('rate_limit_error', 'too_many_socket_requests')], 'reading'), 'rate-limited');
    assert.equal(soakOutcome([status(200), error(null, 'queue_full')], 'reading'), 'rate-limited');
    assert.equal(soakOutcome([status(500)], 'reading'), 'server-error');
    assert.equal(soakOutcome([status(503)], 'stopped'), 'server-error');
    assert.equal(soakOutcome([status(200), error('server_error', 'internal')], 'reading'), 'server-error');
    assert.equal(soakOutcome([status(400)], 'reading'), 'other-error');
    assert.equal(soakOutcome([error('invalid_request_error', 'invalid_request')], 'reading'), 'other-error');
  });

  test('an aborted SSE fetch is cancelled: nothing after it is observable', () => {
    assert.equal(soakOutcome([status(200), CANCEL], 'reading'), 'cancelled');
  });

  test('a WebSocket cancel counts once the server answers it; a request that finished first is complete', () => {
    assert.equal(soakOutcome([CANCEL, finish('cancelled'), DONE], 'reading'), 'cancelled');
    assert.equal(soakOutcome([CANCEL, finish('length'), DONE], 'reading'), 'complete');
    assert.equal(soakOutcome([CANCEL, TIMEOUT], 'reading'), 'lost', 'the server never answered the cancel');
    assert.equal(soakOutcome([CANCEL, closed(1006)], 'reading'), 'lost', 'the socket closed before the answer');
  });

  test('a cancelled answer nobody asked for is an error', () => {
    assert.equal(soakOutcome([finish('cancelled'), DONE], 'reading'), 'other-error');
  });

  test('a connection that ends without a terminal event is lost for a reader, cut for a reader that stopped', () => {
    assert.equal(soakOutcome([status(200), closed()], 'reading'), 'lost');
    assert.equal(soakOutcome([status(200), finish('length'), closed()], 'reading'), 'lost', 'a finish chunk without [DONE]');
    assert.equal(soakOutcome([closed(1008)], 'stopped'), 'cut-slow');
    assert.equal(soakOutcome([status(200), closed()], 'stopped'), 'cut-slow');
  });

  test('a request with no end by the deadline, or no events at all, is lost', () => {
    assert.equal(soakOutcome([status(200), TIMEOUT], 'reading'), 'lost');
    assert.equal(soakOutcome([status(200), TIMEOUT], 'stopped'), 'lost');
    assert.equal(soakOutcome([], 'reading'), 'lost');
    assert.equal(soakOutcome([status(200)], 'reading'), 'lost');
  });

  test('the first terminal event decides', () => {
    assert.equal(soakOutcome([status(200), finish('stop'), DONE, closed()], 'reading'), 'complete');
    assert.equal(soakOutcome([status(200), TIMEOUT, finish('stop'), DONE], 'reading'), 'lost');
    assert.equal(soakOutcome([status(200), error('server_error'), CANCEL], 'reading'), 'server-error');
  });
});

describe('soak clients', () => {
  test('one client of each kind, the rest by share; readers that stop get exactly one each', () => {
    for (const total of [SOAK_MIN_CLIENTS, 17, 24, 100]) {
      const counts = allocateClients(total, SOAK_CLIENT_KINDS);
      assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), total, `total ${total}`);
      for (const k of SOAK_CLIENT_KINDS) assert.ok(counts[k] >= 1, `${k} at ${total}`);
      assert.equal(counts['sse-stopped'], 1);
      assert.equal(counts['ws-stopped'], 1);
    }
    const c = allocateClients(24, SOAK_CLIENT_KINDS);
    assert.ok(c.http >= c['sse-cancel'] && c.sse >= c['sse-slow'], JSON.stringify(c));
  });

  test('kinds left out get none, and too few clients are refused', () => {
    const kinds = SOAK_CLIENT_KINDS.filter((k) => !k.endsWith('-stopped'));
    const counts = allocateClients(20, kinds);
    assert.deepEqual([counts['sse-stopped'], counts['ws-stopped']], [0, 0]);
    assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 20);
    assert.throws(() => allocateClients(SOAK_CLIENT_KINDS.length - 1, SOAK_CLIENT_KINDS), RangeError);
  });

  test('samples every twentieth of the soak, 1 s to 10 s apart', () => {
    assert.equal(sampleIntervalMs(10_000), 1000);
    assert.equal(sampleIntervalMs(90_000), 4500);
    assert.equal(sampleIntervalMs(30 * 60_000), 10_000);
  });
});

const MIB = 2 ** 20;

function sample(atMs: number, rssMib: number | null, p99 = 5, max = 10): SoakSample {
  return {
    atMs,
    rssBytes: rssMib === null ? null : rssMib * MIB,
    heapUsedBytes: 20 * MIB,
    externalBytes: 40 * MIB,
    eventLoopDelayMs: { p50: 1, p99, max },
    running: 16,
    waiting: 8,
    generationTokens: atMs,
  };
}

const NO_SERVER_CHANGE: ServerDelta = {
  accesses: 0, hits: 0, hitRatio: null, loads: 0, loadsAvoided: null, bytesToDevice: 0, bytesFromDisk: 0, residentBytes: 0, budgetBytes: 0,
  metrics: { generationTokens: 0, promptTokens: 0, requestsByStatus: { '200': 10 } },
};

function run(samples: SoakSample[], over: Partial<SoakRun> = {}): SoakRun {
  return {
    spec: { durationMs: 100_000, clients: 24, kinds: SOAK_CLIENT_KINDS, maxTokens: 64, contextTokens: 1024, seed: 0 },
    sampleIntervalMs: 10_000,
    clientsByKind: allocateClients(24, SOAK_CLIENT_KINDS),
    wallMs: 100_000,
    requests: 10,
    outcomesByKind: Object.fromEntries(SOAK_CLIENT_KINDS.map((k) => [k, k === 'http' ? { ...emptyCounts(), complete: 10 } : emptyCounts()])) as SoakRun['outcomesByKind'],
    tokensByKind: Object.fromEntries(SOAK_CLIENT_KINDS.map((k) => [k, 0])) as SoakRun['tokensByKind'],
    cutCloseCodes: {},
    failures: [],
    samples,
    afterDrain: sample(110_000, 100),
    idleAfterMs: 200,
    server: NO_SERVER_CHANGE,
    ...over,
  };
}

describe('soak verdict', () => {
  test('warm-up is the first 10% of the soak, at most 2 minutes', () => {
    assert.equal(warmUpMs(90_000), 9000);
    assert.equal(warmUpMs(30 * 60_000), 120_000);
  });

  test('RSS growth compares the mean of the first three samples after warm-up with the last three under load', () => {
    // Warm-up (10 s) grows from 50 to 90 MiB; then 100, 102, 104 ... 116 under load; 200 while draining.
    const samples = [sample(0, 50), sample(5000, 90), ...Array.from({ length: 9 }, (_, i) => sample(10_000 * (i + 2), 100 + 2 * i)), sample(105_000, 200)];
    const rss = rssSummary(samples, 100_000)!;
    assert.equal(rss.warmUpMs, 10_000);
    assert.equal(rss.windowSamples, 3);
    assert.equal(rss.startBytes, 102 * MIB, 'mean of 100, 102, 104');
    assert.equal(rss.endBytes, 114 * MIB, 'mean of 112, 114, 116; the drain is left out');
    assert.ok(Math.abs(rss.growth - (114 / 102 - 1)) < 1e-12);
    assert.equal(rss.maxBytes, 200 * MIB, 'the maximum includes the drain');
    assert.equal(rssSummary([sample(0, null), sample(50_000, null)], 100_000), null, 'no /proc');
  });

  test('the event-loop p99 is bounded by the largest window p99; the window before the soak is left out', () => {
    const el = eventLoopSummary([sample(0, 1, 500, 900), sample(10_000, 1, 4, 8), sample(20_000, 1, 12, 30), sample(30_000, 1, 6, 9), sample(200_000, 1, 99, 99)], 100_000)!;
    assert.deepEqual(el, { windows: 3, p99MaxMs: 12, p99MedianMs: 6, maxMs: 30 });
  });

  test('passes with no 5xx, nothing lost, flat RSS and an idle server; each failure fails its own check', () => {
    const flat = [sample(0, 80), ...Array.from({ length: 10 }, (_, i) => sample(10_000 * (i + 1), 100 + (i % 2)))];
    const pass = (r: SoakRun) => soakChecks(r, rssSummary(r.samples, r.spec.durationMs));
    assert.ok(pass(run(flat)).every((c) => c.pass), JSON.stringify(pass(run(flat))));

    const failing = (r: SoakRun) => pass(r).filter((c) => !c.pass).map((c) => c.name);
    const growing = [sample(0, 80), ...Array.from({ length: 10 }, (_, i) => sample(10_000 * (i + 1), 100 + 3 * i))];
    assert.deepEqual(failing(run(growing)), ['RSS growth after warm-up']);
    const lost = run(flat, { outcomesByKind: { ...run(flat).outcomesByKind, ws: { ...emptyCounts(), lost: 1 } } });
    assert.deepEqual(failing(lost), ['lost requests']);
    const serverSaid500 = run(flat, { server: { ...NO_SERVER_CHANGE, metrics: { ...NO_SERVER_CHANGE.metrics!, requestsByStatus: { '200': 9, '500': 1 } } } });
    assert.deepEqual(failing(serverSaid500), ['5xx answers counted by the server (GET /metrics)']);
    assert.deepEqual(failing(run(flat, { idleAfterMs: null })), ['nothing running or waiting after the last answer']);
    const cutAndCancelled = run(flat, { outcomesByKind: { ...run(flat).outcomesByKind, 'ws-stopped': { ...emptyCounts(), 'cut-slow': 6, 'rate-limited': 2, cancelled: 3 } } });
    assert.deepEqual(failing(cutAndCancelled), [], 'cut, 429 and cancelled are allowed endings');
  });
});

describe('soak flags', () => {
  const refuses = (args: string[], pattern: RegExp) => assert.throws(() => parseLoadtestArgs(args), (err: unknown) => err instanceof UsageError && pattern.test(err.message));

  test('--soak takes a time up to 24 hours; the comparison defaults stay as they are', () => {
    assert.equal(parseLoadtestArgs([]).soak, null);
    assert.deepEqual(parseLoadtestArgs(['--soak', '30m']).soak, { durationMs: 30 * 60_000, maxTokens: 256 });
    assert.equal(parseLoadtestArgs(['--soak', '2h']).soak!.durationMs, 7_200_000);
    const o = parseLoadtestArgs(['--soak', '90s', '--concurrency', '30', '--max-tokens', '64', '--policies', 'lfu', '--budgets', '25%', '--seed', '3']);
    assert.deepEqual(o.soak, { durationMs: 90_000, clients: 30, policy: 'lfu', budgetPercent: 25, maxTokens: 64 });
    assert.equal(o.seed, 3);
  });

  test('bad soak values and flags that mean nothing to a soak are refused by name', () => {
    refuses(['--soak', '25h'], /--soak: a soak must last from 5s to 24h/);
    refuses(['--soak', '30'], /--soak: expected a time like 90s, 30m or 2h/);
    refuses(['--soak', '1m', '--concurrency', '4'], /--concurrency: a soak needs at least 9 clients/);
    refuses(['--soak', '1m', '--concurrency', '16,32'], /--concurrency: a soak runs one server; give one value/);
    refuses(['--soak', '1m', '--policies', 'lru,lfu'], /--policies: a soak runs one server/);
    for (const flag of [['--duration', '10s'], ['--client', 'ws'], ['--smoke'], ['--keep-traces'], ['--requests', '5']]) refuses(['--soak', '1m', ...flag], new RegExp(`^${flag[0]} does not apply to --soak`));
    refuses(['--duration', '1h'], /--duration: a run must last from 100ms to 10m/);
  });
});
