// S-MBU and S-MFU accounting (src/engine/step-utilization.ts): the formulas against a hand computation for
// models/tiny-moe's config, distinct experts (not top-k x tokens) as the expert bytes, the running tally
// and its window, and the engine's own accounting of a batch of identical requests.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import {
  DistinctExperts,
  RECENT_SECONDS,
  stepCost,
  stepCostModel,
  totalsSince,
  utilizationOf,
  UtilizationTally,
  type WeightSizes,
} from '../../src/engine/step-utilization.js';
import { loadModelConfig } from '../../src/model/hf-config.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

// tiny-moe (models/tiny-moe/config.json): hidden 256, 6 layers, all sparse, 4 heads and 2 KV heads of 64,
// 16 experts of intermediate 256, top-4, vocabulary 8192, no shared expert.
const H = 256;
const L = 6;
const heads = 4;
const kvHeads = 2;
const D = 64;
const E = 16;
const K = 4;
const I = 256;
const V = 8192;

// A fixture's sizes: router lookahead of depth 1 (the last layer predicts nothing), a bf16 embedding table.
const SIZES: WeightSizes = { expertBytes: 110_592, residentBytes: 9_000_000, embeddingBytes: V * H * 2, lookaheadRows: [E, E, E, E, E, 0] };

// By hand, per token: q, k, v (H x (heads + 2 kvHeads) x D), o (heads x D x H), router (E x H) per layer,
// plus 5 layers of lookahead rows (E x H).
const QKV = H * (heads + 2 * kvHeads) * D; // 131,072
const O = heads * D * H; // 65,536
const ROUTER = E * H; // 4,096
const DENSE_PARAMS = L * (QKV + O + ROUTER) + 5 * E * H; // 1,224,704
const EXPERT_PARAMS = 3 * H * I; // 196,608
const LM_HEAD = V * H; // 2,097,152
const KV_ROW = 2 * L * kvHeads * D * 4; // 6,144 bytes: K and V, fp32, every layer
const PAIR_FLOPS = 4 * heads * D * L; // 6,144: QK^T and AV of one (query, key) pair, every layer

describe('step cost model for tiny-moe', () => {
  test('per-token constants match the hand computation', async () => {
    const spec = await loadModelConfig(TINY_MOE_DIR);
    assert.deepEqual([spec.hiddenSize, spec.numLayers, spec.numHeads, spec.numKvHeads, spec.headDim, spec.numExperts, spec.topK, spec.expertIntermediateSize, spec.vocabSize], [H, L, heads, kvHeads, D, E, K, I, V]);
    const m = stepCostModel(spec, SIZES);
    assert.equal(DENSE_PARAMS, 1_224_704);
    assert.equal(m.denseParamsPerToken, DENSE_PARAMS);
    assert.equal(m.expertParams, EXPERT_PARAMS);
    assert.equal(m.expertsPerToken, K * L);
    assert.equal(m.lmHeadParams, LM_HEAD);
    assert.equal(m.attentionFlopsPerPair, PAIR_FLOPS);
    assert.equal(m.kvBytesPerToken, KV_ROW);
    assert.equal(m.embeddingRowBytes, H * 2);
    assert.equal(m.denseBytes, 9_000_000 - V * H * 2);
    assert.equal(m.expertBytes, 110_592);
  });

  test('a decode step of two sequences: bytes and FLOPs by hand', async () => {
    const m = stepCostModel(await loadModelConfig(TINY_MOE_DIR), SIZES);
    const c = stepCost(m, { sequences: [{ past: 10, tokens: 1 }, { past: 20, tokens: 1 }], logitsRows: 2, distinctExperts: 30 });
    assert.equal(c.expertBytes, 30 * 110_592);
    assert.equal(c.denseBytes, 9_000_000 - V * H * 2 + 2 * H * 2);
    // KV: each reads its past and the new row, writes the new row: (10 + 2) + (20 + 2) rows.
    assert.equal(c.kvBytes, 34 * KV_ROW);
    assert.equal(c.bytes, c.expertBytes + c.denseBytes + c.kvBytes);
    // Attention: the new token of each attends to past + 1 positions.
    const flops = 2 * 2 * (DENSE_PARAMS + K * L * EXPERT_PARAMS) + 2 * 2 * LM_HEAD + (11 + 21) * PAIR_FLOPS;
    assert.equal(c.flops, flops);
  });

  test('a prompt chunk: causal attention pairs, logits for its last row only', async () => {
    const m = stepCostModel(await loadModelConfig(TINY_MOE_DIR), SIZES);
    // 5 tokens after 3 cached: token t attends to 3 + t + 1 positions: 4 + 5 + 6 + 7 + 8 = 30 = 5 x 3 + 15.
    const c = stepCost(m, { sequences: [{ past: 3, tokens: 5 }], logitsRows: 1, distinctExperts: 60 });
    assert.equal(c.flops, 2 * 5 * (DENSE_PARAMS + K * L * EXPERT_PARAMS) + 2 * LM_HEAD + 30 * PAIR_FLOPS);
    assert.equal(c.kvBytes, (3 + 5 + 5) * KV_ROW);
    assert.equal(c.denseBytes, 9_000_000 - V * H * 2 + 5 * H * 2);
  });
});

describe('distinct experts drive the expert bytes', () => {
  test('tokens routed to the same experts count them once; FLOPs still count top-k per token', async () => {
    const counter = new DistinctExperts(E);
    // Two tokens, top-4, the same four experts in another order.
    assert.equal(counter.count(Int32Array.of(3, 7, 1, 12, 12, 1, 3, 7)), 4);
    // The next layer starts afresh.
    assert.equal(counter.count(Int32Array.of(3, 5, 6, 8, 9, 10, 11, 13)), 8);
    assert.equal(counter.count(Int32Array.of()), 0);
    const m = stepCostModel(await loadModelConfig(TINY_MOE_DIR), SIZES);
    const shared = stepCost(m, { sequences: [{ past: 4, tokens: 1 }, { past: 4, tokens: 1 }], logitsRows: 2, distinctExperts: 4 * L });
    const apart = stepCost(m, { sequences: [{ past: 4, tokens: 1 }, { past: 4, tokens: 1 }], logitsRows: 2, distinctExperts: 8 * L });
    assert.equal(shared.expertBytes, 4 * L * SIZES.expertBytes);
    assert.equal(apart.expertBytes - shared.expertBytes, 4 * L * SIZES.expertBytes);
    assert.equal(shared.flops, apart.flops);
  });

  test('the engine: two identical greedy requests batched move the experts of one, and twice its KV and FLOPs', async () => {
    await using model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu' });
    const promptIds = model.tokenizer.encode('The Python interpreter');
    const request = { promptIds, maxTokens: 8, sampling: { temperature: 0, topP: 1, topK: 0 }, ignoreEos: true };
    const run = async (n: number) => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: n, maxQueue: n });
      const results = await Promise.all(Array.from({ length: n }, () => engine.submit(request).result));
      assert.ok(results.every((r) => r.completionIds.join() === results[0]?.completionIds.join()));
      return engine.stats.utilization.totals;
    };
    const one = await run(1);
    const two = await run(2);
    // The prompt step, then a decode step per token but the last, for both.
    assert.equal(one.steps, 8);
    assert.equal(two.steps, one.steps);
    assert.ok(one.expertBytes > 0 && one.expertBytes % model.experts.expertBytes === 0);
    assert.equal(two.expertBytes, one.expertBytes, 'the same experts, counted once per step');
    assert.equal(two.kvBytes, 2 * one.kvBytes);
    assert.ok(Math.abs(two.flops - 2 * one.flops) < 1e-6 * one.flops);
    const embeddingRow = model.forward.weightSizes.embeddingBytes / model.spec.vocabSize;
    const tokens = promptIds.length + 7;
    assert.equal(two.denseBytes - one.denseBytes, tokens * embeddingRow);
    assert.ok(one.seconds > 0);
    // The model's tally saw both engines' steps.
    assert.equal(model.forward.utilization.totals.steps, one.steps + two.steps);
  });
});

describe('utilization tally', () => {
  const cost = { expertBytes: 600, denseBytes: 300, kvBytes: 100, bytes: 1000, flops: 5000 };

  test('sums steps; S-MBU and S-MFU are ratios of sums over the peaks', () => {
    const t = new UtilizationTally();
    t.record(cost, 0.5, 10_000);
    t.record(cost, 1.5, 10_100);
    const totals = t.totals;
    assert.deepEqual(totals, { steps: 2, bytes: 2000, expertBytes: 1200, denseBytes: 600, kvBytes: 200, flops: 10_000, seconds: 2 });
    assert.deepEqual(utilizationOf(totals, { memoryBytesPerS: 4000, flopsPerS: 10_000 }), { smbu: 0.25, smfu: 0.5 });
    assert.deepEqual(utilizationOf({ bytes: 0, flops: 0, seconds: 0 }, { memoryBytesPerS: 1, flopsPerS: 1 }), { smbu: null, smfu: null });
    const later = new UtilizationTally();
    later.record(cost, 1, 0);
    assert.equal(totalsSince(totals, later.totals).bytes, 1000);
  });

  test(`the recent window holds the steps of the last ${RECENT_SECONDS} s`, () => {
    const t = new UtilizationTally();
    t.record(cost, 1, 1_000);
    t.record(cost, 1, 5_500);
    assert.equal(t.recent(5_900).steps, 2);
    assert.equal(t.recent(5_900).bytes, 2000);
    // At 17.2 s the step of second 1 is out (window: seconds 2..17), the one of second 5 still in.
    assert.equal(t.recent(17_200).steps, 1);
    assert.equal(t.recent(40_000).steps, 0);
    // Second 17 reuses second 1's bucket, which starts empty: seconds 5 and 17 count, 1 does not.
    t.record(cost, 2, 1_000 + (RECENT_SECONDS + 1) * 1000);
    assert.deepEqual([t.recent(17_000).steps, t.recent(17_000).seconds], [2, 3]);
    assert.equal(t.totals.steps, 3);
  });
});
