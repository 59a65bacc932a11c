// One client cannot hurt the others: a connection that stops reading is cut (its requests cancelled, its
// memory freed) once its unsent output stays over the limit; one WebSocket has a bounded number of
// requests; and one client's many queued requests do not keep another client's request waiting.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import type { ClientLimits } from '../../src/api/output-watch.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { engineIdle, MODEL_NAME, startServer, type TestServer } from '../helpers/api-server.js';
import { F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';
import { makeCheckpoint, type TinyCheckpoint } from '../reference/make-checkpoint.js';
import { Client, isEnd } from '../helpers/ws-client.js';

// The kernel takes ~4 MB of a loopback connection's output before anything stays in this process, so a
// client that stops reading is only seen after that. Greedy tiny-moe runs this prompt to max_tokens with no
// end-of-sequence token, and with 20 logprobs a WebSocket token message is ~1.8 KB: four requests on one
// socket make ~7 MB.
const LONG = { model: MODEL_NAME, prompt: 'The Python interpreter', max_tokens: 1000, temperature: 0, logprobs: 20 };
const LIMITS: ClientLimits = { bufferBytes: 64 * 1024, stallMs: 500, maxSocketRequests: 4 };

describe('client limits', () => {
  let model: MoeModel;
  let server: TestServer;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
    server = await startServer(model, { clientLimits: LIMITS, maxSeqs: 4, maxQueue: 32 });
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  test('a WebSocket client that stops reading is closed with 1008 and its requests cancelled', async () => {
    const ws = new WebSocket(`${server.origin.replace('http', 'ws')}/v1/stream`);
    await new Promise<void>((resolve, reject) => ws.once('open', () => resolve()).once('error', reject));
    const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
    const generated = server.engine.stats.tokensGenerated;
    const ids = ['a', 'b', 'c', 'd'];
    for (const id of ids) ws.send(JSON.stringify({ type: 'completion', id, ...LONG }));
    // Stop reading at the socket: the ws library would otherwise keep reading into its own buffers.
    const socket = (ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    socket.pause();
    await waitUntil(() => server.engine.stats.tokensGenerated > generated, 30_000, 'the requests started');
    assert.ok(await engineIdle(server.engine, 60_000), 'the stalled socket\'s requests left the engine');
    assert.ok(server.engine.stats.tokensGenerated - generated < ids.length * LONG.max_tokens, 'they were cancelled before their end');
    // The server's close waits behind the output the client never read: reading again reaches it.
    socket.resume();
    const code = await withTimeout(closed, 30_000, 'the server never closed the stalled WebSocket');
    assert.ok(code === 1008 || code === 1006, `close code ${code}`);
  });

  test(`one WebSocket may have ${LIMITS.maxSocketRequests} requests at once; more are refused with 429, the rest served`, async () => {
    const c = await Client.open(`${server.origin.replace('http', 'ws')}/v1/stream`);
    try {
      const ids = Array.from({ length: LIMITS.maxSocketRequests + 3 }, (_, i) => `r${i}`);
      for (const id of ids) c.send({ type: 'completion', id, model: MODEL_NAME, prompt: 'Hello', max_tokens: 16, temperature: 0 });
      const ends = await Promise.all(ids.map((id) => c.next(isEnd(id))));
      const refused = ends.filter((m) => m.type === 'error');
      assert.equal(refused.length, 3, JSON.stringify(ends));
      for (const m of refused) assert.equal(m.error?.code, 'too_many_socket_requests');
      assert.equal(ends.filter((m) => m.type === 'done').length, LIMITS.maxSocketRequests);
    } finally {
      await c.close();
    }
  });
});

// One SSE answer from tiny-moe is at most ~1.8 MB (its context is 1,024 tokens), which the kernel's buffers
// hold whole; a random checkpoint with an 8,192-token context and no end-of-sequence token makes ~7 MB.
const MAX = 8000;

describe('client limits: SSE', () => {
  let checkpoint: TinyCheckpoint;
  let model: MoeModel;
  let server: TestServer;
  before(async () => {
    checkpoint = await makeCheckpoint({ family: 'mixtral', config: { max_position_embeddings: 8192 } });
    model = await MoeModel.load(checkpoint.dir, { device: 'cpu', compute: F32 });
    Object.defineProperty(model, 'eosTokenIds', { value: [] });
    server = await startServer(model, { clientLimits: LIMITS });
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
    await checkpoint[Symbol.asyncDispose]();
  });

  test('an SSE client that stops reading is disconnected and its request cancelled; others are served', async () => {
    const url = new URL(`${server.baseURL}/completions`);
    let resume = () => undefined as void;
    let body = '';
    const closed = new Promise<void>((resolve, reject) => {
      const req = request(url, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
        res.once('data', (d: Buffer) => {
          body += d.toString();
          // Reads nothing more: the server's output piles up behind the full socket.
          res.pause();
          resume = () => {
            res.on('data', (more: Buffer) => (body += more.toString()));
            res.resume();
          };
        });
        res.socket.once('close', () => resolve());
      });
      req.once('error', reject);
      req.end(JSON.stringify({ model: MODEL_NAME, prompt: 'The', max_tokens: MAX, temperature: 0, logprobs: 20, stream: true }));
    });
    await waitUntil(() => server.engine.stats.tokensGenerated > 0, 30_000, 'the request started');
    assert.ok(await engineIdle(server.engine, 60_000), 'the stalled request left the engine');
    assert.ok(server.engine.stats.tokensGenerated < MAX, `cancelled before its end: ${server.engine.stats.tokensGenerated} tokens`);
    resume();
    await withTimeout(closed, 30_000, 'the server never closed the stalled SSE connection');
    assert.ok(!body.includes('[DONE]'), 'the stream was cut, not finished');
    const other = await server.client.completions.create({ model: MODEL_NAME, prompt: 'Hello', max_tokens: 4, temperature: 0 });
    assert.equal(other.choices[0]?.finish_reason, 'length');
  });
});

async function waitUntil(ok: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
