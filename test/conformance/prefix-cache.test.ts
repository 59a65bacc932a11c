// Prefix caching changes what is computed, never the result: a request whose prompt starts with blocks
// an earlier request computed gets the same tokens and logprobs as without the cache.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { BENCH_PROMPTS } from '../../src/cli/bench-prompts.js';
import { BatchEngine, type CompletionRequest, type CompletionResult } from '../../src/engine/batch-engine.js';
import { kvBytesPerRow } from '../../src/engine/kv-cache.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { BLOCK_TOKENS, PrefixCache } from '../../src/engine/prefix-cache.js';
import type { Token } from '../../src/tokenizer/token.js';
import { F32, testDevices } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const GREEDY = { temperature: 0, topP: 1, topK: 0 };

async function run(engine: BatchEngine, promptIds: readonly number[], maxTokens: number): Promise<CompletionResult> {
  const req: CompletionRequest = { promptIds: promptIds as Token[], maxTokens, sampling: GREEDY, logprobs: 1, ignoreEos: true };
  const stream = engine.submit(req);
  for await (const c of stream) void c;
  return stream.result;
}

function assertSameResult(got: CompletionResult, want: CompletionResult, what: string): void {
  assert.deepEqual(got.completionIds, want.completionIds, `${what}: tokens`);
  got.logprobs?.forEach((lp, i) => {
    const w = want.logprobs?.[i]?.logprob as number;
    assert.ok(Math.abs(lp.logprob - w) < 1e-4, `${what}: logprob ${i}: ${lp.logprob} vs ${w}`);
  });
}

for (const device of testDevices()) {
  describe(`prefix cache on ${device}`, () => {
    let model: MoeModel;
    let long: number[];
    before(async () => {
      model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32 });
      long = model.tokenizer.encode(BENCH_PROMPTS.join(' '));
      assert.ok(long.length > 4 * BLOCK_TOKENS, `the test prompt has ${long.length} tokens`);
    });
    after(async () => model[Symbol.asyncDispose]());

    test('a prompt extending an earlier one, and a next turn holding its reply, reuse its blocks with the same tokens and logprobs', async () => {
      await using cached = new BatchEngine(model, { maxBatchTokens: 512, maxSeqs: 4, maxQueue: 8 }, { prefixCache: new PrefixCache(64 << 20) });
      await using plain = new BatchEngine(model, { maxBatchTokens: 512, maxSeqs: 4, maxQueue: 8 });
      const first = await run(cached, long, 8);
      assertSameResult(first, await run(plain, long, 8), 'first request');
      assert.equal(first.cachedTokens, 0);

      const extended = [...long, ...model.tokenizer.encode(' and then some more words')];
      const second = await run(cached, extended, 8);
      assertSameResult(second, await run(plain, extended, 8), 'extended prompt');
      if (device !== 'cpu') {
        assert.equal(second.cachedTokens, 0, 'GPU KV caches are not copied: the prefix cache is off');
        return;
      }
      assert.equal(second.cachedTokens, Math.floor(long.length / BLOCK_TOKENS) * BLOCK_TOKENS);

      // The next turn: the first prompt, its reply (whose KV holds all of it but the last token), more.
      const nextTurn = [...long, ...first.completionIds, ...model.tokenizer.encode(' Next question')];
      const third = await run(cached, nextTurn, 8);
      assertSameResult(third, await run(plain, nextTurn, 8), 'next turn');
      assert.equal(third.cachedTokens, Math.floor((long.length + first.completionIds.length - 1) / BLOCK_TOKENS) * BLOCK_TOKENS);
      const stats = cached.stats.prefixCache;
      assert.ok(stats && stats.hits === 2 && stats.hitTokens === second.cachedTokens + third.cachedTokens, JSON.stringify(stats));
      assert.equal(plain.stats.prefixCache, null);
    });

    test('the prompt\'s last token is computed even when every block is cached', async () => {
      await using engine = new BatchEngine(model, { maxBatchTokens: 512, maxSeqs: 4, maxQueue: 8 }, { prefixCache: new PrefixCache(64 << 20) });
      const exact = long.slice(0, 4 * BLOCK_TOKENS);
      const a = await run(engine, exact, 4);
      const b = await run(engine, exact, 4);
      assert.deepEqual(b.completionIds, a.completionIds);
      if (device === 'cpu') assert.equal(b.cachedTokens, 3 * BLOCK_TOKENS);
    });

    test('when full, the cache evicts the ends of prefixes first, keeping their first blocks reachable', { skip: device !== 'cpu' && 'the prefix cache is off on GPU providers' }, async () => {
      const blockBytes = BLOCK_TOKENS * kvBytesPerRow(model.spec);
      const cache = new PrefixCache(4 * blockBytes);
      await using engine = new BatchEngine(model, { maxBatchTokens: 512, maxSeqs: 4, maxQueue: 8 }, { prefixCache: cache });
      const chainA = long.slice(0, 4 * BLOCK_TOKENS + 1);
      await run(engine, chainA, 1);
      assert.equal(cache.stats.blocks, 4);
      // Another prompt of two blocks: two of A's go, and they are its last two.
      const chainB = [...long].reverse().slice(0, 2 * BLOCK_TOKENS + 1);
      await run(engine, chainB, 1);
      assert.equal(cache.stats.evictedBlocks, 2);
      const again = await run(engine, chainA, 1);
      assert.equal(again.cachedTokens, 2 * BLOCK_TOKENS);
    });
  });
}
