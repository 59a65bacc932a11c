// Cheap checks first: a prompt too long for the context, an oversized stop string and a long model name
// are refused before anything is tokenized (tokenizing 1,000,000 characters blocked the event loop 2 s).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { promptCharLimit, MAX_STOP_CHARS } from '../../src/api/input-limits.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { MODEL_NAME, startServer, type TestServer } from '../helpers/api-server.js';
import { F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

describe('input size limits', () => {
  let model: MoeModel;
  let server: TestServer;
  let encoded = 0;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
    const encode = model.tokenizer.encode.bind(model.tokenizer);
    model.tokenizer.encode = (...args: Parameters<typeof encode>) => {
      encoded++;
      return encode(...args);
    };
    server = await startServer(model);
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });
  const post = async (path: string, body: object) => {
    const r = await fetch(`${server.baseURL}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, error: ((await r.json()) as { error?: { message: string; param: string | null; code: string | null } }).error };
  };

  test('a 1,000,000-character prompt is refused with 400 before it is tokenized', async () => {
    assert.ok(promptCharLimit(model) < 1_000_000, `limit ${promptCharLimit(model)}`);
    const before = encoded;
    const r = await post('/completions', { model: MODEL_NAME, prompt: 'word '.repeat(200_000), max_tokens: 1 });
    assert.equal(r.status, 400);
    assert.equal(r.error?.code, 'context_length_exceeded');
    assert.equal(r.error?.param, 'prompt');
    assert.equal(encoded, before, 'the tokenizer was not called');
    const chat = await post('/chat/completions', { model: MODEL_NAME, messages: [{ role: 'user', content: 'x'.repeat(1_000_000) }] });
    assert.equal(chat.status, 400);
    assert.equal(chat.error?.param, 'messages');
    assert.equal(encoded, before, 'the chat template and tokenizer were not run');
  });

  test('a prompt just under the limit is not refused by the size check (the token count decides)', async () => {
    const r = await post('/completions', { model: MODEL_NAME, prompt: 'a'.repeat(Math.min(promptCharLimit(model), 4000)), max_tokens: 1 });
    assert.notEqual(r.error?.code, 'stop_too_long');
    assert.ok(r.status === 200 || r.error?.code === 'context_length_exceeded', JSON.stringify(r));
  });

  test(`stop strings over ${MAX_STOP_CHARS} characters are refused`, async () => {
    const r = await post('/completions', { model: MODEL_NAME, prompt: 'The', max_tokens: 1, stop: ['x'.repeat(250_000), 'y'] });
    assert.equal(r.status, 400);
    assert.equal(r.error?.code, 'stop_too_long');
    assert.equal(r.error?.param, 'stop');
    const ok = await post('/completions', { model: MODEL_NAME, prompt: 'The', max_tokens: 1, stop: ['x'.repeat(MAX_STOP_CHARS)] });
    assert.equal(ok.status, 200);
  });

  test('an unknown model name is echoed at most 64 characters long', async () => {
    const r = await post('/completions', { model: 'm'.repeat(100_000), prompt: 'The', max_tokens: 1 });
    assert.equal(r.status, 404);
    assert.ok((r.error?.message.length ?? 0) < 200, r.error?.message);
  });
});
