// One request's failure is that request's alone: a throwing sampler, a failing session run inside a
// batched step, or a failing KV-cache creation ends that request with its error, frees its slot and KV
// cache, and every other request still gets exactly the tokens it gets alone; the engine serves on.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { BENCH_PROMPTS } from '../../src/cli/bench-prompts.js';
import { BatchEngine, type CompletionRequest, type CompletionStream } from '../../src/engine/batch-engine.js';
import type { BatchItem } from '../../src/engine/forward.js';
import { generate } from '../../src/engine/generate.js';
import { SequenceKvCache } from '../../src/engine/kv-cache.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { testDevices, F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const GREEDY = { temperature: 0, topP: 1, topK: 0 };

async function alone(model: MoeModel, req: CompletionRequest): Promise<number[]> {
  const stream = generate(model, req);
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return [...step.value.completionIds];
}

async function outcome(stream: CompletionStream): Promise<{ ids: number[] } | { error: Error }> {
  try {
    for await (const chunk of stream) void chunk;
    return { ids: [...(await stream.result).completionIds] };
  } catch (err) {
    return { error: err as Error };
  }
}

type StepBatch = MoeModel['forward']['stepBatch'];

for (const device of testDevices()) {
  describe(`engine failures on ${device}`, () => {
    let model: MoeModel;
    let good: CompletionRequest[];
    let expected: number[][];
    let realStepBatch: StepBatch;
    /** KV caches of the request to break, found by its prompt when it prefills. */
    const broken = new WeakSet<SequenceKvCache>();
    const badPrompt = 'This request is the one that fails.';

    before(async () => {
      model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32 });
      good = BENCH_PROMPTS.slice(0, 4).map((p, i) => ({ promptIds: model.tokenizer.encode(p), maxTokens: 10, sampling: GREEDY, seed: i }));
      expected = [];
      for (const r of good) expected.push(await alone(model, r));
      realStepBatch = model.forward.stepBatch.bind(model.forward);
    });
    after(async () => {
      model.forward.stepBatch = realStepBatch;
      await model[Symbol.asyncDispose]();
    });

    /** stepBatch, with `breakStep` applied to the broken request's items. */
    function inject(breakStep: (items: readonly BatchItem[], logits: (Float32Array | null)[] | null) => void): void {
      const badIds = model.tokenizer.encode(badPrompt);
      model.forward.stepBatch = async (items) => {
        for (const item of items) if (item.kv.length === 0 && item.tokens[0] === badIds[0] && item.tokens.length === badIds.length) broken.add(item.kv);
        breakStep(items, null);
        const logits = await realStepBatch(items);
        breakStep(items, logits);
        return logits;
      };
    }

    async function runWithBadRequest(bad: Partial<CompletionRequest> = {}): Promise<void> {
      const kvBefore = SequenceKvCache.liveCount;
      await using engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 8, maxQueue: 16 });
      const badReq: CompletionRequest = { promptIds: model.tokenizer.encode(badPrompt), maxTokens: 10, sampling: { temperature: 1, topP: 1, topK: 0 }, seed: 7, ...bad };
      const streams = [engine.submit(good[0] as CompletionRequest), engine.submit(badReq), ...good.slice(1).map((r) => engine.submit(r))];
      const [first, badOutcome, ...rest] = await Promise.all(streams.map(outcome));
      assert.ok(badOutcome && 'error' in badOutcome, 'the broken request ends with its error');
      [first, ...rest].forEach((o, i) => assert.deepEqual(o, { ids: expected[i] }, `request ${i} got its solo tokens`));
      assert.equal(engine.stats.running, 0);
      assert.equal(SequenceKvCache.liveCount, kvBefore, 'every KV cache freed, the failed one included');
      // and the engine goes on serving
      model.forward.stepBatch = realStepBatch;
      assert.deepEqual(await outcome(engine.submit(good[2] as CompletionRequest)), { ids: expected[2] });
    }

    test('a request whose sampling throws (non-finite logits) fails alone', async () => {
      inject((items, logits) => logits?.forEach((row, i) => row && broken.has((items[i] as BatchItem).kv) && row.fill(Number.NaN)));
      await runWithBadRequest();
    });

    test('a session run that fails inside a batched step fails only the request it belongs to', async () => {
      inject((items, logits) => {
        if (logits === null && items.some((i) => broken.has(i.kv) && i.kv.length > 0)) throw new Error('injected: session run failed');
      });
      await runWithBadRequest({ sampling: GREEDY });
    });

    test('a KV cache that cannot be created fails only the request being admitted', async () => {
      const realNewSequence = model.newSequence.bind(model);
      let calls = 0;
      model.newSequence = () => {
        if (++calls === 2) throw new Error('injected: out of KV memory');
        return realNewSequence();
      };
      try {
        // the second request admitted is the bad one (submit order, one step admits them in order)
        await runWithBadRequest({ sampling: GREEDY });
      } finally {
        model.newSequence = realNewSequence;
      }
    });
  });
}
