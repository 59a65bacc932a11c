// One request's failure is that request's alone: a throwing sampler, a failing session run inside a
// batched step, a failing KV-cache creation or a failing expert load ends that request with its error,
// frees its slot and KV cache, and every other request still gets exactly the tokens it gets alone; the
// engine serves on. A routing trace that cannot be written fails no request at all.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { BENCH_PROMPTS } from '../../src/cli/bench-prompts.js';
import { BatchEngine, type CompletionRequest, type CompletionStream } from '../../src/engine/batch-engine.js';
import type { BatchItem, RoutingObserver } from '../../src/engine/forward.js';
import { generate } from '../../src/engine/generate.js';
import { SequenceKvCache } from '../../src/engine/kv-cache.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import type { TraceWriteError } from '../../src/experts/trace-writer.js';
import { TruncatedWeightsFileError } from '../../src/model/errors.js';
import { SafetensorsArchive } from '../../src/model/safetensors.js';
import { expertTensorNames } from '../../src/model/tensor-names.js';
import { testDevices, F32 } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';
import { rewriteCheckpoint, toEnd } from '../helpers/rewrite-checkpoint.js';

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

/** An observer adding each routed expert, as "layer:expert", to `into`. */
function collect(into: Set<string>): RoutingObserver {
  return { onRouting: (e) => e.routing.experts.forEach((x) => into.add(`${e.layer}:${x}`)) };
}

/** An observer counting its events per "layer:position" in `into`. */
function count(into: Map<string, number>): RoutingObserver {
  return { onRouting: (e) => into.set(`${e.layer}:${e.position}`, (into.get(`${e.layer}:${e.position}`) ?? 0) + 1) };
}

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

    /** Runs the good requests with the bad one (on `on`, a model with tiny-moe's weights); returns the bad one's error. */
    async function runWithBadRequest(bad: Partial<CompletionRequest> = {}, on: MoeModel = model): Promise<Error> {
      const kvBefore = SequenceKvCache.liveCount;
      await using engine = new BatchEngine(on, { maxBatchTokens: 256, maxSeqs: 8, maxQueue: 16 });
      const badReq: CompletionRequest = { promptIds: model.tokenizer.encode(badPrompt), maxTokens: 10, sampling: { temperature: 1, topP: 1, topK: 0 }, seed: 7, ...bad };
      // Each good request's routing, counted per (layer, step position): a step that failed and ran again
      // must reach the observer (the routing trace) once.
      const routed = good.map(() => new Map<string, number>());
      const traced = good.map((r, i) => ({ ...r, observer: count(routed[i] as Map<string, number>) }));
      const streams = [engine.submit(traced[0] as CompletionRequest), engine.submit(badReq), ...traced.slice(1).map((r) => engine.submit(r))];
      const [first, badOutcome, ...rest] = await Promise.all(streams.map(outcome));
      assert.ok(badOutcome && 'error' in badOutcome, 'the broken request ends with its error');
      [first, ...rest].forEach((o, i) => assert.deepEqual(o, { ids: expected[i] }, `request ${i} got its solo tokens`));
      routed.forEach((m, i) => assert.deepEqual([...m].filter(([, n]) => n !== 1), [], `request ${i}'s routing was observed once per layer and step`));
      assert.equal(engine.stats.running, 0);
      assert.equal(SequenceKvCache.liveCount, kvBefore, 'every KV cache freed, the failed one included');
      // and the engine goes on serving
      model.forward.stepBatch = realStepBatch;
      assert.deepEqual(await outcome(engine.submit(good[2] as CompletionRequest)), { ids: expected[2] });
      return badOutcome.error;
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

    test('an expert that cannot be read fails only the request routed to it', async () => {
      // Every request routes to most experts of a small model (the good ones here to 87 of tiny-moe's 96),
      // so the broken expert is one the bad request is routed to and no good one is. Its tensors are put
      // at the end of a copy of the checkpoint, which is cut off after the model has loaded: reading
      // that expert (on first use: every expert fits the budget, none is preloaded) fails as on a disk
      // whose file was truncated under the server, and it alone.
      const usedByGood = new Set<string>();
      for (const r of good) await alone(model, { ...r, observer: collect(usedByGood) });
      const usedByBad = new Set<string>();
      await alone(model, { promptIds: model.tokenizer.encode(badPrompt), maxTokens: 10, sampling: GREEDY, observer: collect(usedByBad) });
      const target = [...usedByBad].find((k) => !usedByGood.has(k));
      assert.ok(target, `the bad prompt routes to no expert that the good ones leave alone; choose another (it uses ${[...usedByBad].join(' ')})`);
      const [layer, expert] = target.split(':').map(Number) as [number, number];
      const names = Object.values(expertTensorNames(model.spec.family, layer, expert));
      await using copy = await rewriteCheckpoint(TINY_MOE_DIR, toEnd(...names));
      await using broken = await MoeModel.load(copy.dir, { device, compute: F32 });
      const weights = join(copy.dir, 'model.safetensors');
      let cut: number;
      {
        await using archive = await SafetensorsArchive.open(copy.dir);
        cut = Math.min(...names.map((n) => archive.entry(n).byteOffset));
      }
      await truncate(weights, cut);
      // Watched, not changed: the failure must come in a step shared with good requests to test anything.
      const realBrokenStep = broken.forward.stepBatch.bind(broken.forward);
      let failedBatched = 0;
      broken.forward.stepBatch = async (items) => {
        try {
          return await realBrokenStep(items);
        } catch (err) {
          if (items.length > 1) failedBatched++;
          throw err;
        }
      };
      const error = await runWithBadRequest({ sampling: GREEDY }, broken);
      assert.ok(error instanceof TruncatedWeightsFileError && error.fileLabel === weights, `the read's own error: ${String(error)}`);
      assert.equal(failedBatched, 1, 'the load failed once in a batched step, which then ran per sequence');
    });

    test('requests whose routing trace cannot be written (ENOSPC) all finish with their solo tokens', { skip: !existsSync('/dev/full') && 'no /dev/full' }, async () => {
      const reports: TraceWriteError[] = [];
      await using trace = await model.openTrace('/dev/full', { onError: (e) => reports.push(e) });
      // The header's write fails; its error comes back from the file system a little later.
      for (let waited = 0; !trace.failed && waited < 2000; waited += 10) await sleep(10);
      await using engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: 8, maxQueue: 16 });
      const outcomes = await Promise.all(good.map((r) => outcome(engine.submit({ ...r, observer: trace.request() }))));
      assert.deepEqual(outcomes, expected.map((ids) => ({ ids })));
      assert.equal(trace.failed, true);
      assert.equal(reports.length, 1, 'the error is reported once');
      assert.equal(await trace.close(), reports[0]);
    });
  });
}
