// CI's load test: the real `npm run loadtest` entry as a child process with --smoke (one policy, one
// budget, concurrency 2, ~3 s per client) against a real server it starts on 127.0.0.1.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import type { RunResult } from '../../load-tests/load-run.js';
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
  assert.match(md, /\| lru \| 25% \| 2 \|/);
  assert.match(md, /No run had an error response other than deliberate overload \(429\)/);
  const html = readFileSync(join(out, 'report.html'), 'utf8');
  assert.equal((html.match(/<svg /g) ?? []).length, 8, 'four charts per client');
});
