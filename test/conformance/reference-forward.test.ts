// The engine against an independent float64 reference of the transformers forward pass.
// First the reference itself is checked against transformers' own outputs (the fixtures); then the engine
// is run on seeded random checkpoints of families that have no transformers fixture (Qwen3-MoE), and
// compared position by position, layer by layer, and over a greedy continuation through the KV cache.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { MoeModel } from '../../src/engine/moe-model.js';
import { loadModelConfig, type ModelSpec } from '../../src/model/hf-config.js';
import { makeCheckpoint, type CheckpointOptions } from '../reference/make-checkpoint.js';
import { loadWeights, referenceForward, referenceGreedy, type WeightLookup } from '../reference/reference-forward.js';
import { assertRoutesEqual, maxAbsDiff, runEngine } from '../helpers/engine-compare.js';
import { logitTolerance, testDevices, F32 } from '../helpers/devices.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, TINY_MOE_DIR } from '../helpers/paths.js';

const PROMPTS = ['The quick brown fox', 'A computer is like', 'Q: Why?\nA:'];
const GREEDY_STEPS = 16;


describe('reference forward reproduces transformers', () => {
  for (const family of ['mixtral', 'qwen2_moe', 'olmoe']) {
    test(`${family}: logits within 1e-4, router top-k and greedy tokens as in reference.json`, async () => {
      const dir = path.join(FIXTURES_DIR, family);
      const spec = await loadModelConfig(dir);
      const weights = await loadWeights(dir);
      const fixture = JSON.parse(await readFile(path.join(dir, 'reference.json'), 'utf8')) as { prompts: FixturePrompt[] };
      for (const p of fixture.prompts) {
        const out = referenceForward(spec, weights, p.input_ids);
        const diff = maxAbsDiff(out.logits, (p.logits ?? []).flat());
        assert.ok(diff < 1e-4, `${family} ${JSON.stringify(p.prompt)}: max |logit diff| ${diff.toExponential(2)}`);
        assertRoutesEqual(out.routerTopK, p.router_topk, `${family} ${JSON.stringify(p.prompt)}`);
        assert.deepEqual(referenceGreedy(spec, weights, p.input_ids, p.greedy_ids.length), p.greedy_ids);
      }
    });
  }

  test('tiny-moe (bf16 Mixtral, 6 layers): last-position logits within 1e-4 and router top-k', async () => {
    const dir = TINY_MOE_DIR;
    const spec = await loadModelConfig(dir);
    const weights = await loadWeights(dir);
    const fixture = JSON.parse(await readFile(path.join(FIXTURES_DIR, 'tiny-moe-reference.json'), 'utf8')) as { prompts: FixturePrompt[] };
    for (const p of fixture.prompts) {
      const out = referenceForward(spec, weights, p.input_ids);
      const T = p.input_ids.length;
      const diff = maxAbsDiff(out.logits.subarray((T - 1) * spec.vocabSize), p.last_logits ?? []);
      assert.ok(diff < 1e-4, `tiny-moe ${JSON.stringify(p.prompt)}: max |logit diff| ${diff.toExponential(2)}`);
      assertRoutesEqual(out.routerTopK, p.router_topk, `tiny-moe ${JSON.stringify(p.prompt)}`);
    }
  });
});

/** The spec fields this test relies on, read from config.json by Hugging Face's own rules. */
function assertSpecFollowsConfig(spec: ModelSpec, c: Readonly<Record<string, unknown>>): void {
  const n = (key: string) => c[key] as number;
  assert.equal(spec.headDim, typeof c['head_dim'] === 'number' ? c['head_dim'] : n('hidden_size') / n('num_attention_heads'), 'head_dim');
  assert.equal(spec.tieWordEmbeddings, c['tie_word_embeddings'], 'tie_word_embeddings');
  assert.equal(spec.ropeTheta, (c['rope_parameters'] as { rope_theta: number }).rope_theta, 'rope theta');
  assert.equal(spec.rmsNormEps, n('rms_norm_eps'), 'rms_norm_eps');
  if (c['model_type'] === 'qwen3_moe' || c['model_type'] === 'qwen2_moe') {
    const mlpOnly = c['mlp_only_layers'] as number[];
    const step = n('decoder_sparse_step');
    const sparse = Array.from({ length: n('num_hidden_layers') }, (_, i) => !mlpOnly.includes(i) && (i + 1) % step === 0);
    assert.deepEqual(spec.sparseLayers, sparse, 'sparse layers from mlp_only_layers / decoder_sparse_step');
    assert.equal(spec.normTopKProb, c['norm_topk_prob'], 'norm_topk_prob');
    assert.equal(spec.expertIntermediateSize, n('moe_intermediate_size'), 'moe_intermediate_size');
    assert.equal(spec.denseIntermediateSize, n('intermediate_size'), 'intermediate_size');
  }
}

/** The reference's margin between its two best logits at each greedy step: tiny margins explain flips. */
function greedyMargins(spec: ModelSpec, weights: WeightLookup, prompt: readonly number[], greedy: readonly number[]): string {
  const margins = greedy.map((_, i) => {
    const ids = [...prompt, ...greedy.slice(0, i)];
    const row = [...referenceForward(spec, weights, ids).logits.subarray((ids.length - 1) * spec.vocabSize)].sort((a, b) => b - a);
    return (row[0]! - row[1]!).toExponential(1);
  });
  return margins.join(' ');
}

interface EngineCase {
  readonly label: string;
  readonly options: CheckpointOptions;
}

const ENGINE_CASES: readonly EngineCase[] = [
  { label: 'qwen3_moe F32 untied', options: { family: 'qwen3_moe', dtype: 'F32', seed: 11 } },
  { label: 'qwen3_moe F32 tied', options: { family: 'qwen3_moe', dtype: 'F32', tieWordEmbeddings: true, seed: 12 } },
  { label: 'qwen3_moe BF16 untied', options: { family: 'qwen3_moe', dtype: 'BF16', seed: 13 } },
  { label: 'qwen3_moe BF16 tied', options: { family: 'qwen3_moe', dtype: 'BF16', tieWordEmbeddings: true, seed: 14 } },
  // The same generator on families the fixtures already cover, to check the generator itself.
  { label: 'mixtral F32 untied', options: { family: 'mixtral', dtype: 'F32', seed: 21 } },
  { label: 'qwen2_moe F32 (dense layer, shared expert, qkv bias)', options: { family: 'qwen2_moe', seed: 31 } },
  { label: 'olmoe BF16', options: { family: 'olmoe', dtype: 'BF16', seed: 41 } },
  {
    label: 'olmoe F32 clip_qkv 0.5',
    options: { family: 'olmoe', seed: 42, config: { clip_qkv: 0.5 } },
    // modeling_olmoe: q_norm(q_proj(x)), k_norm(k_proj(x)), then clamp.
  },
];

for (const device of testDevices()) describe(`engine on ${device} matches the reference on random checkpoints`, () => {
  const tolerance = logitTolerance(device, 1e-3);
  for (const { label, options } of ENGINE_CASES) {
    test(`${label}: logits within ${tolerance}, equal router top-k, identical 16-token greedy continuation`, async () => {
      await using checkpoint = await makeCheckpoint(options);
      await using model = await MoeModel.load(checkpoint.dir, { device, compute: F32 });
      assertSpecFollowsConfig(model.spec, checkpoint.config);
      const weights = await loadWeights(checkpoint.dir);
      for (const [name, t] of checkpoint.tensors) {
        assert.deepEqual(weights(name), t.values, `${name} reads back as written`);
      }
      for (const prompt of PROMPTS) {
        const ids: readonly number[] = model.tokenizer.encode(prompt);
        const what = `${label} ${JSON.stringify(prompt)}`;
        const expected = referenceForward(model.spec, weights, ids);
        const engine = await runEngine(model, ids, GREEDY_STEPS);
        const diff = maxAbsDiff(engine.logits, expected.logits);
        assert.ok(diff < tolerance, `${what}: max |logit diff| ${diff.toExponential(2)}`);
        assertRoutesEqual(engine.routes, expected.routerTopK, what);
        const greedy = referenceGreedy(model.spec, weights, ids, GREEDY_STEPS);
        if (JSON.stringify(engine.greedy) !== JSON.stringify(greedy)) {
          assert.fail(`${what}: greedy ${JSON.stringify(engine.greedy)} != reference ${JSON.stringify(greedy)}; reference top-2 margins ${greedyMargins(model.spec, weights, ids, greedy)}`);
        }
      }
    });
  }
});

test('a qwen3_moe config.json without norm_topk_prob leaves the top-k weights unnormalized, as transformers does', async () => {
  await using checkpoint = await makeCheckpoint({ family: 'qwen3_moe', seed: 15, config: { norm_topk_prob: undefined } });
  assert.equal((await loadModelConfig(checkpoint.dir)).normTopKProb, false);
});
