// A batched forward step computes exactly what separate steps compute: sequences share the routed-expert
// runs and the LM head, never their attention or their results.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { BatchItem, RoutingEvent, StepRoutingObserver } from '../../src/engine/forward.js';
import type { Routing } from '../../src/engine/routing.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { logitTolerance, testDevices, F32 } from '../helpers/devices.js';
import { FIXTURES_DIR, TINY_MOE_DIR } from '../helpers/paths.js';
import { makeCheckpoint } from '../reference/make-checkpoint.js';

const PROMPTS = ['The quick brown fox', 'A computer is like', 'Q: Why?\nA:', 'import os\n'];
const STEPS = 8;

function argmax(row: Float32Array): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if ((row[j] as number) > (row[best] as number)) best = j;
  return best;
}

/** Greedy continuation of each prompt alone: every step's logits. */
async function alone(model: MoeModel, prompt: string): Promise<Float32Array[]> {
  using kv = model.newSequence();
  const steps: Float32Array[] = [];
  let logits = await model.forward.step(kv, model.tokenizer.encode(prompt), 'last');
  for (let s = 0; s < STEPS; s++) {
    steps.push(logits.slice());
    logits = await model.forward.step(kv, [argmax(logits)], 'last');
  }
  return steps;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  a.forEach((v, i) => (d = Math.max(d, Math.abs(v - (b[i] ?? NaN)))));
  return d;
}

for (const device of testDevices()) {
  for (const [name, dir] of [
    ['mixtral fixture', join(FIXTURES_DIR, 'mixtral')],
    ['qwen2_moe fixture', join(FIXTURES_DIR, 'qwen2_moe')],
    ['tiny-moe', TINY_MOE_DIR],
  ] as const) {
    describe(`batched forward on ${device}, ${name}`, () => {
      const tolerance = logitTolerance(device, 1e-4);

      test('prefilling and decoding four sequences together gives each its logits alone', async () => {
        await using model = await MoeModel.load(dir, { device, compute: F32, experts: { budgetFraction: 0.5 } });
        const expected = await Promise.all(PROMPTS.map((p) => alone(model, p)));
        const kvs = PROMPTS.map(() => model.newSequence());
        try {
          let tokens = PROMPTS.map((p) => model.tokenizer.encode(p) as number[]);
          for (let s = 0; s < STEPS; s++) {
            const items: BatchItem[] = kvs.map((kv, i) => ({ kv, tokens: tokens[i] ?? [], logits: 'last' }));
            const logits = await model.forward.stepBatch(items);
            logits.forEach((row, i) => {
              assert.ok(row);
              const d = maxDiff(row, expected[i]?.[s] ?? new Float32Array());
              assert.ok(d <= tolerance, `sequence ${i} step ${s}: max |logit diff| ${d}`);
            });
            tokens = logits.map((row) => [argmax(row ?? new Float32Array())]);
          }
        } finally {
          kvs.forEach((kv) => kv[Symbol.dispose]());
        }
      });

      test('a prompt chunk joining decoding sequences, and a chunk that asks for no logits, change nothing', async () => {
        await using model = await MoeModel.load(dir, { device, compute: F32 });
        const [first, second] = [PROMPTS[0] ?? '', PROMPTS[2] ?? ''];
        const expectedFirst = await alone(model, first);
        const expectedSecond = await alone(model, second);
        using a = model.newSequence();
        using b = model.newSequence();
        let aLogits = await model.forward.step(a, model.tokenizer.encode(first), 'last');
        const bPrompt = model.tokenizer.encode(second) as number[];
        const split = Math.max(1, bPrompt.length - 2);
        // step 1: a decodes while b's first chunk prefills (no logits wanted)
        let [aNext, bNone] = await model.forward.stepBatch([
          { kv: a, tokens: [argmax(aLogits)], logits: 'last' },
          { kv: b, tokens: bPrompt.slice(0, split), logits: 'none' },
        ]);
        assert.equal(bNone, null);
        assert.ok(aNext && maxDiff(aNext, expectedFirst[1] ?? new Float32Array()) <= tolerance);
        aLogits = aNext;
        // step 2: a decodes while b finishes its prompt
        const [aThird, bLogits] = await model.forward.stepBatch([
          { kv: a, tokens: [argmax(aLogits)], logits: 'last' },
          { kv: b, tokens: bPrompt.slice(split), logits: 'last' },
        ]);
        assert.ok(aThird && maxDiff(aThird, expectedFirst[2] ?? new Float32Array()) <= tolerance);
        assert.ok(bLogits && maxDiff(bLogits, expectedSecond[0] ?? new Float32Array()) <= tolerance);
      });
    });
  }
}

// The CPU KV cache grows in steps of 64 rows and takes back only the rows each run appends; decoding
// across those steps, alone and batched with a sequence of another length, must give the logits of one
// prefill of the same tokens.
// On webgpu (lavapipe) this fails, on the code before the CPU cache took back only appended rows too: a
// prefill longer than ~8 tokens and the decode after it differ from one longer prefill by 0.1-0.6 in the
// logits (a GPU attention bug for issue 16), so it is a todo there rather than hidden.
for (const device of testDevices()) {
  const todo = device === 'cpu' ? undefined : 'webgpu: prompt chunks longer than ~8 tokens disagree with a longer prefill (GPU attention)';
  test(`decoding across KV-cache growth steps on ${device} gives the logits of one prefill of the same tokens`, { todo }, async () => {
    await using model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32 });
    const tolerance = logitTolerance(device, 1e-3);
    const text = model.tokenizer.encode('The Python interpreter reads a program and runs it line by line. '.repeat(12)) as number[];
    const total = Math.min(text.length, 140);
    assert.ok(total > 128, `need more than two growth steps of text, got ${total} tokens`);
    using whole = model.newSequence();
    const V = model.spec.vocabSize;
    const all = await model.forward.step(whole, text.slice(0, total), 'all');
    const at = (position: number) => all.subarray(position * V, (position + 1) * V);
    using alone = model.newSequence();
    using other = model.newSequence();
    await model.forward.stepBatch([{ kv: alone, tokens: text.slice(0, 5), logits: 'none' }]);
    await model.forward.step(other, text.slice(0, 40), 'last');
    for (let p = 5; p < total; p++) {
      // `other` runs 35 positions ahead, so the two caches cross growth steps at different steps
      const items: BatchItem[] = [{ kv: alone, tokens: [text[p] as number], logits: 'last' }];
      if (40 + p - 5 < total) items.push({ kv: other, tokens: [text[40 + p - 5] as number], logits: 'last' });
      const [row, otherRow] = await model.forward.stepBatch(items);
      assert.ok(row && maxDiff(row, at(p)) <= tolerance, `position ${p}: max |logit diff| ${row ? maxDiff(row, at(p)) : 'none'}`);
      if (otherRow) assert.ok(maxDiff(otherRow, at(40 + p - 5)) <= tolerance, `other sequence, position ${40 + p - 5}: max |logit diff| ${maxDiff(otherRow, at(40 + p - 5))}`);
    }
  });
}

// Dense layers leave the batch's rows joined differently from sparse ones (no expert step joins them); a
// dense last layer hands them straight to the LM head. Generated Qwen3-MoE with layers 1 and 2 dense.
for (const device of testDevices()) {
  test(`a batch decoding through dense layers, the last one too, on ${device} gives each sequence its logits alone`, async () => {
    await using checkpoint = await makeCheckpoint({ family: 'qwen3_moe', config: { mlp_only_layers: [1, 2] } });
    await using model = await MoeModel.load(checkpoint.dir, { device, compute: F32 });
    const prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]];
    const next = [11, 12, 13];
    const expected: Float32Array[][] = [];
    for (const p of prompts) {
      using kv = model.newSequence();
      const steps = [await model.forward.step(kv, p, 'last')];
      for (const t of next) steps.push(await model.forward.step(kv, [t], 'last'));
      expected.push(steps.map((l) => l.slice()));
    }
    const kvs = prompts.map(() => model.newSequence());
    try {
      const batches = [prompts, ...next.map((t) => prompts.map(() => [t]))];
      for (const [s, tokens] of batches.entries()) {
        const logits = await model.forward.stepBatch(kvs.map((kv, i) => ({ kv, tokens: tokens[i] ?? [], logits: 'last' })));
        logits.forEach((row, i) => {
          const d = maxDiff(row ?? new Float32Array(), expected[i]?.[s] ?? new Float32Array());
          assert.ok(d <= logitTolerance(device, 1e-4), `sequence ${i} step ${s}: max |logit diff| ${d}`);
        });
      }
    } finally {
      kvs.forEach((kv) => kv[Symbol.dispose]());
    }
  });
}

// The engine's expert-affinity table learns from every sequence of every step, not only from those with a
// routing observer: the step observer sees the whole batch's routing, row for row what the sequences'
// observers see, once the step commits.
for (const device of testDevices()) {
  test(`the step routing observer on ${device} sees every sparse layer's routing of every token of the batch`, async () => {
    await using model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32 });
    using a = model.newSequence();
    using b = model.newSequence();
    const prompts = [model.tokenizer.encode(PROMPTS[0] ?? '') as number[], model.tokenizer.encode(PROMPTS[1] ?? '') as number[]];
    const perSequence: RoutingEvent[][] = [[], []];
    const seen: { layer: number; tokens: readonly number[]; routing: Routing }[] = [];
    const stepObserver: StepRoutingObserver = { onStepRouting: (layer, tokens, routing) => seen.push({ layer, tokens, routing }) };
    await model.forward.stepBatch(
      [
        { kv: a, tokens: prompts[0] ?? [], logits: 'last', observer: { onRouting: (e) => perSequence[0]?.push(e) } },
        { kv: b, tokens: prompts[1] ?? [], logits: 'last', observer: { onRouting: (e) => perSequence[1]?.push(e) } },
      ],
      stepObserver,
    );
    const sparse = model.spec.sparseLayers.flatMap((isSparse, layer) => (isSparse ? [layer] : []));
    assert.deepEqual(seen.map((s) => s.layer), sparse);
    for (const s of seen) {
      assert.deepEqual(s.tokens, [...(prompts[0] ?? []), ...(prompts[1] ?? [])]);
      const rows = perSequence.map((events) => [...(events.find((e) => e.layer === s.layer)?.routing.experts ?? [])]);
      assert.deepEqual([...s.routing.experts], rows.flat(), `layer ${s.layer}`);
    }
    // A sequence without an observer is seen all the same.
    seen.length = 0;
    await model.forward.stepBatch([{ kv: a, tokens: [1], logits: 'last' }], stepObserver);
    assert.deepEqual(seen.map((s) => [s.layer, s.tokens]), sparse.map((layer) => [layer, [1]]));
  });
}

// On a GPU provider every session run costs a fixed 0.4-1.9 ms (PLATFORM.md), so a decode step's run count
// is its floor: one run per layer, which applies the previous layer's routed experts (all of them: tiny-moe
// has 16, under one run's 32 slots), runs attention, and for a batch packs and unpacks the sequences' KV
// caches; then one LM head run, which applies the last layer's experts.
for (const device of testDevices().filter((d) => d !== 'cpu')) {
  for (const batch of [1, 4]) {
    test(`a decode step of ${batch} sequence(s) on ${device} is one run per layer and one LM head run`, async () => {
      await using model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32, experts: { policy: 'all' } });
      const kvs = PROMPTS.slice(0, batch).map(() => model.newSequence());
      try {
        await model.forward.stepBatch(kvs.map((kv, i) => ({ kv, tokens: model.tokenizer.encode(PROMPTS[i] ?? '') as number[], logits: 'last' })));
        const runs = () => Object.fromEntries(Object.entries(model.runtime.tallySnapshot()).map(([kind, t]) => [kind, t.runs]));
        const before = runs();
        await model.forward.stepBatch(kvs.map((kv, i) => ({ kv, tokens: [i + 1], logits: 'last' })));
        const after = runs();
        const step = Object.fromEntries(Object.entries(after).map(([kind, n]) => [kind, n - (before[kind] ?? 0)]).filter(([, n]) => n !== 0));
        assert.deepEqual(step, { attention: model.spec.numLayers, lm_head: 1 });
      } finally {
        kvs.forEach((kv) => kv[Symbol.dispose]());
      }
    });
  }
}
