// The HTTP API through the official `openai` client, over real loopback sockets: what a user's code sees.
import assert from 'node:assert/strict';
import { F32 } from '../helpers/devices.js';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { buildApp, EmptyApiKeyError } from '../../src/api/build-app.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { apiErrorOf, engineIdle, MODEL_NAME as MODEL, startServer as start, type TestServer as Server } from '../helpers/api-server.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, readJson, TINY_MOE_DIR } from '../helpers/paths.js';
import { join } from 'node:path';

const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
const first = reference.prompts[0]!;

describe('OpenAI-compatible API with the official client', () => {
  let model: MoeModel;
  let server: Server;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
    server = await start(model);
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  test('a greedy completion is the transformers continuation, with usage', async () => {
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 32, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.choices[0]?.text, first.greedy_text);
    assert.equal(r.choices[0]?.finish_reason, 'length');
    assert.deepEqual(r.usage, { prompt_tokens: 3, completion_tokens: 32, total_tokens: 35, prompt_tokens_details: { cached_tokens: 0 } });
  });

  test('a streamed completion sends the same text in chunks sharing one id, finish_reason only at the end, then usage', async () => {
    const stream = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 32, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    const ids = new Set<string>();
    const finishes: (string | null)[] = [];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      ids.add(chunk.id);
      for (const c of chunk.choices) {
        text += c.text;
        finishes.push(c.finish_reason);
      }
      if (chunk.usage) {
        assert.equal(chunk.choices.length, 0, 'the usage chunk has no choices');
        usage = chunk.usage;
      }
    }
    assert.equal(text, first.greedy_text);
    assert.equal(ids.size, 1);
    assert.equal(finishes.at(-1), 'length');
    assert.ok(finishes.slice(0, -1).every((f) => f === null));
    assert.equal(usage?.completion_tokens, 32);
  });

  test('chat completions, streamed and not, give the same message', async () => {
    const messages = [{ role: 'user' as const, content: 'What does the interpreter do?' }];
    const whole = await server.client.chat.completions.create({ model: MODEL, messages, max_tokens: 16, temperature: 0 });
    assert.equal(whole.object, 'chat.completion');
    assert.equal(whole.choices[0]?.message.role, 'assistant');
    const stream = await server.client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 16, temperature: 0, stream: true });
    let text = '';
    let role: string | undefined;
    for await (const chunk of stream) {
      role ??= chunk.choices[0]?.delta.role;
      text += chunk.choices[0]?.delta.content ?? '';
    }
    assert.equal(role, 'assistant');
    assert.equal(text, whole.choices[0]?.message.content);
  });

  test('a stop sequence ends the text before it with finish_reason stop', async () => {
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 32, temperature: 0, stop: ['thread'] });
    assert.equal(r.choices[0]?.text, first.greedy_text.slice(0, first.greedy_text.indexOf('thread')));
    assert.equal(r.choices[0]?.finish_reason, 'stop');
  });

  test('the same seed gives the same sampled text, even with other requests running', async () => {
    const ask = (seed: number) => server.client.completions.create({ model: MODEL, prompt: 'import os\n', max_tokens: 24, temperature: 1, seed });
    const [a, b, c] = await Promise.all([ask(7), ask(7), ask(8)]);
    assert.equal(a.choices[0]?.text, b.choices[0]?.text);
    assert.notEqual(a.choices[0]?.text, c.choices[0]?.text);
  });

  test('chat logprobs list every generated token with its most likely alternatives; greedy picks the first', async () => {
    const messages = [{ role: 'user' as const, content: 'What is a generator?' }];
    const r = await server.client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0]?.logprobs?.content ?? [];
    assert.equal(content.length, r.usage?.completion_tokens);
    for (const t of content) {
      assert.equal(t.top_logprobs.length, 3);
      assert.ok(t.logprob <= 0);
      assert.equal(t.top_logprobs[0]?.token, t.token, 'greedy chose the most likely token');
      assert.equal(t.top_logprobs[0]?.logprob, t.logprob);
      for (let i = 1; i < 3; i++) assert.ok(t.top_logprobs[i]!.logprob <= t.top_logprobs[i - 1]!.logprob, 'alternatives sorted');
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
    }
    assert.equal(content.map((t) => t.token).join(''), r.choices[0]?.message.content);
  });

  test('completion logprobs in the legacy shape: the same streamed and not', async () => {
    const params = { model: MODEL, prompt: first.prompt, max_tokens: 10, temperature: 0, logprobs: 2 } as const;
    const whole = await server.client.completions.create(params);
    const lp = whole.choices[0]?.logprobs;
    assert.equal(lp?.tokens?.length, 10);
    assert.equal(lp?.tokens?.join(''), whole.choices[0]?.text);
    assert.equal(lp?.text_offset?.[0], 0);
    const streamed: number[] = [];
    for await (const chunk of await server.client.completions.create({ ...params, stream: true })) {
      streamed.push(...(chunk.choices[0]?.logprobs?.token_logprobs ?? []));
    }
    assert.equal(streamed.length, 10);
    streamed.forEach((v, i) => assert.ok(Math.abs(v - lp!.token_logprobs![i]!) < 1e-5));
  });

  test('a frequency penalty makes a greedy completion repeat itself less', async () => {
    const ask = (frequency_penalty: number) => server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 48, temperature: 0, frequency_penalty, logprobs: 0 });
    const repeats = (tokens: readonly string[]) => tokens.length - new Set(tokens).size;
    const plain = await ask(0);
    const penalized = await ask(2);
    assert.equal(plain.choices[0]?.text.startsWith(first.greedy_text), true);
    assert.notEqual(penalized.choices[0]?.text, plain.choices[0]?.text);
    assert.ok(repeats(penalized.choices[0]!.logprobs!.tokens!) < repeats(plain.choices[0]!.logprobs!.tokens!), 'fewer repeated tokens');
  });

  test('unsupported or out-of-range sampling fields are 400s naming the field', async () => {
    const e1 = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: 'x', presence_penalty: 3 }));
    assert.equal(e1.status, 400);
    assert.equal(e1.param, 'presence_penalty');
    const e2 = await apiErrorOf(server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }));
    assert.equal(e2.status, 400);
    assert.equal(e2.param, 'top_logprobs');
    const e3 = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: 'x', best_of: 2 }));
    assert.equal(e3.status, 400);
    assert.equal(e3.param, 'best_of');
  });

  test('GET /v1/experts returns the expert cache statistics', async () => {
    const res = await fetch(`${server.baseURL}/experts`);
    assert.equal(res.status, 200);
    const stats = (await res.json()) as { policy: string; total: { accesses: number }; layers: unknown[] };
    assert.equal(stats.policy, 'next-use');
    assert.ok(stats.total.accesses > 0);
    assert.equal(stats.layers.length, 6);
  });

  test('while the model loads, /health and the API answer 503', async () => {
    const app = buildApp({ serving: () => undefined, modelName: MODEL });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const { port } = app.server.address() as AddressInfo;
      assert.equal((await fetch(`http://127.0.0.1:${port}/health`)).status, 503);
      const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused', maxRetries: 0 });
      const e = await apiErrorOf(client.completions.create({ model: MODEL, prompt: 'x' }));
      assert.equal(e.status, 503);
      assert.equal(e.code, 'model_loading');
    } finally {
      await app.close();
    }
  });

  test('lists the model', async () => {
    const models = await server.client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
  });

  test('errors come back in the OpenAI shape: 400 naming the field, 404 for an unknown model', async () => {
    const bad = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: 'x', temperature: 7 }));
    assert.equal(bad.status, 400);
    assert.equal(bad.type, 'invalid_request_error');
    assert.equal(bad.param, 'temperature');
    const unknown = await apiErrorOf(server.client.completions.create({ model: 'gpt-9', prompt: 'x' }));
    assert.equal(unknown.status, 404);
    assert.equal(unknown.code, 'model_not_found');
    const empty = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: '' }));
    assert.equal(empty.status, 400);
    for (const max_tokens of [-1, 0, 1.5, 10_000_000]) {
      const e = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: 'x', max_tokens }));
      assert.equal(e.status, 400, `max_tokens ${max_tokens}`);
      assert.equal(e.param, 'max_tokens');
    }
    const wrongType = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: 7 as unknown as string }));
    assert.equal(wrongType.param, 'prompt');
    const long = 'The Python interpreter '.repeat(2 * model.spec.maxPositions);
    const tooLong = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: long }));
    assert.equal(tooLong.status, 400);
    assert.equal(tooLong.code, 'context_length_exceeded');
    assert.equal(tooLong.param, 'prompt');
    const chatTooLong = await apiErrorOf(server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: long }] }));
    assert.equal(chatTooLong.param, 'messages');
  });

  test('malformed JSON is a 400 in the OpenAI shape', async () => {
    const res = await fetch(`${server.baseURL}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model": ' });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { type: string; message: string } };
    assert.equal(body.error.type, 'invalid_request_error');
  });

  test('aborting a stream cancels its generation and frees the request', async () => {
    const controller = new AbortController();
    const stream = await server.client.completions.create(
      { model: MODEL, prompt: first.prompt, max_tokens: 900, temperature: 0, stream: true },
      { signal: controller.signal },
    );
    let chunks = 0;
    try {
      for await (const _ of stream) {
        if (++chunks === 3) controller.abort();
      }
    } catch {
      // the client reports the abort
    }
    assert.ok(await engineIdle(server.engine), 'the cancelled request left the engine');
  });

  test('a wrong API key is a 401; /health stays open', async () => {
    const guarded = await start(model, { apiKey: 'secret' });
    try {
      const wrong = new OpenAI({ baseURL: guarded.baseURL, apiKey: 'nope', maxRetries: 0 });
      const e = await apiErrorOf(wrong.models.list());
      assert.equal(e.status, 401);
      assert.equal(e.type, 'authentication_error');
      assert.equal((await guarded.client.models.list()).data.length, 1);
      assert.equal((await fetch(guarded.baseURL.replace('/v1', '/health'))).status, 200);
    } finally {
      await guarded.close();
    }
  });

  test('an empty API key is refused when the app is built, rather than serving without authentication', () => {
    for (const apiKey of ['', ' ']) assert.throws(() => buildApp({ serving: () => undefined, modelName: MODEL, apiKey }), EmptyApiKeyError);
  });

  test('a key that differs in length or in its last character is a 401 alike', async () => {
    const guarded = await start(model, { apiKey: 'secret' });
    try {
      for (const key of ['secres', 'secret-longer', 's']) {
        const e = await apiErrorOf(new OpenAI({ baseURL: guarded.baseURL, apiKey: key, maxRetries: 0 }).models.list());
        assert.equal(e.status, 401, key);
      }
    } finally {
      await guarded.close();
    }
  });

  test('a full queue answers 429 with Retry-After', async () => {
    const tight = await start(model, { maxSeqs: 1, maxQueue: 1 });
    try {
      const ask = () => tight.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 8, temperature: 0 });
      const results = await Promise.allSettled([ask(), ask(), ask(), ask()]);
      const rejected = results.flatMap((r) => (r.status === 'rejected' && r.reason instanceof OpenAI.APIError ? [r.reason] : []));
      assert.ok(rejected.length >= 1, 'some requests were refused');
      for (const e of rejected) {
        assert.equal(e.status, 429);
        assert.equal(e.code, 'queue_full');
        assert.ok(Number(e.headers?.get('retry-after')) > 0);
      }
      assert.ok(results.some((r) => r.status === 'fulfilled'));
    } finally {
      await tight.close();
    }
  });
});
