// What clients and operators see when the engine fails: a 500 body that says "internal error" with a
// request id and nothing of the model's files, the details in the log under that id, and /health turning
// 503 'failing' only once requests keep failing (FAILING_AFTER in a row), back to 200 at the next token.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FAILING_AFTER } from '../../src/engine/batch-engine.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { MODEL_NAME, startServer, type TestServer } from '../helpers/api-server.js';
import { F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const SECRET = 'weights at /srv/models/secret/model-00003.safetensors: tensor model.layers.3.block_sparse_moe.experts.7.w2.weight has shape [256, 256]';

describe('failure reporting', () => {
  let model: MoeModel;
  let server: TestServer;
  let realStep: MoeModel['forward']['stepBatch'];
  const logged: string[] = [];
  let realWrite: typeof process.stderr.write;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
    server = await startServer(model);
    realStep = model.forward.stepBatch.bind(model.forward);
    realWrite = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
      logged.push(String(chunk));
      return realWrite(chunk, ...rest);
    }) as typeof process.stderr.write;
  });
  after(async () => {
    process.stderr.write = realWrite;
    model.forward.stepBatch = realStep;
    await server.close();
    await model[Symbol.asyncDispose]();
  });
  const breakEngine = () => {
    model.forward.stepBatch = async () => {
      throw new Error(SECRET);
    };
  };
  const mendEngine = () => (model.forward.stepBatch = realStep);
  const complete = (body: object) =>
    fetch(`${server.baseURL}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL_NAME, prompt: 'The', max_tokens: 2, ...body }) });

  test('a 500 says only "internal error" and a request id; the log has the details under that id', async () => {
    breakEngine();
    try {
      const r = await fetch(`${server.baseURL}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL_NAME, prompt: 'The', max_tokens: 2 }) });
      assert.equal(r.status, 500);
      const body = (await r.json()) as { error: { message: string; type: string; code: string } };
      const id = r.headers.get('x-request-id');
      assert.ok(id, 'the 500 carries x-request-id');
      assert.equal(body.error.message, `internal error (request id ${id})`);
      assert.equal(body.error.type, 'server_error');
      assert.ok(!JSON.stringify(body).includes('/srv/'), 'no path in the body');
      const line = logged.find((l) => l.includes(id));
      assert.ok(line?.includes(SECRET), `the log holds the details under ${id}: ${logged.join('')}`);

      // The same for a stream, whose error travels as an event after the 200.
      const s = await complete({ stream: true });
      const text = await s.text();
      assert.match(text, /"message":"internal error \(request id req-[0-9a-f-]+\)"/);
      assert.ok(!text.includes('/srv/'), text);
    } finally {
      mendEngine();
    }
  });

  test(`/health is 503 'failing' after ${FAILING_AFTER} failed requests in a row, and 200 again after a token`, async () => {
    // A token generated clears the count the test before left.
    assert.equal((await complete({})).status, 200);
    assert.equal((await fetch(`${server.origin}/health`)).status, 200);
    breakEngine();
    try {
      for (let i = 0; i < FAILING_AFTER - 1; i++) assert.equal((await complete({})).status, 500);
      // One failure short of the threshold: a single bad request or a short run of them is no outage.
      assert.equal((await fetch(`${server.origin}/health`)).status, 200);
      assert.equal((await complete({})).status, 500);
      const h = await fetch(`${server.origin}/health`);
      assert.equal(h.status, 503);
      const body = (await h.json()) as { status: string; reason: string };
      assert.equal(body.status, 'failing');
      assert.match(body.reason, new RegExp(`last ${FAILING_AFTER} requests failed`));
      assert.ok(!body.reason.includes('/srv/'), 'the open /health route shows no paths');
    } finally {
      mendEngine();
    }
    assert.equal((await complete({})).status, 200);
    assert.equal((await fetch(`${server.origin}/health`)).status, 200);
  });
});
