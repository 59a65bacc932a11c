// SIGTERM drains: new requests get 503 and /health says 'draining', running requests get --drain-seconds to
// finish, and those still running then are cancelled so that every stream ends with its final event (SSE: a
// chunk with finish_reason, then [DONE]; WebSocket: `done` with finish_reason "cancelled").
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { buildApp } from '../../src/api/build-app.js';
import { InFlight, shutDown } from '../../src/api/graceful-shutdown.js';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { MODEL_NAME } from '../helpers/api-server.js';
import { F32 } from '../helpers/devices.js';
import { waitFor } from '../helpers/cli.js';
import { CLI_PATH, TINY_MOE_DIR } from '../helpers/paths.js';
import { Client, isEnd } from '../helpers/ws-client.js';

// Greedy tiny-moe runs this prompt to max_tokens (no end-of-sequence token): ~3 s or more of work.
const LONG = { model: MODEL_NAME, prompt: 'The Python interpreter', max_tokens: 1000, temperature: 0 };

describe('graceful shutdown', () => {
  let model: MoeModel;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
  });
  after(async () => {
    await model[Symbol.asyncDispose]();
  });

  async function serve() {
    const engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 8, maxQueue: 32 });
    const inFlight = new InFlight();
    let draining = false;
    const app = buildApp({ serving: () => ({ model, engine }), modelName: MODEL_NAME, inFlight, draining: () => draining });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const origin = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const lines: string[] = [];
    const stop = (drainMs: number) => shutDown({ app, engine, inFlight, drainMs, startDraining: () => (draining = true), log: (l) => lines.push(l) });
    return { origin, engine, stop, lines };
  }

  test('unfinished streams are cancelled after the drain, each with its final event; new requests get 503 meanwhile', async () => {
    const s = await serve();
    const sse = fetch(`${s.origin}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...LONG, stream: true }) }).then((r) => r.text());
    const ws = await Client.open(`${s.origin.replace('http', 'ws')}/v1/stream`);
    ws.send({ type: 'completion', id: 'w', ...LONG });
    await ws.next((m) => m.type === 'token');
    await busy(s.engine, 2);
    const stopping = s.stop(300);
    const refused = await fetch(`${s.origin}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...LONG, max_tokens: 1 }) });
    assert.equal(refused.status, 503);
    assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'shutting_down');
    const health = await fetch(`${s.origin}/health`);
    assert.equal(health.status, 503);
    assert.equal(((await health.json()) as { status: string }).status, 'draining');
    const { cancelled } = await stopping;
    assert.equal(cancelled, 2);

    const events = (await sse).split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice('data: '.length));
    assert.equal(events.at(-1), '[DONE]');
    const last = JSON.parse(events.at(-2) ?? '{}') as { choices: { finish_reason: string | null }[] };
    assert.ok(last.choices[0]?.finish_reason, `the last chunk has a finish_reason: ${events.at(-2)}`);
    assert.ok(events.length < LONG.max_tokens, 'the stream was cut short by the shutdown');

    const done = await ws.next(isEnd('w'));
    assert.equal(done.type, 'done');
    assert.equal(done.finish_reason, 'cancelled');
    assert.ok((done.usage?.completion_tokens ?? LONG.max_tokens) < LONG.max_tokens);
  });

  test('requests that finish within the drain finish normally', async () => {
    const s = await serve();
    const answer = fetch(`${s.origin}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...LONG, max_tokens: 100 }) });
    await busy(s.engine, 1);
    const { cancelled } = await s.stop(30_000);
    assert.equal(cancelled, 0);
    const body = (await (await answer).json()) as { choices: { finish_reason: string }[]; usage: { completion_tokens: number } };
    assert.equal(body.choices[0]?.finish_reason, 'length');
    assert.equal(body.usage.completion_tokens, 100);
  });
});

test('`moe-serve serve` on SIGTERM: a WebSocket stream gets done "cancelled" after --drain-seconds, and the process exits 0', async () => {
  const child = spawn(process.execPath, [CLI_PATH, 'serve', '--port', '0', '--drain-seconds', '0.5', '--kv-cache-mb', '64'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const origin = await waitFor(() => /model loaded: serving '\S+' on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr)?.[1], () => stderr);
    assert.match(stderr, /KV budget 64 MiB \(\d+ tokens\)/);
    const modelName = ((await (await fetch(`${origin}/v1/models`)).json()) as { data: { id: string }[] }).data[0]?.id;
    const ws = await Client.open(`${origin.replace('http', 'ws')}/v1/stream`);
    ws.send({ type: 'completion', id: 'w', ...LONG, model: modelName });
    await ws.next((m) => m.type === 'token');
    child.kill('SIGTERM');
    const done = await ws.next(isEnd('w'));
    assert.equal(done.type, 'done', JSON.stringify(done));
    assert.equal(done.finish_reason, 'cancelled');
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /cancelling 1 unfinished requests/);
  } finally {
    child.kill('SIGKILL');
  }
});

/** Waits until `n` requests have reached the engine (running or waiting; or, for one, already generating). */
async function busy(engine: BatchEngine, n: number): Promise<void> {
  const arrived = () => engine.stats.running + engine.stats.waiting >= n || (n === 1 && engine.stats.tokensGenerated > 0);
  await waitFor(() => (arrived() ? true : undefined), () => `engine: ${JSON.stringify(engine.stats)}`, 30_000);
}
