// CI's load test: the real `npm run loadtest` entry as a child process with --smoke (one policy, one
// budget, concurrency 2, ~3 s per client) against a real server it starts on 127.0.0.1; and a 10-second
// --soak (~1 minute with the drain: the stopped readers' whole-context answers finish after it).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import type { RunResult } from '../../load-tests/load-run.js';
import { SOAK_CLIENT_KINDS } from '../../load-tests/soak-clients.js';
import { SOAK_OUTCOMES } from '../../load-tests/soak-outcome.js';
import type { SoakReport } from '../../load-tests/soak-report.js';
import { REPO_ROOT } from '../helpers/paths.js';

const LOADTEST_PATH = join(REPO_ROOT, 'dist', 'load-tests', 'main.js');
const out = mkdtempSync(join(tmpdir(), 'moe-serve-loadtest-'));
after(() => rmSync(out, { recursive: true, force: true }));

test('loadtest --smoke writes report.md, report.html and results.json with tokens flowing and no errors', { timeout: 90_000 }, async () => {
  const { stderr } = await promisify(execFile)(process.execPath, [LOADTEST_PATH, '--smoke', '--out', out], { timeout: 80_000 });
  for (const file of ['report.md', 'report.html', 'results.json']) assert.ok(existsSync(join(out, file)), `${file} written`);
  const { results } = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as { results: RunResult[] };
  assert.deepEqual(results.map((r) => [r.policy, r.budgetPercent, r.concurrency, r.client]), [['lru', 25, 2, 'http'], ['lru', 25, 2, 'sse']], stderr);
  for (const r of results) {
    assert.ok(r.tokensPerSecond > 0, `${r.client}: tokens/s ${r.tokensPerSecond}`);
    assert.ok(r.completed > 0);
    assert.equal(r.errors, 0, `${r.client}: outcomes ${JSON.stringify(r.outcomes)}`);
    assert.ok(r.server.accesses > 0 && r.server.hitRatio !== null, 'the expert cache was used during the run');
    assert.ok(r.wallMs < 3000 + 5000, `${r.client} run bounded in time: ${r.wallMs} ms`);
  }
  assert.ok(results[1]!.latency.ttftMs!.p50! > 0 && results[1]!.latency.itlMs!.count > 0, 'the SSE run measured token times');
  const md = readFileSync(join(out, 'report.md'), 'utf8');
  assert.match(md, /npm run loadtest -- --smoke --out /);
  assert.match(md, /\| lru \| 25% \| fifo \| 2 \|/);
  assert.match(md, /No run had an error response other than deliberate overload \(429\)/);
  const html = readFileSync(join(out, 'report.html'), 'utf8');
  assert.equal((html.match(/<svg /g) ?? []).length, 10, 'five charts per client');
});

test('loadtest --soak 10s accounts for every request (none lost, no 5xx) and writes report.md, rss.svg and results.json', { timeout: 200_000 }, async () => {
  const soakOut = join(out, 'soak');
  // Exit status 1 is expected when RSS grew: 10 s is no time for memory to settle, so that check is not asserted.
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    execFile(process.execPath, [LOADTEST_PATH, '--soak', '10s', '--out', soakOut], { timeout: 180_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stderr });
    });
  });
  for (const file of ['report.md', 'rss.svg', 'results.json', 'server.log']) assert.ok(existsSync(join(soakOut, file)), `${file} written; stderr: ${stderr}`);
  const report = JSON.parse(readFileSync(join(soakOut, 'results.json'), 'utf8')) as SoakReport;
  const { run } = report;
  const counted = SOAK_CLIENT_KINDS.reduce((n, k) => n + SOAK_OUTCOMES.reduce((m, o) => m + run.outcomesByKind[k][o], 0), 0);
  assert.equal(counted, run.requests, 'every request has exactly one outcome');
  for (const k of run.spec.kinds) assert.ok(SOAK_OUTCOMES.some((o) => run.outcomesByKind[k][o] > 0), `${k} sent requests`);
  const total = (o: (typeof SOAK_OUTCOMES)[number]) => SOAK_CLIENT_KINDS.reduce((n, k) => n + run.outcomesByKind[k][o], 0);
  assert.deepEqual([total('lost'), total('server-error'), total('other-error')], [0, 0, 0], JSON.stringify(run.failures));
  assert.ok(total('complete') > 0 && total('cancelled') > 0, JSON.stringify(run.outcomesByKind));
  assert.equal(run.idleAfterMs !== null, true, 'the server had nothing left running after the last answer');
  assert.ok(run.samples.length >= 8 && run.samples.every((s) => s.rssBytes! > 0 && s.eventLoopDelayMs !== null), `${run.samples.length} samples with RSS and event-loop delay`);
  assert.ok(report.rss !== null && report.rss.startBytes > 0 && report.eventLoop !== null && report.eventLoop.p99MaxMs > 0);
  assert.deepEqual(report.checks.filter((c) => !c.pass).map((c) => c.name).filter((n) => n !== 'RSS growth after warm-up'), []);
  assert.equal(code, report.pass ? 0 : 1, stderr);
  const md = readFileSync(join(soakOut, 'report.md'), 'utf8');
  assert.match(md, /npm run loadtest -- --soak 10s --out /);
  assert.match(md, /moe-serve serve --host 127\.0\.0\.1 --port 0 .*--max-seqs 16 --max-queue 64/);
  assert.match(md, /\| lost requests \| 0 \| 0 \| yes \|/);
  assert.match(md, /event-loop delay .* p99 at most \*\*[\d.]+ ms\*\*/);
  assert.match(readFileSync(join(soakOut, 'rss.svg'), 'utf8'), /<polyline data-series="RSS"/);
});
