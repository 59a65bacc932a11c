// Conformance with Hugging Face transformers 5.17: logits, router choices and greedy text of tiny
// random-weight checkpoints (test/fixtures/*/reference.json) and of the embedded tiny-moe model.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { generate } from '../../src/engine/generate.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import type { RoutingEvent } from '../../src/engine/forward.js';
import { asTokens } from '../../src/tokenizer/token.js';
import { logitTolerance, testDevices, F32 } from '../helpers/devices.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, readJson, TINY_MOE_DIR } from '../helpers/paths.js';


const GREEDY = { temperature: 0, topP: 1, topK: 0 };

/** Runs the prompt once, returning logits (positions x vocab) and each layer's top-k sets. */
async function prefill(model: MoeModel, ids: number[]): Promise<{ logits: Float32Array; topk: string[][] }> {
  const topk: string[][] = [];
  const observer = {
    onRouting({ layer, routing: r }: RoutingEvent) {
      topk[layer] = Array.from({ length: r.tokens }, (_, t) => [...r.experts.subarray(t * r.topK, (t + 1) * r.topK)].sort((a, b) => a - b).join(','));
    },
  };
  using kv = model.newSequence();
  const logits = await model.forward.step(kv, ids, 'all', observer);
  return { logits, topk };
}

async function greedyIds(model: MoeModel, ids: number[], maxTokens: number): Promise<number[]> {
  const stream = generate(model, { promptIds: asTokens(ids), maxTokens, sampling: GREEDY });
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return [...step.value.completionIds];
}

function maxAbsDiff(expected: readonly number[], actual: Float32Array, offset: number): number {
  let d = 0;
  expected.forEach((v, i) => (d = Math.max(d, Math.abs(v - (actual[offset + i] as number)))));
  return d;
}

for (const device of testDevices()) {
  for (const family of ['mixtral', 'qwen2_moe', 'olmoe']) {
    describe(`${family} on ${device} matches transformers`, () => {
      const dir = join(FIXTURES_DIR, family);
      const reference = readJson<{ prompts: FixturePrompt[] }>(join(dir, 'reference.json'));
      const tolerance = logitTolerance(device, 1e-3);
      let model: MoeModel;
      before(async () => {
        model = await MoeModel.load(dir, { device, compute: F32 });
      });
      after(async () => {
        await model[Symbol.asyncDispose]();
      });

      for (const p of reference.prompts) {
        test(`logits at every position, router top-k and 16-token greedy continuation for ${JSON.stringify(p.prompt)}`, async () => {
          assert.deepEqual(model.tokenizer.encode(p.prompt), p.input_ids);
          const { logits, topk } = await prefill(model, p.input_ids);
          const V = model.spec.vocabSize;
          assert.ok(p.logits);
          p.logits.forEach((row, t) => {
            const d = maxAbsDiff(row, logits, t * V);
            assert.ok(d <= tolerance, `position ${t}: max |logit diff| ${d} > ${tolerance}`);
          });
          p.router_topk.forEach((layer, l) =>
            layer.forEach((experts, t) => {
              assert.equal(topk[l]?.[t], [...experts].sort((a, b) => a - b).join(','), `layer ${l} position ${t}`);
            }),
          );
          assert.deepEqual(await greedyIds(model, p.input_ids, p.greedy_ids.length), p.greedy_ids);
        });
      }
    });
  }

  describe(`tiny-moe on ${device} matches transformers`, () => {
    const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
    const tolerance = 1e-2;
    let model: MoeModel;
    before(async () => {
      model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32 });
    });
    after(async () => {
      await model[Symbol.asyncDispose]();
    });

    for (const p of reference.prompts) {
      test(`last-position logits and 32-token greedy continuation for ${JSON.stringify(p.prompt)}`, async () => {
        assert.deepEqual(model.tokenizer.encode(p.prompt), p.input_ids);
        const { logits, topk } = await prefill(model, p.input_ids);
        const V = model.spec.vocabSize;
        assert.ok(p.last_logits);
        const d = maxAbsDiff(p.last_logits, logits, (p.input_ids.length - 1) * V);
        assert.ok(d <= tolerance, `max |logit diff| ${d} > ${tolerance}`);
        p.router_topk.forEach((layer, l) =>
          layer.forEach((experts, t) => assert.equal(topk[l]?.[t], [...experts].sort((a, b) => a - b).join(','), `layer ${l} position ${t}`)),
        );
        assert.deepEqual(await greedyIds(model, p.input_ids, p.greedy_ids.length), p.greedy_ids);
      });
    }
  });
}
