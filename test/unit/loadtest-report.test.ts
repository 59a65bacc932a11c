// The load tests' flags, loopback guard and charts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { lineChartSvg } from '../../src/cli/line-chart-svg.js';
import { assertLoopback, NonLoopbackTargetError } from '../../load-tests/loopback.js';
import { parseLoadtestArgs } from '../../load-tests/options.js';
import { serverArgs } from '../../load-tests/server-launcher.js';
import { UsageError } from '../../src/cli/cli-error.js';
import { commandLine } from '../../load-tests/report-context.js';
import { POLICY_NAMES } from '../../src/experts/policies/index.js';
import type { RunResult } from '../../load-tests/load-run.js';
import { parseExposition } from '../../load-tests/metric-samples.js';
import { summarize } from '../../load-tests/percentiles.js';
import { reportMarkdown } from '../../load-tests/report-md.js';
import { TABLE_HEAD, tableRow } from '../../load-tests/report-table.js';
import { runUtilization } from '../../load-tests/server-snapshot.js';

/** Checks that every tag is closed in order (a small XML well-formedness check for our own output). */
function assertWellFormed(xml: string): void {
  const stack: string[] = [];
  for (const m of xml.matchAll(/<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<>]*")*)\s*(\/?)>/g)) {
    const [, closing, name, , selfClosing] = m;
    if (selfClosing) continue;
    if (closing) assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else stack.push(name!);
  }
  assert.deepEqual(stack, [], 'unclosed elements');
  // Nothing that looks like a tag was left unmatched by the pattern above (e.g. a bad attribute).
  const tags = xml.match(/<[^>]*>/g) ?? [];
  const matched = xml.match(/<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<>]*")*)\s*(\/?)>/g) ?? [];
  assert.equal(matched.length, tags.length, 'a tag with malformed attributes');
}

describe('SVG line chart', () => {
  const chart = {
    title: 'Hit ratio <tiny-moe> & more',
    xLabel: 'budget',
    yLabel: 'hit ratio',
    yRange: [0, 1] as const,
    series: [
      { name: 'lru', color: '#1f77b4', points: [{ x: 50, y: 0.9 }, { x: 10, y: 0.3 }, { x: 25, y: 0.6 }] },
      { name: 'lfu', color: '#ff7f0e', points: [{ x: 10, y: 0.2 }, { x: 25, y: null }, { x: 50, y: 0.8 }] },
      { name: 'Belady bound', color: 'black', dashed: true, points: [{ x: 10, y: 0.4 }, { x: 25, y: 0.7 }, { x: 50, y: 0.95 }] },
    ],
  };

  test('is well-formed SVG with one polyline per series, the bound dashed, text escaped', () => {
    const svg = lineChartSvg(chart);
    assert.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
    assertWellFormed(svg);
    const polylines = [...svg.matchAll(/<polyline data-series="([^"]*)" points="([^"]*)"[^>]*>/g)];
    assert.deepEqual(polylines.map((m) => m[1]), ['lru', 'lfu', 'Belady bound']);
    assert.equal(polylines.filter((m) => m[0].includes('stroke-dasharray')).length, 1);
    assert.ok(polylines[2]![0].includes('stroke-dasharray'));
    assert.ok(svg.includes('Hit ratio &lt;tiny-moe&gt; &amp; more'));
  });

  test('draws points left to right by budget, skips missing values, and puts higher values higher', () => {
    const svg = lineChartSvg(chart);
    const points = (name: string) =>
      [...svg.matchAll(/<polyline data-series="([^"]*)" points="([^"]*)"/g)]
        .find((m) => m[1] === name)![2]!
        .split(' ')
        .map((p) => p.split(',').map(Number) as [number, number]);
    const lru = points('lru');
    assert.equal(lru.length, 3);
    assert.ok(lru[0]![0] < lru[1]![0] && lru[1]![0] < lru[2]![0], 'x ascending');
    assert.ok(lru[0]![1] > lru[1]![1] && lru[1]![1] > lru[2]![1], 'SVG y grows downwards: 0.3 is lowest');
    assert.equal(points('lfu').length, 2);
  });

  test('is a pure function of its input', () => {
    assert.equal(lineChartSvg(chart), lineChartSvg(chart));
  });
});

describe('loadtest flags', () => {
  test('defaults are the documented ones; --smoke is one short configuration', () => {
    const d = parseLoadtestArgs([]);
    assert.deepEqual(d.policies.map((c) => c.label), [...POLICY_NAMES]);
    assert.deepEqual(d.budgetsPercent, [10, 25, 50]);
    assert.deepEqual(d.concurrency, [1, 8, 32]);
    assert.equal(d.durationMs, 30_000);
    assert.deepEqual(d.clients, ['http', 'sse']);
    const s = parseLoadtestArgs(['--smoke', '--out', '/tmp/x']);
    assert.deepEqual([s.policies, s.budgetsPercent, s.concurrency, s.durationMs], [[{ policy: 'lru', label: 'lru' }], [25], [2], 3000]);
    assert.equal(s.outDir, '/tmp/x');
  });

  test('parses lists, durations and Poisson mode', () => {
    const o = parseLoadtestArgs(['--policies', 'lfu,none', '--budgets', '12.5%,100%', '--concurrency', '1,64', '--duration', '1.5m', '--client', 'ws', '--mode', 'poisson', '--rate', '2.5']);
    assert.deepEqual(o.policies, [{ policy: 'lfu', label: 'lfu' }, { policy: 'none', label: 'none' }]);
    // NAME@N also sets the server's prefetch depth.
    assert.deepEqual(parseLoadtestArgs(['--policies', 'next-use@0,lru']).policies, [{ policy: 'next-use', label: 'next-use@0', prefetchDepth: 0 }, { policy: 'lru', label: 'lru' }]);
    assert.deepEqual(o.budgetsPercent, [12.5, 100]);
    assert.deepEqual(o.concurrency, [1, 64]);
    assert.equal(o.durationMs, 90_000);
    assert.equal(parseLoadtestArgs(['--duration', '500ms']).durationMs, 500);
    assert.deepEqual([o.mode, o.ratePerSecond, o.clients], ['poisson', 2.5, ['ws']]);
  });

  const refuses = (args: string[], pattern: RegExp) => assert.throws(() => parseLoadtestArgs(args), (err: unknown) => err instanceof UsageError && pattern.test(err.message));

  test('bad values are refused with a message naming the flag and the value', () => {
    refuses(['--budgets', '150%'], /^--budgets: a budget must be more than 0% and at most 100% \(got "150%"\)/);
    refuses(['--budgets', '0%'], /--budgets: a budget must be more than 0%/);
    refuses(['--budgets', '25'], /--budgets: expected a percentage of all expert bytes/);
    refuses(['--budgets', '10%,,25%'], /--budgets: expected a comma-separated list without empty items/);
    refuses(['--budgets', '10%,10%'], /--budgets: an item is repeated/);
    refuses(['--policies', 'lru,fifo'], /--policies: expected one of lru, lfu, lfu-decay, next-use, static, none, all \(got "fifo"\)/);
    refuses(['--policies', 'lru@x'], /--policies: expected a policy name, optionally with @ and a prefetch depth/);
    refuses(['--policies', 'fifo@1'], /--policies: expected one of lru/);
    refuses(['--concurrency', '0'], /--concurrency:/);
    refuses(['--duration', '30'], /--duration: expected a time like 500ms, 30s or 2m/);
    refuses(['--duration', '11m'], /--duration: a run must last from 100ms to 10m/);
    refuses(['--client', 'grpc'], /--client: expected one of http, sse, ws/);
    refuses(['--mode', 'poisson'], /--mode poisson needs --rate/);
    refuses(['--rate', '3'], /--rate applies to --mode poisson only/);
    refuses(['--bogus'], /Unknown option '--bogus'/);
  });

  test('--scheduling lists the admission orders to compare, fifo by default; expert starts the server with --expert-aware-scheduling', () => {
    assert.deepEqual(parseLoadtestArgs([]).schedulings, ['fifo']);
    assert.deepEqual(parseLoadtestArgs(['--scheduling', 'fifo,expert', '--max-seqs', '8']).schedulings, ['fifo', 'expert']);
    refuses(['--scheduling', 'lifo'], /--scheduling: expected one of fifo, expert \(got "lifo"\)/);
    refuses(['--soak', '30m', '--scheduling', 'expert'], /--scheduling does not apply to --soak/);
    const args = serverArgs({ maxSeqs: 8, expertAwareScheduling: true, logPath: '/dev/null' });
    assert.ok(args.includes('--expert-aware-scheduling'));
    assert.deepEqual(args.slice(args.indexOf('--max-seqs'), args.indexOf('--max-seqs') + 2), ['--max-seqs', '8']);
    assert.ok(!serverArgs({ logPath: '/dev/null' }).includes('--expert-aware-scheduling'));
  });

  test('the report repeats the command with shell quoting', () => {
    assert.equal(commandLine(['--budgets', '10%,25%', '--out', "it's here"]), `npm run loadtest -- --budgets 10%,25% --out 'it'\\''s here'`);
    assert.equal(commandLine([]), 'npm run loadtest');
  });
});

describe('loopback guard', () => {
  test('allows 127.0.0.1 and [::1], refuses every other host, names included', () => {
    assert.equal(assertLoopback('http://127.0.0.1:8000/v1').port, '8000');
    assert.equal(assertLoopback('http://[::1]:8000').hostname, '[::1]');
    for (const url of ['http://10.0.0.1:8000', 'http://example.com', 'http://localhost:8000', 'http://127.0.0.1.example.com']) {
      assert.throws(() => assertLoopback(url), NonLoopbackTargetError, url);
    }
  });
});

describe('report table: S-MBU and S-MFU', () => {
  const exposition = (bytes: number, flops: number, seconds: number) =>
    parseExposition(
      [
        `moe_serve_step_bytes_total ${bytes}`,
        `moe_serve_step_flops_total ${flops}`,
        `moe_serve_step_seconds_total ${seconds}`,
        'moe_serve_peak_memory_bytes_per_second 20000000000',
        'moe_serve_peak_flops_per_second 200000000000',
      ].join('\n'),
    );

  test('come from the step counters\' change over the run and the peaks the server reports', () => {
    const u = runUtilization(exposition(1e9, 1e9, 1), exposition(1e9 + 3e9, 1e9 + 5e9, 1 + 2));
    assert.deepEqual(u, { stepBytes: 3e9, stepFlops: 5e9, stepSeconds: 2, smbu: 3e9 / 2 / 20e9, smfu: 5e9 / 2 / 200e9 });
    assert.deepEqual(runUtilization(exposition(5, 5, 1), exposition(5, 5, 1))?.smbu, null, 'no step ran');
    assert.equal(runUtilization([], parseExposition('moe_serve_requests_running 0')), null, 'a server without the counters');
  });

  test('are columns of the table, after bytes to device, in report.md too', () => {
    const utilization = runUtilization(exposition(0, 0, 0), exposition(3e9, 5e9, 2));
    const none = summarize([]);
    const some = summarize([10, 20]);
    const run = {
      policy: 'lru', budgetPercent: 25, scheduling: 'fifo', client: 'sse', concurrency: 2, mode: 'closed', durationMs: 1000, maxRequests: 10, maxTokens: 8, seed: 0,
      arrivals: 'closed', wallMs: 1000, requests: 2, completed: 2, outputTokens: 16, tokensPerSecond: 16, serverTokensPerSecond: 16,
      latency: { ttftMs: some, tpotMs: some, itlMs: some, e2eMs: some }, outcomes: { '200': 2 }, rejected429: 0, errors: 0,
      server: {
        accesses: 10, hits: 5, hitRatio: 0.5, loads: 5, loadsAvoided: 0.5, bytesToDevice: 2 ** 20, bytesFromDisk: 0, residentBytes: 0, budgetBytes: 0,
        metrics: { generationTokens: 16, promptTokens: 8, requestsByStatus: { '200': 2 }, utilization },
      },
      responsiveness: { healthMs: none, eventLoopDelayMs: null }, beladyHitRatio: null,
    } satisfies RunResult;
    const row = tableRow(run);
    assert.equal(row.length, TABLE_HEAD.length);
    const at = TABLE_HEAD.indexOf('S-MBU');
    assert.equal(TABLE_HEAD[at - 1], 'bytes to device');
    assert.equal(TABLE_HEAD[at + 1], 'S-MFU');
    assert.deepEqual(row.slice(at, at + 2), ['7.5%', '1.25%']);
    const without = tableRow({ ...run, server: { ...run.server, metrics: { ...run.server.metrics, utilization: null } } });
    assert.deepEqual(without.slice(at, at + 2), ['-', '-']);
    const md = reportMarkdown({ command: 'npm run loadtest', date: 'd', machine: 'm', node: 'v', commit: null, model: 'tiny-moe', device: 'cpu', notes: [], workload: 'w' }, [run]);
    assert.match(md, /\| bytes to device \| S-MBU \| S-MFU \|/);
    assert.match(md, /\| 1\.0 MiB \| 7\.5% \| 1\.25% \|/);
    assert.match(md, /\*\*S-MBU\*\* and \*\*S-MFU\*\*/);
  });
});
