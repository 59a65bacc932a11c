// response_format through the official client on the embedded model: json_object and json_schema outputs
// parse and validate, for 20 prompts sent at once (each sequence's grammar masks its own logits inside
// the batch), streamed and not; a schema the grammar engine cannot enforce is a 400.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { BENCH_PROMPTS } from '../../src/cli/bench-prompts.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { MODEL_NAME as MODEL, startServer, type TestServer } from '../helpers/api-server.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const PROMPTS = Array.from({ length: 20 }, (_, i) => BENCH_PROMPTS[i % BENCH_PROMPTS.length] as string);

const SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 24 },
    count: { type: 'integer', minimum: 0, maximum: 1000 },
    ok: { type: 'boolean' },
    kind: { enum: ['module', 'function', 'class'] },
    tags: { type: 'array', items: { type: 'string', maxLength: 12 }, maxItems: 3 },
    where: { type: 'object', properties: { line: { type: 'integer', minimum: 1, maximum: 9999 } }, required: ['line'], additionalProperties: false },
  },
  required: ['name', 'count', 'ok', 'kind', 'tags', 'where'],
  additionalProperties: false,
} as const;

describe('response_format with the official client', () => {
  let model: MoeModel;
  let server: TestServer;
  const validate = new Ajv({ strict: true }).compile(SCHEMA);
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu' });
    server = await startServer(model, { maxSeqs: 20, maxQueue: 64 });
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  test('json_object: 20 chat answers sent at once are each one JSON object', async () => {
    const answers = await Promise.all(PROMPTS.map((content, i) =>
      server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 400, temperature: 0.7, seed: i, response_format: { type: 'json_object' } })));
    for (const a of answers) {
      const text = a.choices[0]?.message.content ?? '';
      assert.equal(a.choices[0]?.finish_reason, 'stop', `ended before the JSON was complete: ${text}`);
      const parsed: unknown = JSON.parse(text);
      assert.ok(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed), text);
    }
  });

  test('json_schema: 20 completions sent at once parse and validate against the schema', async () => {
    const answers = await Promise.all(PROMPTS.map((prompt, i) =>
      server.client.completions.create({
        model: MODEL,
        prompt,
        max_tokens: 400,
        temperature: 0.7,
        seed: 100 + i,
        response_format: { type: 'json_schema', json_schema: { name: 'item', schema: SCHEMA, strict: true } },
      } as OpenAI.CompletionCreateParamsNonStreaming)));
    for (const a of answers) {
      const text = a.choices[0]?.text ?? '';
      assert.equal(a.choices[0]?.finish_reason, 'stop', `ended before the JSON was complete: ${text}`);
      assert.ok(validate(JSON.parse(text)), `${text}: ${JSON.stringify(validate.errors)}`);
    }
  });

  test('json_schema streamed with n = 2: each choice\'s text validates, and greedy is the same with and without streaming', async () => {
    const body = { model: MODEL, messages: [{ role: 'user' as const, content: 'Describe os.path' }], max_tokens: 400, temperature: 0, n: 2, response_format: { type: 'json_schema' as const, json_schema: { name: 'item', schema: SCHEMA } } };
    const whole = await server.client.chat.completions.create(body);
    const stream = await server.client.chat.completions.create({ ...body, stream: true });
    const texts = ['', ''];
    for await (const chunk of stream) for (const c of chunk.choices) texts[c.index] += c.delta.content ?? '';
    assert.deepEqual(texts, whole.choices.map((c) => c.message.content));
    for (const t of texts) assert.ok(validate(JSON.parse(t)), t);
  });

  test('without a response_format the same request is not JSON: the grammar is what makes it so', async () => {
    const a = await server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Describe os.path' }], max_tokens: 40, temperature: 0 });
    assert.throws(() => JSON.parse(a.choices[0]?.message.content ?? ''));
  });

  test('a schema the grammar engine cannot enforce, or cannot compile, is a 400 naming response_format', async () => {
    for (const schema of [{ type: 'object', not: { required: ['a'] } }, { type: 'no-such-type' }, { type: 'integer', minimum: 5, maximum: 1 }]) {
      const err = await server.client.chat.completions
        .create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 4, response_format: { type: 'json_schema', json_schema: { name: 'bad', schema } } })
        .then(() => assert.fail(`accepted ${JSON.stringify(schema)}`), (e: unknown) => e);
      assert.ok(err instanceof OpenAI.APIError && err.status === 400, String(err));
      assert.equal((err.error as { param?: string }).param, 'response_format');
    }
    // The server goes on serving constrained requests.
    const ok = await server.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 200, temperature: 0, response_format: { type: 'json_object' } });
    JSON.parse(ok.choices[0]?.message.content ?? '');
  });
});
