// WebSocket /v1/stream with a real client (ws) over loopback: requests multiplexed on one socket by id,
// cancellation, closing the socket, and bad messages answered without closing it.
import assert from 'node:assert/strict';
import { F32 } from '../helpers/devices.js';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { MoeModel } from '../../src/engine/moe-model.js';
import { engineIdle, MODEL_NAME, startServer, type TestServer } from '../helpers/api-server.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, readJson, TINY_MOE_DIR } from '../helpers/paths.js';
import { Client, isEnd } from '../helpers/ws-client.js';

const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
const [p0, p1] = reference.prompts as [FixturePrompt, FixturePrompt];

describe('WebSocket /v1/stream', () => {
  let model: MoeModel;
  let server: TestServer;
  let url: string;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
    server = await startServer(model);
    url = `${server.origin.replace('http', 'ws')}/v1/stream`;
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  test('two requests on one socket stream interleaved, each with exactly its own greedy text', async () => {
    const c = await Client.open(url);
    try {
      c.send({ type: 'completion', id: 'a', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 32, temperature: 0 });
      c.send({ type: 'completion', id: 'b', model: MODEL_NAME, prompt: p1.prompt, max_tokens: 32, temperature: 0 });
      const [doneA, doneB] = await Promise.all([c.next(isEnd('a')), c.next(isEnd('b'))]);
      for (const [id, done, p] of [['a', doneA, p0], ['b', doneB, p1]] as const) {
        assert.equal(done.type, 'done', JSON.stringify(done));
        assert.equal(done.finish_reason, 'length');
        assert.equal(done.usage?.completion_tokens, 32);
        const tokens = c.of(id).filter((m) => m.type === 'token');
        assert.equal(tokens.map((m) => m.text).join(''), p.greedy_text);
        assert.equal(tokens.flatMap((m) => m.token_ids ?? []).length, 32);
      }
      // Interleaved: b's first token arrives before a's last.
      const order = c.messages.filter((m) => m.type === 'token').map((m) => m.id);
      assert.ok(order.indexOf('b') < order.lastIndexOf('a'), `tokens were not interleaved: ${order.join('')}`);
    } finally {
      await c.close();
    }
  });

  test('a chat request streams over the socket too', async () => {
    const c = await Client.open(url);
    try {
      c.send({ type: 'chat', id: 'chat', model: MODEL_NAME, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, temperature: 0 });
      const done = await c.next(isEnd('chat'));
      assert.equal(done.type, 'done');
      assert.equal(done.usage?.completion_tokens, c.of('chat').flatMap((m) => m.token_ids ?? []).length);
    } finally {
      await c.close();
    }
  });

  test('cancel stops one request at the next step and leaves the other running', async () => {
    const c = await Client.open(url);
    try {
      c.send({ type: 'completion', id: 'long', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 900, temperature: 0 });
      c.send({ type: 'completion', id: 'short', model: MODEL_NAME, prompt: p1.prompt, max_tokens: 24, temperature: 0 });
      await c.next((m) => m.id === 'long' && m.type === 'token');
      c.send({ type: 'cancel', id: 'long' });
      const cancelled = await c.next(isEnd('long'));
      assert.equal(cancelled.type, 'done');
      assert.equal(cancelled.finish_reason, 'cancelled');
      assert.ok((cancelled.usage?.completion_tokens ?? 900) < 900);
      const short = await c.next(isEnd('short'));
      assert.equal(short.finish_reason, 'length');
      const shortText = c.of('short').filter((m) => m.type === 'token').map((m) => m.text).join('');
      assert.ok(p1.greedy_text.startsWith(shortText) && shortText.length > 0, 'the other request went on undisturbed');
      assert.ok(await engineIdle(server.engine));
    } finally {
      await c.close();
    }
  });

  test('closing the socket cancels its running requests', async () => {
    const c = await Client.open(url);
    c.send({ type: 'completion', id: 'x', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 900, temperature: 0 });
    await c.next((m) => m.id === 'x' && m.type === 'token');
    assert.equal(server.engine.stats.running, 1);
    await c.close();
    assert.ok(await engineIdle(server.engine), 'the request left the engine');
  });

  test('malformed and invalid messages get OpenAI-shaped errors, and the socket keeps working', async () => {
    const c = await Client.open(url);
    try {
      c.send('{"type": "completion", ');
      const bad = await c.next((m) => m.type === 'error' && m.id === null);
      assert.equal(bad.error?.type, 'invalid_request_error');
      assert.equal(bad.error?.code, 'invalid_json');

      c.send({ type: 'completion', id: 'wrong', model: MODEL_NAME, prompt: 42 });
      const wrong = await c.next(isEnd('wrong'));
      assert.equal(wrong.type, 'error');
      assert.equal(wrong.error?.param, 'prompt');

      c.send({ type: 'completion', id: 'nomodel', model: 'gpt-9', prompt: 'x' });
      assert.equal((await c.next(isEnd('nomodel'))).error?.code, 'model_not_found');

      c.send({ type: 'completion', id: 'streaming', model: MODEL_NAME, prompt: 'x', stream: true });
      assert.equal((await c.next(isEnd('streaming'))).error?.param, 'stream');

      c.send({ type: 'cancel', id: 'nothing' });
      assert.equal((await c.next(isEnd('nothing'))).error?.code, 'unknown_id');

      c.send({ type: 'completion', id: 'dup', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 16, temperature: 0 });
      c.send({ type: 'completion', id: 'dup', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 16, temperature: 0 });
      const dupError = await c.next((m) => m.id === 'dup' && m.type === 'error');
      assert.equal(dupError.error?.code, 'duplicate_id');
      const dupDone = await c.next((m) => m.id === 'dup' && m.type === 'done');
      assert.equal(dupDone.usage?.completion_tokens, 16, 'the first request with that id was not disturbed');

      c.send({ type: 'completion', id: 'after', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 4, temperature: 0 });
      assert.equal((await c.next(isEnd('after'))).type, 'done');
    } finally {
      await c.close();
    }
  });

  test('with an API key the upgrade needs the bearer header', async () => {
    const guarded = await startServer(model, { apiKey: 'secret' });
    try {
      const guardedUrl = `${guarded.origin.replace('http', 'ws')}/v1/stream`;
      const status = await new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(guardedUrl);
        ws.once('unexpected-response', (req, res) => {
          resolve(res.statusCode ?? 0);
          req.destroy();
        });
        ws.once('open', () => reject(new Error('opened without a key')));
        ws.once('error', () => undefined);
      });
      assert.equal(status, 401);
      const c = await Client.open(guardedUrl, { authorization: 'Bearer secret' });
      c.send({ type: 'completion', id: 'k', model: MODEL_NAME, prompt: p0.prompt, max_tokens: 2 });
      assert.equal((await c.next(isEnd('k'))).type, 'done');
      await c.close();
    } finally {
      await guarded.close();
    }
  });
});
