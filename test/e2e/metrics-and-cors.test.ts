// GET /metrics (Prometheus) and CORS, over loopback against the real engine.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { MoeModel } from '../../src/engine/moe-model.js';
import { parseExposition } from '../../load-tests/metric-samples.js';
import { MODEL_NAME, startServer, type TestServer } from '../helpers/api-server.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

describe('metrics and CORS', () => {
  let model: MoeModel;
  let server: TestServer;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', experts: { policy: 'lru', budgetFraction: 0.25 } });
    server = await startServer(model, { apiKey: 'secret', corsOrigins: ['https://app.example'] });
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  const scrape = async () => {
    const res = await fetch(`${server.origin}/metrics`);
    assert.equal(res.status, 200, '/metrics needs no API key');
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    return new Map(parseExposition(await res.text()).map((s) => [s.series, s.value]));
  };

  test('counts requests by route and status, token latencies, tokens and the expert cache as /v1/experts does', async () => {
    const before = await scrape();
    const r = await server.client.completions.create({ model: MODEL_NAME, prompt: 'The Python interpreter', max_tokens: 12, temperature: 0 });
    const streamed = await server.client.completions.create({ model: MODEL_NAME, prompt: 'import os\n', max_tokens: 6, temperature: 0, stream: true });
    for await (const chunk of streamed) void chunk;
    await server.client.completions.create({ model: 'nope', prompt: 'x' }).catch(() => undefined);
    const after = await scrape();
    const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);

    assert.equal(delta('moe_serve_requests_total{route="/v1/completions",status="200"}'), 2);
    assert.equal(delta('moe_serve_requests_total{route="/v1/completions",status="404"}'), 1);
    assert.equal(delta('moe_serve_time_to_first_token_seconds_count'), 2);
    assert.equal(delta('moe_serve_inter_token_latency_seconds_count'), 12 - 1 + 6 - 1);
    assert.equal(delta('moe_serve_e2e_request_latency_seconds_count'), 2);
    assert.equal(delta('moe_serve_generation_tokens_total'), 18);
    assert.equal(delta('moe_serve_prompt_tokens_total'), r.usage!.prompt_tokens + model.tokenizer.encode('import os\n').length);
    assert.equal(after.get('moe_serve_requests_running'), 0);
    assert.ok((after.get('nodejs_eventloop_lag_p99_seconds') ?? -1) >= 0);

    const experts = (await (await fetch(`${server.origin}/v1/experts`, { headers: { authorization: 'Bearer secret' } })).json()) as {
      budgetBytes: number;
      residentBytes: number;
      total: { hits: number; misses: number; bytesToDevice: number };
    };
    const now = await scrape();
    assert.equal(now.get('moe_serve_expert_cache_hits_total'), experts.total.hits);
    assert.equal(now.get('moe_serve_expert_cache_misses_total'), experts.total.misses);
    assert.equal(now.get('moe_serve_expert_bytes_to_device_total'), experts.total.bytesToDevice);
    assert.equal(now.get('moe_serve_expert_resident_device_bytes'), experts.residentBytes);
    assert.equal(now.get('moe_serve_expert_budget_bytes'), experts.budgetBytes);
    assert.ok(experts.total.misses > 0 && experts.total.hits > 0);
  });

  test('CORS: an allowed origin gets the headers, on preflight and on streams; another origin does not', async () => {
    const preflight = await fetch(`${server.baseURL}/chat/completions`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://app.example');
    const stream = await fetch(`${server.baseURL}/completions`, {
      method: 'POST',
      headers: { origin: 'https://app.example', authorization: 'Bearer secret', 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL_NAME, prompt: 'x', max_tokens: 2, stream: true }),
    });
    assert.equal(stream.headers.get('access-control-allow-origin'), 'https://app.example');
    await stream.text();
    const other = await fetch(`${server.origin}/health`, { headers: { origin: 'https://evil.example' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null);
  });
});
