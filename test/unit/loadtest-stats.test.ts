// The load tests' arithmetic: percentiles, the Prometheus exposition parser, Poisson arrivals, and the
// closed-loop and Poisson drivers' bounds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { drive, poissonGapsMs } from '../../load-tests/arrivals.js';
import { percentile, summarize } from '../../load-tests/percentiles.js';
import { errorCount, summarizeLatencies, type RequestRecord } from '../../load-tests/request-record.js';
import { ExpositionFormatError, parseExposition, sumOf } from '../../load-tests/metric-samples.js';
import { createRng } from '../../src/engine/sampler.js';

describe('percentile', () => {
  test('interpolates linearly between ranks, as numpy.percentile does', () => {
    // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 90, 99, 100]) = [1, 1.75, 2.5, 3.7, 3.97, 4]
    const xs = [4, 1, 3, 2];
    assert.equal(percentile(xs, 0), 1);
    assert.equal(percentile(xs, 25), 1.75);
    assert.equal(percentile(xs, 50), 2.5);
    assert.ok(Math.abs(percentile(xs, 90)! - 3.7) < 1e-12);
    assert.ok(Math.abs(percentile(xs, 99)! - 3.97) < 1e-12);
    assert.equal(percentile(xs, 100), 4);
    assert.deepEqual(xs, [4, 1, 3, 2], 'the input is not sorted in place');
  });

  test('p99 of 1..100 is 99.01 and a single value is every percentile', () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    assert.ok(Math.abs(percentile(xs, 99)! - 99.01) < 1e-9);
    assert.equal(percentile([7], 50), 7);
    assert.equal(percentile([7], 99), 7);
  });

  test('no values give null, and a percentile outside 0..100 throws', () => {
    assert.equal(percentile([], 50), null);
    assert.deepEqual(summarize([]), { count: 0, mean: null, p50: null, p90: null, p99: null, max: null });
    assert.throws(() => percentile([1], 101), RangeError);
    assert.throws(() => percentile([1], Number.NaN), RangeError);
  });
});

describe('vLLM latency definitions over request records', () => {
  const rec = (o: Partial<RequestRecord>): RequestRecord => ({ outcome: '200', ttftMs: 100, e2eMs: 500, outputTokens: 5, itlMs: [100, 100, 100, 100], ...o });

  test('TPOT is (e2e - TTFT) / (output tokens - 1), ITL pools every gap, failed requests are left out', () => {
    const s = summarizeLatencies([rec({}), rec({ ttftMs: 50, e2eMs: 250, outputTokens: 3, itlMs: [20, 180] }), rec({ outcome: '429', ttftMs: null, e2eMs: 1 })], true);
    assert.equal(s.ttftMs?.count, 2);
    assert.equal(s.ttftMs?.p50, 75);
    assert.deepEqual([s.tpotMs?.count, s.tpotMs?.max], [2, 100]); // (500-100)/4 = 100, (250-50)/2 = 100
    assert.equal(s.itlMs?.count, 6);
    assert.equal(s.itlMs?.max, 180);
    assert.equal(s.e2eMs.count, 2);
  });

  test('a one-token answer has a TTFT but no TPOT; a non-streaming run has only e2e', () => {
    assert.equal(summarizeLatencies([rec({ outputTokens: 1, itlMs: [] })], true).tpotMs?.count, 0);
    const http = summarizeLatencies([rec({ ttftMs: null, itlMs: [] })], false);
    assert.deepEqual([http.ttftMs, http.tpotMs, http.itlMs, http.e2eMs.count], [null, null, null, 1]);
  });

  test('429s and requests cut at the deadline are not errors; every other outcome is', () => {
    assert.equal(errorCount({ '200': 10, '429': 3, cancelled: 2 }), 0);
    assert.equal(errorCount({ '200': 10, '500': 1, network: 2, 'ws:bad': 1 }), 4);
  });
});

describe('Prometheus exposition parser', () => {
  const text = [
    '# HELP moe_serve_requests_total Requests answered.',
    '# TYPE moe_serve_requests_total counter',
    'moe_serve_requests_total{route="/v1/completions",status="200"} 42',
    'moe_serve_requests_total{route="/v1/completions",status="429"} 3',
    'moe_serve_requests_total{route="/v1/chat/completions",status="200"} 8',
    '',
    'moe_serve_requests_running 2',
    'moe_serve_ttft_seconds_bucket{le="0.5"} 17',
    'moe_serve_ttft_seconds_bucket{le="+Inf"} 20',
    'weird_label{path="a \\"quoted\\", comma",x="1"} 1.5e3 1700000000000',
    'nodejs_eventloop_lag_p99_seconds NaN',
    'nodejs_eventloop_lag_mean_seconds Nan',
    'minus_inf -Inf',
  ].join('\n');

  test('reads names, labels (escapes and commas included), values and special values', () => {
    const samples = parseExposition(text);
    assert.equal(samples.length, 10);
    assert.deepEqual(samples[0], { series: 'moe_serve_requests_total{route="/v1/completions",status="200"}', name: 'moe_serve_requests_total', labels: { route: '/v1/completions', status: '200' }, value: 42 });
    assert.deepEqual(samples[3], { series: 'moe_serve_requests_running', name: 'moe_serve_requests_running', labels: {}, value: 2 });
    assert.equal(samples[5]?.labels.le, '+Inf');
    assert.deepEqual(samples[6]?.labels, { path: 'a "quoted", comma', x: '1' });
    assert.equal(samples[6]?.value, 1500);
    assert.ok(Number.isNaN(samples[7]?.value));
    assert.ok(Number.isNaN(samples[8]?.value), "prom-client's 'Nan'");
    assert.equal(samples[9]?.value, -Infinity);
  });

  test('sums the samples of a name whose labels match', () => {
    const samples = parseExposition(text);
    assert.equal(sumOf(samples, 'moe_serve_requests_total'), 53);
    assert.equal(sumOf(samples, 'moe_serve_requests_total', { status: '200' }), 50);
    assert.equal(sumOf(samples, 'moe_serve_requests_total', { route: '/v1/completions', status: '429' }), 3);
    assert.equal(sumOf(samples, 'no_such_metric'), 0);
  });

  test('a malformed line is an error naming its line number', () => {
    assert.throws(() => parseExposition('ok_metric 1\nbroken line here\n'), (err: unknown) => err instanceof ExpositionFormatError && err.lineNumber === 2);
    assert.throws(() => parseExposition('m{a="1" junk} 1'), ExpositionFormatError);
    assert.throws(() => parseExposition('m 1x'), ExpositionFormatError);
  });
});

describe('Poisson arrivals', () => {
  test('gaps from a seeded RNG have mean 1/rate (within 3%) and the spread of an exponential', () => {
    const rate = 20;
    const gaps = poissonGapsMs(rate, createRng(123));
    const xs = Array.from({ length: 20_000 }, () => gaps.next().value);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    assert.ok(Math.abs(mean - 1000 / rate) / (1000 / rate) < 0.03, `mean gap ${mean} ms, expected ${1000 / rate}`);
    // An exponential's standard deviation equals its mean; a fixed rate would have none.
    const sd = Math.sqrt(xs.reduce((s, x) => s + (x - mean) ** 2, 0) / xs.length);
    assert.ok(Math.abs(sd - mean) / mean < 0.05, `sd ${sd}, mean ${mean}`);
    assert.ok(xs.every((x) => x >= 0));
  });

  test('the same seed gives the same arrivals; a different one does not', () => {
    const take = (seed: number) => Array.from({ length: 5 }, ((g) => () => g.next().value)(poissonGapsMs(5, createRng(seed))));
    assert.deepEqual(take(7), take(7));
    assert.notDeepEqual(take(7), take(8));
  });

  test('a rate that is not a positive number is refused', () => {
    assert.throws(() => poissonGapsMs(0, createRng(1)).next(), RangeError);
    assert.throws(() => poissonGapsMs(Number.POSITIVE_INFINITY, createRng(1)).next(), RangeError);
  });
});

describe('arrival drivers', () => {
  const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

  test('a closed loop keeps exactly C requests in flight and stops at the request count', async () => {
    let inFlight = 0;
    let most = 0;
    const seen: number[] = [];
    const r = await drive({ mode: 'closed', concurrency: 3, durationMs: 10_000, maxRequests: 12 }, async (i) => {
      most = Math.max(most, ++inFlight);
      seen.push(i);
      await sleep(5);
      inFlight--;
    });
    assert.equal(r.sent, 12);
    assert.equal(most, 3);
    assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i));
  });

  test('a closed loop stops sending at the time bound', async () => {
    const r = await drive({ mode: 'closed', concurrency: 2, durationMs: 200, maxRequests: 1_000_000 }, () => sleep(20));
    assert.ok(r.sent >= 10 && r.sent <= 24, `sent ${r.sent}`);
    assert.ok(r.wallMs >= 200 && r.wallMs < 400, `wall ${r.wallMs} ms`);
  });

  test('Poisson arrivals come at about the rate, capped in flight, and stop at either bound', async () => {
    const r = await drive({ mode: 'poisson', concurrency: 100, ratePerSecond: 200, durationMs: 500, maxRequests: 10_000, seed: 1 }, () => sleep(1));
    assert.ok(r.sent >= 60 && r.sent <= 140, `sent ${r.sent} in 0.5 s at 200/s`);
    let inFlight = 0;
    let most = 0;
    const capped = await drive({ mode: 'poisson', concurrency: 2, ratePerSecond: 1000, durationMs: 5_000, maxRequests: 20, seed: 2 }, async () => {
      most = Math.max(most, ++inFlight);
      await sleep(10);
      inFlight--;
    });
    assert.equal(capped.sent, 20);
    assert.equal(most, 2);
  });
});
