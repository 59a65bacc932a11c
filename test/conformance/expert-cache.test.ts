// The expert cache changes where experts live, never what the model computes: every policy, prefetch
// depth and budget gives the same tokens and logits, resident bytes stay inside the budget at every
// step, and evicted experts are really freed.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { RoutingEvent, RoutingObserver } from '../../src/engine/forward.js';
import { MoeModel, type ExpertCacheOptions } from '../../src/engine/moe-model.js';
import { POLICY_NAMES } from '../../src/experts/policies/index.js';
import { liveResidentExperts } from '../../src/engine/expert-routes.js';
import { DeviceTensor } from '../../src/runtime/onnx-runtime.js';
import { asToken } from '../../src/tokenizer/token.js';
import { F32, testDevices } from '../helpers/devices.js';
import type { ComputeOptions } from '../../src/engine/compute-options.js';
import { FIXTURES_DIR, TINY_MOE_DIR } from '../helpers/paths.js';

const STEPS = 12;

interface RunResult {
  tokens: number[];
  /** logits of every step, concatenated */
  logits: Float32Array[];
}

/** Greedy decoding with the forward pass directly, checking the budget after every layer's routing. */
async function run(model: MoeModel, prompt: string, trace?: RoutingObserver): Promise<RunResult> {
  const stats = () => model.experts.stats();
  const budget = stats().budgetBytes;
  const observer = {
    onRouting(e: RoutingEvent) {
      assert.ok(stats().residentBytes <= budget, `resident ${stats().residentBytes} > budget ${budget}`);
      trace?.onRouting(e);
    },
  };
  using kv = model.newSequence();
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  let last = await model.forward.step(kv, model.tokenizer.encode(prompt), 'last', observer);
  for (let i = 0; i < STEPS; i++) {
    logits.push(last.slice());
    let best = 0;
    for (let j = 1; j < last.length; j++) if ((last[j] as number) > (last[best] as number)) best = j;
    tokens.push(best);
    last = await model.forward.step(kv, [asToken(best)], 'last', observer);
    assert.ok(stats().residentBytes <= budget);
  }
  assert.equal(stats().overBudget, 0);
  return { tokens, logits };
}

function maxAbsDiff(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let d = 0;
  a.forEach((row, i) => row.forEach((v, j) => (d = Math.max(d, Math.abs(v - (b[i]?.[j] ?? NaN))))));
  return d;
}

// Both expert routes: f32 experts go through the routed-experts graph when budgeted, quantized ones are
// prepacked sessions (the CPU provider's defaults pick by budget, so the forms are fixed here).
const FORMS: readonly (readonly [string, ComputeOptions, 'grid' | 'evicting'])[] = [
  ['f32', F32, 'grid'],
  ['int4 experts', { expertDtype: 'int4', weightDtype: 'int8', attentionDtype: 'f32' }, 'evicting'],
];

for (const device of testDevices()) {
  for (const [formName, compute, coverage] of FORMS)
  for (const [name, dir, prompt] of [
    ['mixtral fixture', join(FIXTURES_DIR, 'mixtral'), 'The quick brown fox'],
    ['qwen2_moe fixture', join(FIXTURES_DIR, 'qwen2_moe'), 'A computer is like'],
    ['tiny-moe', TINY_MOE_DIR, 'The Python interpreter'],
  ] as const) {
    describe(`expert cache on ${device}, ${name}, ${formName}`, async () => {
      // The reference run records a routing trace, which is the 'static' policy's profile.
      const traceDir = await mkdtemp(join(tmpdir(), 'moe-serve-trace-'));
      after(() => rm(traceDir, { recursive: true, force: true }));
      const profilePath = join(traceDir, 'trace.jsonl');
      const reference = await (async () => {
        await using model = await MoeModel.load(dir, { device, compute, experts: { policy: 'all', lookaheadDepth: 2 } });
        await using trace = await model.openTrace(profilePath);
        return await run(model, prompt, trace.request());
      })();
      const probe = await MoeModel.load(dir, { device, compute, experts: { prefetchDepth: 0 } });
      const expertBytes = probe.experts.expertBytes;
      const sparseLayers = probe.spec.sparseLayers.filter(Boolean).length;
      await probe[Symbol.asyncDispose]();
      const budgets: [string, ExpertCacheOptions][] = [
        ['one expert per layer', { budgetMb: (sparseLayers * expertBytes) / 2 ** 20 }],
        ['25% of expert bytes', { budgetFraction: 0.25 }],
        ['every expert', {}],
      ];
      // The whole grid on the CPU; on GPU providers (slow under lavapipe), and for the second form, the
      // policies that evict, at depth 1.
      const full = device === 'cpu' && coverage === 'grid';
      const policies = full ? POLICY_NAMES : (['lru', 'static', 'none'] as const);
      for (const policy of policies) {
        for (const prefetchDepth of full ? [0, 1, 2] : [1]) {
          for (const [budgetName, budget] of budgets) {
            if (policy === 'all' && budgetName !== 'every expert') continue; // 'all' ignores the budget
            test(`${policy}, prefetch depth ${prefetchDepth}, ${budgetName}: same tokens and logits within 1e-5, inside the budget`, async () => {
              await using model = await MoeModel.load(dir, { device, compute, experts: { ...budget, policy, prefetchDepth, profilePath } });
              const result = await run(model, prompt);
              assert.deepEqual(result.tokens, reference.tokens);
              const d = maxAbsDiff(result.logits, reference.logits);
              assert.ok(d <= 1e-5, `max |logit diff| ${d}`);
            });
          }
        }
      }
    });
  }

  describe(`expert eviction on ${device}`, () => {
    for (const [formName, compute] of FORMS)
    test(`${formName}: evicted experts are disposed: live resident experts track exactly the cache contents`, async () => {
      const before = DeviceTensor.liveCount;
      const expertsBefore = liveResidentExperts();
      // Every miss loaded into the device tier: hybrid misses keep CPU forms of their own (hybrid-experts.test.ts).
      const model = await MoeModel.load(TINY_MOE_DIR, { device, compute, missPlacement: 'upload', experts: { policy: 'lru', budgetFraction: 0.1, prefetchDepth: 1 } });
      const tensorsPerExpert = compute.expertDtype === 'int4' ? 6 : 3; // (packed, scales) or the float matrix, for gate, up, down
      const residentWeights = DeviceTensor.liveCount - before - (model.runtime.onGpu ? tensorsPerExpert * (model.experts.stats().residentBytes / model.experts.expertBytes) : 0);
      await run(model, 'A list comprehension');
      const s = model.experts.stats();
      assert.ok(s.total.evictions > 0, 'a 10% budget evicts');
      assert.equal(liveResidentExperts() - expertsBefore, s.residentBytes / s.expertBytes, 'one live resident expert per cached expert, none for evicted ones');
      if (model.runtime.onGpu) {
        assert.equal(DeviceTensor.liveCount - before, residentWeights + tensorsPerExpert * (s.residentBytes / s.expertBytes), 'the live device tensors of every resident expert, no more');
      }
      await model[Symbol.asyncDispose]();
      await new Promise((r) => setImmediate(r));
      assert.equal(liveResidentExperts(), expertsBefore, 'unloading frees every resident expert');
      assert.equal(DeviceTensor.liveCount, before, 'unloading frees every device tensor');
    });

    test('experts pinned by concurrent forward passes stay alive even when they exceed the budget', async () => {
      const probe = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32, experts: { policy: 'lru', prefetchDepth: 0 } });
      const { expertBytes } = probe.experts;
      const topK = probe.spec.topK;
      await probe[Symbol.asyncDispose]();
      // Room for exactly one layer's top-k: two passes holding top-k each must go over budget.
      const model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32, experts: { policy: 'lru', budgetMb: (topK * expertBytes) / (1024 * 1024), prefetchDepth: 0 } });
      try {
        const experts = Array.from({ length: topK }, (_, e) => e);
        const before = liveResidentExperts();
        const [a, b] = await Promise.all([model.experts.acquire(0, experts), model.experts.acquire(1, experts)]);
        assert.equal(liveResidentExperts() - before, 2 * topK, 'both leases hold live experts');
        assert.ok(model.experts.stats().overBudget > 0, 'the overflow is counted');
        a.release();
        b.release();
        const c = await model.experts.acquire(2, experts);
        c.release();
        assert.ok(model.experts.stats().residentBytes <= topK * expertBytes, 'back within budget once unpinned');
      } finally {
        await model[Symbol.asyncDispose]();
      }
    });

    test('a budget smaller than one expert is refused with a clear error', async () => {
      await assert.rejects(MoeModel.load(TINY_MOE_DIR, { device, experts: { budgetMb: 0.1 } }), /smaller than one expert/);
    });
  });
}
