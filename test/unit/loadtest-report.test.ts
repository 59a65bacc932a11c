// The load tests' flags, loopback guard and charts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { lineChartSvg } from '../../load-tests/line-chart-svg.js';
import { assertLoopback, NonLoopbackTargetError } from '../../load-tests/loopback.js';
import { parseLoadtestArgs } from '../../load-tests/options.js';
import { serverArgs } from '../../load-tests/server-launcher.js';
import { UsageError } from '../../src/cli/cli-error.js';
import { commandLine } from '../../load-tests/report-context.js';
import { POLICY_NAMES } from '../../src/experts/policies/index.js';

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
