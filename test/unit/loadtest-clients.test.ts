// The streaming clients against small fake servers on 127.0.0.1 with known token timings: what they
// measure (TTFT, gaps, output tokens) and how every ending becomes an outcome.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { WebSocketServer } from 'ws';
import { sseCompletion, WsStreamConnection, type CompletionParams } from '../../load-tests/stream-client.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const params = (prompt: string): CompletionParams => ({ model: 'fake', prompt, maxTokens: 3, temperature: 0, seed: 1 });
const FIRST_MS = 60;
const GAP_MS = 40;

describe('streaming clients against fake servers', () => {
  let http: Server;
  let wss: WebSocketServer;
  let base: string;
  let wsBase: string;

  before(async () => {
    http = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', async () => {
        const { prompt } = JSON.parse(body) as { prompt: string };
        if (prompt === 'overload') {
          res.writeHead(429, { 'retry-after': '1', 'content-type': 'application/json' }).end('{"error":{"code":"queue_full"}}');
          return;
        }
        if (prompt === 'broken') {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write('data: {"choices":[{"text":"a"}]}\n\n');
          setTimeout(() => res.destroy(), 10);
          return;
        }
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        await sleep(FIRST_MS);
        for (const [i, text] of ['a', 'b', 'c'].entries()) {
          if (i > 0) await sleep(GAP_MS);
          // The second event arrives split across two writes, as TCP may deliver it.
          const event = `data: {"choices":[{"text":"${text}","index":0,"finish_reason":null}]}\n\n`;
          if (i === 1) {
            res.write(event.slice(0, 10));
            await sleep(5);
            res.write(event.slice(10));
          } else res.write(event);
        }
        res.write('data: {"choices":[{"text":"","finish_reason":"length"}]}\n\n');
        res.write('data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}\n\n');
        res.end('data: [DONE]\n\n');
      });
    });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
    // The first fetch of a process loads undici and compiles its stream code (~20-60 ms): not the server's time.
    await sseCompletion(base, params('warm-up'), new AbortController().signal);

    wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: '/v1/stream' });
    await new Promise<void>((resolve) => wss.once('listening', resolve));
    wsBase = `http://127.0.0.1:${(wss.address() as AddressInfo).port}`;
    wss.on('connection', (socket) => {
      socket.on('message', async (data) => {
        const m = JSON.parse(String(data)) as { type: string; id: string; prompt: string };
        if (m.type !== 'completion') return;
        const send = (o: object) => socket.send(JSON.stringify({ id: m.id, ...o }));
        if (m.prompt === 'overload') return send({ type: 'error', error: { message: 'full', type: 'rate_limit_error', param: null, code: 'queue_full' } });
        if (m.prompt === 'bad') return send({ type: 'error', error: { message: 'no', type: 'invalid_request_error', param: 'prompt', code: 'empty_prompt' } });
        await sleep(FIRST_MS);
        for (let i = 0; i < 3; i++) {
          if (i > 0) await sleep(GAP_MS);
          send({ type: 'token', text: 'x', token_ids: [i] });
        }
        send({ type: 'done', finish_reason: 'length', usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 } });
      });
    });
  });

  after(async () => {
    await new Promise((resolve) => http.close(resolve));
    await new Promise((resolve) => wss.close(resolve));
  });

  const assertTimings = (r: { outcome: string; ttftMs: number | null; e2eMs: number; outputTokens: number; itlMs: readonly number[] }) => {
    assert.equal(r.outcome, '200');
    assert.equal(r.outputTokens, 3);
    assert.ok(r.ttftMs !== null && r.ttftMs >= FIRST_MS - 5 && r.ttftMs < FIRST_MS + 150, `TTFT ${r.ttftMs}`);
    assert.equal(r.itlMs.length, 2, 'two gaps between three token messages');
    for (const gap of r.itlMs) assert.ok(gap >= GAP_MS - 5 && gap < GAP_MS + 150, `gaps ${r.itlMs.join(", ")}`);
    assert.ok(r.e2eMs >= r.ttftMs! + r.itlMs[0]! + r.itlMs[1]! - 1);
  };

  test('SSE: TTFT, the gaps between token chunks (a chunk split across reads counts once) and usage tokens', async () => {
    assertTimings(await sseCompletion(base, params('hello'), new AbortController().signal));
  });

  test('SSE: a 429 is overload, a stream cut before [DONE] is an error, an aborted request is cancelled', async () => {
    assert.equal((await sseCompletion(base, params('overload'), new AbortController().signal)).outcome, '429');
    assert.equal((await sseCompletion(base, params('broken'), new AbortController().signal)).outcome, 'network');
    assert.equal((await sseCompletion(base, params('hello'), AbortSignal.timeout(20))).outcome, 'cancelled');
  });

  test('WebSocket: concurrent requests on one socket are told apart by id, each with its own timings', async () => {
    await using conn = await WsStreamConnection.open(wsBase);
    const [a, b] = await Promise.all([conn.complete(params('one'), new AbortController().signal), conn.complete(params('two'), new AbortController().signal)]);
    assertTimings(a);
    assertTimings(b);
  });

  test('WebSocket: queue_full is overload, another error is ws:<code>, an abort cancels', async () => {
    await using conn = await WsStreamConnection.open(wsBase);
    assert.equal((await conn.complete(params('overload'), new AbortController().signal)).outcome, '429');
    assert.equal((await conn.complete(params('bad'), new AbortController().signal)).outcome, 'ws:empty_prompt');
    assert.equal((await conn.complete(params('slow'), AbortSignal.timeout(20))).outcome, 'cancelled');
  });

  test('a non-loopback target is refused before anything is sent', async () => {
    await assert.rejects(sseCompletion('http://192.0.2.1:8000', params('x'), new AbortController().signal), /only target 127\.0\.0\.1/);
    await assert.rejects(WsStreamConnection.open('http://192.0.2.1:8000'), /only target 127\.0\.0\.1/);
  });
});
