// Continuous batching changes when tokens are computed, never which: every request gets exactly the
// tokens it gets alone, whoever shares its steps, joins mid-flight or is cancelled beside it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { BENCH_PROMPTS } from '../../src/cli/bench-prompts.js';
import { BatchEngine, type CompletionRequest, type CompletionStream } from '../../src/engine/batch-engine.js';
import { generate } from '../../src/engine/generate.js';
import { kvRowsFor, SequenceKvCache } from '../../src/engine/kv-cache.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { QueueFullError } from '../../src/scheduler/scheduler.js';
import { testDevices, F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const PROMPTS = BENCH_PROMPTS.slice(0, 8);
const GREEDY = { temperature: 0, topP: 1, topK: 0 };

async function alone(model: MoeModel, req: CompletionRequest): Promise<number[]> {
  const stream = generate(model, { ...req, promptIds: req.promptIds });
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return [...step.value.completionIds];
}

async function drain(stream: CompletionStream): Promise<{ ids: number[]; text: string; streamed: string; finishReason: string }> {
  let streamed = '';
  for await (const chunk of stream) streamed += chunk.text;
  const r = await stream.result;
  return { ids: [...r.completionIds], text: r.text, streamed, finishReason: r.finishReason };
}

for (const device of testDevices()) {
  describe(`continuous batching on ${device}`, () => {
    let model: MoeModel;
    let requests: CompletionRequest[];
    let expected: number[][];
    before(async () => {
      model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32, experts: { budgetFraction: 0.25 } });
      requests = PROMPTS.map((p, i) => ({
        promptIds: model.tokenizer.encode(p),
        maxTokens: 12 + i,
        // half greedy, half sampled with their own seeds
        sampling: i % 2 === 0 ? GREEDY : { temperature: 0.9, topP: 0.95, topK: 0 },
        seed: 100 + i,
      }));
      expected = [];
      for (const r of requests) expected.push(await alone(model, r));
    });
    after(async () => {
      await model[Symbol.asyncDispose]();
    });

    test('8 concurrent requests each get exactly the tokens they get alone, streamed as produced', async () => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 8, maxQueue: 16 });
      const results = await Promise.all(requests.map((r) => drain(engine.submit(r))));
      results.forEach((r, i) => {
        assert.deepEqual(r.ids, expected[i], `request ${i}`);
        assert.equal(r.streamed, r.text);
        assert.equal(r.finishReason, r.ids.length === requests[i]?.maxTokens ? 'length' : 'stop');
      });
      assert.ok(engine.stats.steps < results.reduce((n, r) => n + r.ids.length, 0), 'requests shared steps');
    });

    test('expert-aware admission changes the order of admission, never the tokens', async () => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 2, maxQueue: 16, expertAware: { passOverLimit: 2 } });
      const results = await Promise.all(requests.map((r) => drain(engine.submit(r))));
      results.forEach((r, i) => assert.deepEqual(r.ids, expected[i], `request ${i}`));
      assert.ok(engine.stats.passOvers <= 2 * requests.length, `${engine.stats.passOvers} pass-overs`);
    });

    test('chunked prefill with a small token budget and fewer slots than requests changes nothing', async () => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 5, maxSeqs: 3, maxQueue: 16 });
      const results = await Promise.all(requests.map((r) => drain(engine.submit(r))));
      results.forEach((r, i) => assert.deepEqual(r.ids, expected[i], `request ${i}`));
    });

    test('a KV budget for two requests queues the rest, and each still gets exactly its solo tokens', async () => {
      // Each request reserves its prompt + max_tokens rounded up to the cache's growth step (64 rows here).
      const rows = requests.map((r) => kvRowsFor(r.promptIds.length + r.maxTokens, model.spec.maxPositions));
      const maxKvTokens = 2 * Math.max(...rows);
      await using engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 8, maxQueue: 16, maxKvTokens });
      let mostRunning = 0;
      let mostReserved = 0;
      const watch = async (r: CompletionRequest) => {
        const stream = engine.submit(r);
        for await (const chunk of stream) {
          void chunk;
          mostRunning = Math.max(mostRunning, engine.stats.running);
          mostReserved = Math.max(mostReserved, engine.stats.kvTokensReserved);
        }
        return [...(await stream.result).completionIds];
      };
      const results = await Promise.all(requests.map(watch));
      results.forEach((ids, i) => assert.deepEqual(ids, expected[i], `request ${i}`));
      assert.ok(mostRunning <= 2 && mostRunning >= 1, `at most two ran at once (${mostRunning})`);
      assert.ok(mostReserved <= maxKvTokens, `reserved ${mostReserved} of ${maxKvTokens}`);
      assert.equal(engine.stats.kvTokensReserved, 0, 'every reservation returned');
    });

    test('requests joining mid-flight do not change the tokens of those already running', async () => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 64, maxSeqs: 8, maxQueue: 16 });
      const first = requests.slice(0, 3).map((r) => engine.submit(r));
      // wait until the first ones are decoding
      const iter = first[0]![Symbol.asyncIterator]();
      await iter.next();
      await iter.next();
      const later = requests.slice(3).map((r) => engine.submit(r));
      const restOfFirst = (async () => {
        for (let n = await iter.next(); !n.done; n = await iter.next());
        return (await first[0]!.result).completionIds;
      })();
      assert.deepEqual([...(await restOfFirst)], expected[0]);
      const others = await Promise.all([...first.slice(1), ...later].map((s) => drain(s)));
      others.forEach((r, i) => assert.deepEqual(r.ids, expected[i + 1], `request ${i + 1}`));
    });

    test('a cancelled request ends with finish reason abort, frees its slot and its KV cache', async () => {
      const liveBefore = SequenceKvCache.liveCount;
      await using engine = new BatchEngine(model, { maxBatchTokens: 64, maxSeqs: 2, maxQueue: 16 });
      const controller = new AbortController();
      const long = { ...requests[0]!, maxTokens: 200, signal: controller.signal };
      const cancelled = engine.submit(long);
      const other = engine.submit(requests[2]!);
      const third = engine.submit(requests[4]!); // waits for a slot
      const iter = cancelled[Symbol.asyncIterator]();
      await iter.next();
      assert.equal(engine.stats.waiting, 1, 'the third request waits for a slot');
      controller.abort();
      const r = await cancelled.result;
      assert.equal(r.finishReason, 'abort');
      assert.ok(r.completionIds.length < 200);
      assert.deepEqual((await drain(third)).ids, expected[4]);
      assert.deepEqual((await drain(other)).ids, expected[2]);
      assert.equal(SequenceKvCache.liveCount, liveBefore, 'every KV cache freed');
    });

    test('a full waiting queue rejects at once with QueueFullError', async () => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 64, maxSeqs: 1, maxQueue: 2 });
      const accepted = [engine.submit(requests[0]!), engine.submit(requests[1]!)];
      assert.throws(
        () => engine.submit(requests[2]!),
        (e: unknown) => e instanceof QueueFullError && e.code === 'queue_full' && e.retryAfterSeconds > 0,
      );
      const results = await Promise.all(accepted.map(drain));
      assert.deepEqual(results.map((r) => r.ids), [expected[0], expected[1]]);
    });
  });
}
