// GET /metrics under vLLM's names, as the Gateway API Inference Extension's endpoint picker reads them
// (src/api/vllm-metrics.ts): the five series exist as gauges with the labels it parses, and running,
// waiting and KV usage follow the engine under load, over loopback against the real engine.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { buildApp } from '../../src/api/build-app.js';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { BLOCK_TOKENS, PrefixCache } from '../../src/engine/prefix-cache.js';
import { parseExposition, type Sample } from '../../load-tests/metric-samples.js';
import { engineIdle, MODEL_NAME } from '../helpers/api-server.js';
import { F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const VLLM_SERIES = ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:lora_requests_info', 'vllm:cache_config_info'];
/** The KV budget of the test server, in tokens (rows). */
const KV_TOKENS = 1024;
const MAX_TOKENS = 100;

interface Scrape {
  /** Family name -> its `# TYPE`. */
  readonly types: ReadonlyMap<string, string>;
  readonly samples: readonly Sample[];
}

/** The exposition format's `# TYPE name type` lines (parseExposition skips comments); each family once. */
function parseTypes(text: string): Map<string, string> {
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^#\s+TYPE\s+(\S+)\s+(\S+)\s*$/.exec(line);
    if (!m) continue;
    assert.ok(!types.has(m[1]!), `${m[1]} has two TYPE lines`);
    types.set(m[1]!, m[2]!);
  }
  return types;
}

async function scrape(origin: string): Promise<Scrape> {
  const res = await fetch(`${origin}/metrics`);
  assert.equal(res.status, 200);
  const text = await res.text();
  return { types: parseTypes(text), samples: parseExposition(text) };
}

/** The one sample of `name`; fails when there are none or several (the endpoint picker would take the first). */
function only(s: Scrape, name: string): Sample {
  const found = s.samples.filter((x) => x.name === name);
  assert.equal(found.length, 1, `${name}: expected one series, got ${found.map((x) => x.series).join(', ') || 'none'}`);
  return found[0]!;
}

const gauges = (s: Scrape) => ({
  running: only(s, 'vllm:num_requests_running').value,
  waiting: only(s, 'vllm:num_requests_waiting').value,
  kvUsage: only(s, 'vllm:kv_cache_usage_perc').value,
});

describe('vLLM-named metrics for the inference gateway', () => {
  let model: MoeModel;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu', compute: F32 });
  });
  after(async () => {
    await model[Symbol.asyncDispose]();
  });

  /** One sequence at a time, so that concurrent requests queue; a bounded KV budget, so that usage means something. */
  async function serve(prefixCache?: PrefixCache) {
    const engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 1, maxQueue: 32, maxKvTokens: KV_TOKENS }, { prefixCache });
    const app = buildApp({ serving: () => ({ model, engine }), modelName: MODEL_NAME });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const origin = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    return {
      origin,
      engine,
      [Symbol.asyncDispose]: async () => {
        await app.close();
        await engine[Symbol.asyncDispose]();
      },
    };
  }

  test('the five series are gauges with the labels the endpoint picker parses', async () => {
    await using server = await serve(new PrefixCache(1 << 20));
    const s = await scrape(server.origin);
    for (const name of VLLM_SERIES) assert.equal(s.types.get(name), 'gauge', `${name} is a gauge (an untyped sample reads as 0)`);
    for (const name of ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc']) {
      assert.deepEqual(only(s, name).labels, { model_name: MODEL_NAME, engine: '0' });
    }
    assert.deepEqual(gauges(s), { running: 0, waiting: 0, kvUsage: 0 });

    // No LoRA: empty adapter lists and max_lora 0; the value is the time of the state (the picker keeps the latest).
    const lora = only(s, 'vllm:lora_requests_info');
    assert.deepEqual(lora.labels, { max_lora: '0', waiting_lora_adapters: '', running_lora_adapters: '' });
    assert.ok(Math.abs(lora.value - Date.now() / 1000) < 60, `lora_requests_info is the current time in seconds, got ${lora.value}`);

    const cache = only(s, 'vllm:cache_config_info');
    assert.equal(cache.value, 1);
    assert.deepEqual(cache.labels, { block_size: String(BLOCK_TOKENS), num_gpu_blocks: String(KV_TOKENS / BLOCK_TOKENS), enable_prefix_caching: 'True', engine: '0' });

    // The moe_serve_* names stay.
    assert.equal(s.types.get('moe_serve_requests_running'), 'gauge');
  });

  test('with --max-seqs 1, three concurrent streams show 1 running, 2 waiting and KV usage in (0, 1]; all 0 once done', async () => {
    await using server = await serve();
    const prompt = 'The Python interpreter';
    const promptTokens = model.tokenizer.encode(prompt).length;
    const body = JSON.stringify({ model: MODEL_NAME, prompt, max_tokens: MAX_TOKENS, ignore_eos: true, temperature: 0, stream: true });
    const streams = [0, 1, 2].map(() =>
      fetch(`${server.origin}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then((r) => r.text()),
    );
    // Until the engine itself has all three: one admitted, two queued behind it (each of ~0.6 s of decoding).
    const until = Date.now() + 5000;
    while (!(server.engine.stats.running === 1 && server.engine.stats.waiting === 2) && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
    const busy = gauges(await scrape(server.origin));
    assert.equal(busy.running, 1);
    assert.equal(busy.waiting, 2);
    // The running request reserves its prompt plus max_tokens of the budget.
    assert.ok(busy.kvUsage * KV_TOKENS >= promptTokens + MAX_TOKENS, `KV usage ${busy.kvUsage} covers ${promptTokens} + ${MAX_TOKENS} of ${KV_TOKENS} rows`);
    assert.ok(busy.kvUsage <= 1, `KV usage ${busy.kvUsage} is a fraction`);

    for (const text of await Promise.all(streams)) assert.match(text, /data: \[DONE\]\s*$/);
    assert.ok(await engineIdle(server.engine));
    assert.deepEqual(gauges(await scrape(server.origin)), { running: 0, waiting: 0, kvUsage: 0 });
  });

  test('while the model loads: running, waiting and KV usage 0, no cache configuration yet, no LoRA', async () => {
    const app = buildApp({ serving: () => undefined, modelName: MODEL_NAME });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const s = await scrape(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`);
      assert.deepEqual(gauges(s), { running: 0, waiting: 0, kvUsage: 0 });
      assert.equal(s.types.get('vllm:cache_config_info'), 'gauge');
      assert.equal(s.samples.filter((x) => x.name === 'vllm:cache_config_info').length, 0);
      assert.equal(only(s, 'vllm:lora_requests_info').labels.max_lora, '0');
    } finally {
      await app.close();
    }
  });
});
