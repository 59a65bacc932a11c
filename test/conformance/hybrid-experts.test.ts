// Hybrid execution of expert-cache misses on GPU providers (engine/hybrid-experts.ts): computing a missed
// expert on the CPU from host memory instead of uploading it changes where the work runs, never what the
// model computes. Runs on GPU devices only (`npm run test:webgpu`, lavapipe in CI); on the CPU provider
// there is nothing to place.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import { MoeModel, type ExpertCacheOptions } from '../../src/engine/moe-model.js';
import type { MissPlacementMode } from '../../src/engine/miss-placement.js';
import { liveGpuTensorCount } from '../../src/runtime/onnx-runtime.js';
import { liveResidentExperts } from '../../src/engine/expert-routes.js';
import { asToken } from '../../src/tokenizer/token.js';
import type { ComputeOptions } from '../../src/engine/compute-options.js';
import { F32, testDevices } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const STEPS = 10;
const PROMPT = 'The Python interpreter';

async function greedy(model: MoeModel): Promise<{ tokens: number[]; logits: Float32Array[] }> {
  using kv = model.newSequence();
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  let last = await model.forward.step(kv, model.tokenizer.encode(PROMPT), 'last');
  for (let i = 0; i < STEPS; i++) {
    logits.push(last.slice());
    let best = 0;
    for (let j = 1; j < last.length; j++) if ((last[j] as number) > (last[best] as number)) best = j;
    tokens.push(best);
    last = await model.forward.step(kv, [asToken(best)], 'last');
  }
  return { tokens, logits };
}

function maxAbsDiff(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let d = 0;
  a.forEach((row, i) => row.forEach((v, j) => (d = Math.max(d, Math.abs(v - (b[i]?.[j] ?? NaN))))));
  return d;
}

// The float form, and int4 experts (the CPU computes those with float activations, as the device does).
const FORMS: readonly (readonly [string, ComputeOptions])[] = [
  ['f32', F32],
  ['int4 experts', { expertDtype: 'int4', weightDtype: 'f32' }],
];

for (const device of testDevices().filter((d) => d !== 'cpu')) {
  for (const [formName, compute] of FORMS)
  describe(`hybrid execution of misses on ${device}, ${formName}`, () => {
    // Made inside the first test that needs it: GPU tensors are counted process-wide, so no model may load
    // while another test counts (a describe's body runs while earlier suites' tests do).
    let referenceRun: ReturnType<typeof greedy> | undefined;
    const referenceOnce = () =>
      (referenceRun ??= (async () => {
        await using model = await MoeModel.load(TINY_MOE_DIR, { device, compute, experts: { policy: 'all' } });
        assert.equal(model.hybrid, undefined, 'no misses can happen, so nothing is placed');
        return await greedy(model);
      })());
    const cases: [string, MissPlacementMode, ExpertCacheOptions][] = [
      ['every miss on the CPU, 25% budget, prefetch depth 1', 'cpu', { policy: 'lru', budgetFraction: 0.25, prefetchDepth: 1 }],
      ['every miss on the CPU, top-k budget, no prefetch', 'cpu', { policy: 'none', budgetFraction: 0.05, prefetchDepth: 0 }],
      ['cost model, 25% budget, prefetch depth 1', 'auto', { policy: 'lru', budgetFraction: 0.25, prefetchDepth: 1 }],
      ['every miss on the CPU, 25% budget, none kept in the CPU form', 'cpu', { policy: 'lru', budgetFraction: 0.25, prefetchDepth: 1, cpuCacheMb: 0 }],
    ];
    for (const [name, missPlacement, experts] of cases) {
      test(`${name}: the same tokens and logits as every expert resident; every GPU tensor and expert freed`, async () => {
        const reference = await referenceOnce();
        const before = liveGpuTensorCount();
        const expertsBefore = liveResidentExperts();
        const model = await MoeModel.load(TINY_MOE_DIR, { device, compute, missPlacement, experts });
        try {
          const result = await greedy(model);
          assert.deepEqual(result.tokens, reference.tokens);
          const d = maxAbsDiff(result.logits, reference.logits);
          assert.ok(d <= 1e-4, `max |logit diff| ${d}`);
          const t = model.experts.stats().total;
          if (missPlacement === 'cpu') {
            // Only prefetches load: a demand miss is always computed on the CPU.
            assert.ok(t.cpuComputed > 0, 'misses were computed on the CPU');
            assert.equal(t.cpuComputed, t.misses, 'every demand miss went to the CPU');
            assert.equal(t.bytesToDevice, t.prefetchIssued * model.experts.expertBytes, 'only prefetches were uploaded');
            // Ten tokens at a 25% budget miss some experts more than once: by default their CPU forms are kept.
            if (experts.cpuCacheMb === 0) assert.equal(t.cpuKept, 0);
            else assert.ok(t.cpuKept > 0 && t.cpuKept < t.cpuComputed, `kept ${t.cpuKept} of ${t.cpuComputed}`);
          }
          assert.ok(t.cpuComputed <= t.misses);
          assert.ok(t.cpuComputed === 0 || t.cpuMs > 0, 'CPU runs are timed');
        } finally {
          await model[Symbol.asyncDispose]();
        }
        await new Promise((r) => setImmediate(r));
        assert.equal(liveGpuTensorCount(), before, 'unloading the model freed every GPU tensor');
        assert.equal(liveResidentExperts(), expertsBefore, 'and every expert made, on the device or kept on the CPU');
      });
    }

    test('a batch of sequences with misses on the CPU gives each sequence its own tokens', async () => {
      const prompts = ['The Python interpreter', 'import os\n', 'A list comprehension'];
      const run = async (missPlacement: MissPlacementMode, experts: ExpertCacheOptions) => {
        await using model = await MoeModel.load(TINY_MOE_DIR, { device, compute, missPlacement, experts });
        await using engine = new BatchEngine(model, { maxBatchTokens: 64, maxSeqs: 4, maxQueue: 8 });
        const results = await Promise.all(prompts.map((p) => engine.submit({ promptIds: model.tokenizer.encode(p), maxTokens: 8, sampling: { temperature: 0, topP: 1, topK: 0 } }).result));
        return { tokens: results.map((r) => r.completionIds), cpu: model.experts.stats().total.cpuComputed };
      };
      const resident = await run('upload', { policy: 'all' });
      const hybrid = await run('cpu', { policy: 'lru', budgetFraction: 0.25, prefetchDepth: 0 });
      assert.ok(hybrid.cpu > 0);
      assert.deepEqual(hybrid.tokens, resident.tokens);
    });
  });
}
