// The OpenAI request fields beyond one prompt and one choice (n, prompt lists, echo, logit_bias, ignore_eos),
// through the official `openai` client over real loopback sockets, checked against transformers' reference
// where there is one.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { MoeModel } from '../../src/engine/moe-model.js';
import { F32 } from '../helpers/devices.js';
import { apiErrorOf, MODEL_NAME as MODEL, startServer, type TestServer } from '../helpers/api-server.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, readJson, TINY_MOE_DIR } from '../helpers/paths.js';

const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
const [first, second] = reference.prompts as [FixturePrompt, FixturePrompt];

function logSoftmax(logits: readonly number[], token: number): number {
  const max = Math.max(...logits);
  const sum = logits.reduce((s, x) => s + Math.exp(x - max), 0);
  return (logits[token] as number) - max - Math.log(sum);
}

describe('OpenAI request fields through the official client', () => {
  let model: MoeModel;
  let server: TestServer;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
    server = await startServer(model);
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  test('n = 3 greedy: three choices indexed 0..2, each the transformers continuation, the prompt computed once and counted once', async () => {
    const forkedBefore = server.engine.stats.forkedTokens;
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 16, temperature: 0, n: 3 });
    assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
    const greedy = model.tokenizer.decode(first.greedy_ids.slice(0, 16) as never);
    for (const c of r.choices) assert.equal(c.text, greedy);
    assert.equal(r.usage?.prompt_tokens, first.input_ids.length);
    assert.equal(r.usage?.completion_tokens, 48);
    // Choices 1 and 2 took the first choice's prompt KV (all of it but the last token, which they compute).
    assert.equal(server.engine.stats.forkedTokens - forkedBefore, 2 * (first.input_ids.length - 1));
  });

  test('n = 4 sampled with a seed: the choices differ, choice 0 is what n = 1 gives, and streaming gives the same texts by index', async () => {
    const body = { model: MODEL, prompt: second.prompt, max_tokens: 12, temperature: 1, seed: 7 };
    const whole = await server.client.completions.create({ ...body, n: 4 });
    const texts = whole.choices.map((c) => c.text);
    assert.ok(new Set(texts).size > 1, `four sampled choices should not all be equal: ${JSON.stringify(texts)}`);
    const single = await server.client.completions.create(body);
    assert.equal(single.choices[0]?.text, texts[0]);
    const stream = await server.client.completions.create({ ...body, n: 4, stream: true, stream_options: { include_usage: true } });
    const streamed = ['', '', '', ''];
    const finishes = [0, 0, 0, 0];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        streamed[c.index] += c.text;
        if (c.finish_reason) finishes[c.index]! += 1;
      }
      usage = chunk.usage ?? usage;
    }
    assert.deepEqual(streamed, texts);
    assert.deepEqual(finishes, [1, 1, 1, 1], 'each choice finishes once');
    assert.equal(usage?.completion_tokens, whole.usage?.completion_tokens);
    assert.equal(usage?.prompt_tokens, second.input_ids.length);
  });

  test('chat with n = 2, streamed: each choice opens with the assistant role and finishes once', async () => {
    const stream = await server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'What is a list?' }], max_tokens: 8, temperature: 0, n: 2, stream: true });
    const roles = [0, 0];
    const texts = ['', ''];
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        if (c.delta.role === 'assistant') roles[c.index]! += 1;
        texts[c.index] += c.delta.content ?? '';
      }
    }
    assert.deepEqual(roles, [1, 1]);
    assert.equal(texts[0], texts[1], 'greedy choices are the same text');
    const whole = await server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'What is a list?' }], max_tokens: 8, temperature: 0, n: 2 });
    assert.deepEqual(whole.choices.map((c) => [c.index, c.message.content]), [[0, texts[0]], [1, texts[1]]]);
  });

  test('a list of prompts: one choice per prompt (x n) in order, each what the prompt alone gives; token-id prompts are the same prompts', async () => {
    const prompts = [first.prompt, second.prompt];
    const r = await server.client.completions.create({ model: MODEL, prompt: prompts, max_tokens: 10, temperature: 0, n: 2 });
    assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2, 3]);
    const alone = await Promise.all(prompts.map(async (prompt) => (await server.client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0 })).choices[0]?.text));
    assert.deepEqual(r.choices.map((c) => c.text), [alone[0], alone[0], alone[1], alone[1]]);
    assert.equal(r.usage?.prompt_tokens, first.input_ids.length + second.input_ids.length);
    const byIds = await server.client.completions.create({ model: MODEL, prompt: [first.input_ids, second.input_ids], max_tokens: 10, temperature: 0 });
    assert.deepEqual(byIds.choices.map((c) => c.text), alone);
    const oneIds = await server.client.completions.create({ model: MODEL, prompt: first.input_ids, max_tokens: 10, temperature: 0 });
    assert.equal(oneIds.choices[0]?.text, alone[0]);
  });

  test('echo returns the prompt before the completion, streamed and not', async () => {
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 8, temperature: 0, echo: true });
    const plain = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 8, temperature: 0 });
    assert.equal(r.choices[0]?.text, first.prompt + plain.choices[0]?.text);
    const stream = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 8, temperature: 0, echo: true, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    assert.equal(text, r.choices[0]?.text);
  });

  test('echo with logprobs scores the prompt as transformers does: first token null, the greedy continuation the top token at every position', async () => {
    // The prompt followed by transformers' greedy continuation, scored with max_tokens 0.
    const ids = [...first.input_ids, ...first.greedy_ids.slice(0, 12)];
    const r = await server.client.completions.create({ model: MODEL, prompt: ids, max_tokens: 0, echo: true, logprobs: 2, temperature: 0 });
    const lp = r.choices[0]?.logprobs;
    assert.ok(lp?.tokens && lp.token_logprobs && lp.top_logprobs && lp.text_offset);
    assert.equal(lp.tokens.length, ids.length);
    assert.equal(lp.token_logprobs[0], null);
    assert.equal(lp.top_logprobs[0], null);
    assert.equal(r.usage?.completion_tokens, 0);
    assert.equal(r.choices[0]?.finish_reason, 'length');
    for (let t = first.input_ids.length; t < ids.length; t++) {
      const top = lp.top_logprobs[t] as Record<string, number>;
      const best = Math.max(...Object.values(top));
      assert.ok(Math.abs((lp.token_logprobs[t] as number) - best) < 1e-5, `position ${t}: the greedy token is the most likely`);
    }
    // The first continuation token's logprob under transformers' last-position logits.
    const expected = logSoftmax(first.last_logits as number[], first.greedy_ids[0] as number);
    assert.ok(Math.abs((lp.token_logprobs[first.input_ids.length] as number) - expected) < 2e-3, `${lp.token_logprobs[first.input_ids.length]} vs ${expected}`);
    assert.deepEqual(lp.text_offset.slice(0, 3), [0, lp.tokens[0]?.length, (lp.tokens[0]?.length ?? 0) + (lp.tokens[1]?.length ?? 0)]);
  });

  test('echo with logprobs and a completion: the prompt tokens, then the generated ones with offsets past the prompt', async () => {
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 4, echo: true, logprobs: 1, temperature: 0 });
    const lp = r.choices[0]?.logprobs;
    assert.equal(lp?.tokens?.length, first.input_ids.length + 4);
    assert.equal(lp?.text_offset?.[first.input_ids.length], first.prompt.length);
    assert.ok(r.choices[0]?.text.startsWith(first.prompt));
  });

  test('logit_bias +100 forces a token and -100 bans one', async () => {
    const forced = 65; // any token; +100 outweighs whatever the model prefers
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 6, temperature: 0, logit_bias: { [forced]: 100 }, logprobs: 0 });
    assert.deepEqual(r.choices[0]?.logprobs?.tokens, Array(6).fill(model.tokenizer.decode([forced] as never)));
    const banned = first.greedy_ids[0] as number;
    const b = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 16, temperature: 0, logit_bias: { [banned]: -100 }, logprobs: 0 });
    const plain = model.tokenizer.decode(first.greedy_ids.slice(0, 16) as never);
    assert.notEqual(b.choices[0]?.text, plain);
    assert.ok(!b.choices[0]?.logprobs?.tokens?.includes(model.tokenizer.decode([banned] as never)), 'the banned token never appears');
  });

  test('ignore_eos generates exactly max_tokens', async () => {
    const eos = model.eosTokenIds[0] as number;
    // Biased towards end-of-sequence, a request ends at once, unless it ignores it.
    const stopping = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 10, temperature: 0, logit_bias: { [eos]: 100 } });
    assert.equal(stopping.usage?.completion_tokens, 1);
    const r = await server.client.completions.create({ model: MODEL, prompt: first.prompt, max_tokens: 10, temperature: 0, logit_bias: { [eos]: 100 }, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(r.usage?.completion_tokens, 10);
    assert.equal(r.choices[0]?.finish_reason, 'length');
  });

  test('out-of-range fields are refused with 400 naming the field', async () => {
    const cases: [object, string][] = [
      [{ prompt: 'x', n: 17 }, 'n'],
      [{ prompt: 'x', n: 0 }, 'n'],
      [{ prompt: 'x', logit_bias: { [model.spec.vocabSize]: 1 } }, 'logit_bias'],
      [{ prompt: 'x', logit_bias: { 5: 101 } }, 'logit_bias.5'],
      [{ prompt: 'x', logit_bias: { abc: 1 } }, 'logit_bias.abc'],
      [{ prompt: 'x', max_tokens: 0 }, 'max_tokens'],
      [{ prompt: [1, model.spec.vocabSize] }, 'prompt'],
      [{ prompt: [] }, 'prompt'],
      [{ prompt: [[]] }, 'prompt.0'],
    ];
    for (const [body, param] of cases) {
      const err = await apiErrorOf(server.client.completions.create({ model: MODEL, ...body } as OpenAI.CompletionCreateParamsNonStreaming));
      assert.equal(err.status, 400, JSON.stringify(body));
      assert.equal((err.error as { param?: string }).param, param, JSON.stringify(body));
    }
  });

  test('a request of more sequences than the server can ever queue is a 400, not a 429 to retry', async () => {
    const capacity = server.engine.queueCapacity;
    const prompts = Array.from({ length: Math.ceil((capacity + 1) / 16) }, () => 'x');
    const err = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: prompts, n: 16, max_tokens: 1 }));
    assert.equal(err.status, 400);
    assert.equal(err.code, 'too_many_sequences');
  });

  test('a list of prompts is refused whole when one prompt is too long: nothing of it runs', async () => {
    const tooLong = Array(model.spec.maxPositions).fill(5);
    const before = server.engine.stats.steps;
    const err = await apiErrorOf(server.client.completions.create({ model: MODEL, prompt: [[1, 2], tooLong], max_tokens: 2 }));
    assert.equal(err.status, 400);
    assert.equal(err.code, 'context_length_exceeded');
    assert.equal(server.engine.stats.steps, before);
  });
});
