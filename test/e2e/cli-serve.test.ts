// `moe-serve serve` as a user runs it: settings from flags and environment variables, a clean shutdown.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cli, waitFor } from '../helpers/cli.js';
import { CLI_PATH } from '../helpers/paths.js';

test('a bad value from the environment is a usage error naming the variable', async () => {
  const r = await cliWithEnv({ MOE_SERVE_PORT: 'eighty' }, 'serve');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /MOE_SERVE_PORT \(--port\)/);
  const flag = await cli('serve', '--cors', 'not a url');
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /--cors/);
});

test('serve takes its settings from the environment, writes a routing trace and stops cleanly on SIGTERM', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-serve-'));
  const tracePath = join(dir, 'trace.jsonl');
  const { child, stderr, exited } = spawnServe(['--max-seqs', '2'], { MOE_SERVE_PORT: '0', MOE_SERVE_MODEL_NAME: 'from-env', MOE_SERVE_API_KEY: 'k', MOE_SERVE_TRACE: tracePath, MOE_SERVE_EXPERT_CACHE_FRACTION: '0.5' });
  try {
    const origin = await waitFor(() => /model loaded: serving 'from-env' on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr())?.[1], stderr);
    const auth = { authorization: 'Bearer k', 'content-type': 'application/json' };
    const models = (await (await fetch(`${origin}/v1/models`, { headers: auth })).json()) as { data: { id: string }[] };
    assert.deepEqual(models.data.map((m) => m.id), ['from-env']);
    const res = await fetch(`${origin}/v1/completions`, { method: 'POST', headers: auth, body: JSON.stringify({ model: 'from-env', prompt: 'The Python interpreter', max_tokens: 5 }) });
    assert.equal(res.status, 200);
    const experts = (await (await fetch(`${origin}/v1/experts`, { headers: auth })).json()) as { budgetBytes: number; totalExpertBytes: number };
    assert.equal(experts.budgetBytes, Math.floor(0.5 * experts.totalExpertBytes));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr());
    const lines = readFileSync(tracePath, 'utf8').trim().split('\n');
    assert.ok(lines.length > 1, 'the trace has a header and token records');
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('serve --expert-aware-scheduling (here from the environment) admits by expert affinity and counts pass-overs in /metrics', async () => {
  const { child, stderr, exited } = spawnServe(['--port', '0', '--max-seqs', '1', '--pass-over-limit', '3', '--expert-cache-fraction', '0.25'], { MOE_SERVE_EXPERT_AWARE_SCHEDULING: '1' });
  try {
    const origin = await waitFor(() => /model loaded: serving '\S+' on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr())?.[1], stderr);
    assert.match(stderr(), /admission expert-aware \(pass-over limit 3\)/);
    const prompts = ['The Python interpreter', 'import os', 'A list comprehension', 'The Python interpreter reads'];
    const statuses = await Promise.all(
      prompts.map((prompt) => fetch(`${origin}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny-moe', prompt, max_tokens: 4 }) }).then((r) => r.status)),
    );
    assert.deepEqual(statuses, [200, 200, 200, 200]);
    const metrics = await (await fetch(`${origin}/metrics`)).text();
    assert.match(metrics, /^moe_serve_scheduler_pass_overs_total \d+$/m);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr());
  } finally {
    child.kill('SIGKILL');
  }
});

test('--pass-over-limit without --expert-aware-scheduling is a usage error', async () => {
  const r = await cli('serve', '--pass-over-limit', '2');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--pass-over-limit applies with --expert-aware-scheduling only/);
});

/** `moe-serve serve` as a child process with these flags and environment variables: its stderr so far, and its exit. */
function spawnServe(args: string[], env: Record<string, string>): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [CLI_PATH, 'serve', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stderr: () => stderr, exited };
}

function cliWithEnv(env: Record<string, string>, ...args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI_PATH, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (code) => resolve({ code, stderr }));
  });
}

test('an empty --api-key is a usage error, not a server without authentication', async () => {
  for (const key of ['', '  ']) {
    const r = await cli('serve', '--api-key', key, '--port', '0');
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--api-key: the key is empty/);
  }
});

test('serve with --trace to a full disk serves every request and says so on /health', { skip: !existsSync('/dev/full') && 'no /dev/full here' }, async () => {
  const child = spawn(process.execPath, [CLI_PATH, 'serve', '--port', '0', '--trace', '/dev/full'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const origin = await waitFor(() => /model loaded: serving '(\S+)' on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr)?.slice(1), () => stderr);
    const [model, url] = origin as [string, string];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: 'The Python interpreter', max_tokens: 5 }) });
      assert.equal(res.status, 200, await res.text());
    }
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    const body = (await health.json()) as { status: string; warnings?: string[] };
    assert.equal(body.status, 'ok');
    assert.match(body.warnings?.[0] ?? '', /routing trace is off after a write error \(ENOSPC\)/);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
  } finally {
    child.kill('SIGKILL');
  }
});
