// Penalties and logprobs on the real model: the single-sequence loop and the batching engine give the same
// tokens and logprobs, a frequency penalty breaks a greedy loop, and the first logprob is transformers' own.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BatchEngine, type CompletionRequest, type CompletionStream } from '../../src/engine/batch-engine.js';
import { generate, type GenerateResult } from '../../src/engine/generate.js';
import type { TokenLogprob } from '../../src/engine/logit-processing.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { asTokens } from '../../src/tokenizer/token.js';
import { logitTolerance, testDevices, F32 } from '../helpers/devices.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, TINY_MOE_DIR, readJson } from '../helpers/paths.js';

const GREEDY = { temperature: 0, topP: 1, topK: 0 };
const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
// Greedy tiny-moe answers this prompt with one token pair over and over (see its greedy_ids in the fixture).
const LOOPING_PROMPT = 'Q: What is a generator?\nA:';

async function alone(model: MoeModel, req: CompletionRequest): Promise<GenerateResult> {
  const stream = generate(model, req);
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return step.value;
}

async function drain(stream: CompletionStream): Promise<{ ids: number[]; logprobs: readonly TokenLogprob[] | undefined; streamed: (TokenLogprob | undefined)[] }> {
  const streamed: (TokenLogprob | undefined)[] = [];
  for await (const chunk of stream) if (chunk.tokenId !== null) streamed.push(chunk.logprob);
  const r = await stream.result;
  return { ids: [...r.completionIds], logprobs: r.logprobs, streamed };
}

function repeats(ids: readonly number[]): number {
  return ids.length - new Set(ids).size;
}

function assertLogprobsClose(actual: readonly TokenLogprob[] | undefined, expected: readonly TokenLogprob[] | undefined, tolerance: number, what: string): void {
  assert.ok(actual && expected, `${what}: logprobs present`);
  assert.equal(actual.length, expected.length, `${what}: one per token`);
  actual.forEach((a, i) => {
    const e = expected[i]!;
    assert.equal(a.token, e.token, `${what} token ${i}`);
    assert.ok(Math.abs(a.logprob - e.logprob) <= tolerance, `${what} token ${i}: ${a.logprob} vs ${e.logprob}`);
    assert.deepEqual(a.top.map((t) => t.token), e.top.map((t) => t.token), `${what} token ${i}: top tokens`);
    a.top.forEach((t, j) => assert.ok(Math.abs(t.logprob - e.top[j]!.logprob) <= tolerance, `${what} token ${i} top ${j}`));
  });
}

function logSoftmax(logits: readonly number[]): number[] {
  const max = Math.max(...logits);
  const logSumExp = max + Math.log(logits.reduce((s, x) => s + Math.exp(x - max), 0));
  return logits.map((x) => x - logSumExp);
}

for (const device of testDevices()) {
  describe(`penalties and logprobs on ${device}`, () => {
    let model: MoeModel;
    before(async () => {
      model = await MoeModel.load(TINY_MOE_DIR, { device, compute: F32 });
    });
    after(async () => {
      await model[Symbol.asyncDispose]();
    });

    test('a frequency penalty of 2 changes a greedy continuation that loops, and it repeats less', async () => {
      const base = { promptIds: model.tokenizer.encode(LOOPING_PROMPT), maxTokens: 24, sampling: GREEDY };
      const plain = [...(await alone(model, base)).completionIds];
      const penalized = [...(await alone(model, { ...base, penalties: { presence: 0, frequency: 2 } })).completionIds];
      assert.ok(repeats(plain) > plain.length / 2, `the unpenalized continuation loops: ${plain}`);
      assert.notDeepEqual(penalized, plain);
      assert.ok(repeats(penalized) < repeats(plain), `repeats: ${repeats(penalized)} penalized vs ${repeats(plain)}`);
    });

    test('a request with penalties and logprobs batched with 3 others gets the tokens and logprobs it gets alone', async () => {
      const prompts = reference.prompts.map((p) => asTokens(p.input_ids));
      const requests: CompletionRequest[] = [
        { promptIds: prompts[2]!, maxTokens: 16, sampling: { temperature: 0.8, topP: 0.95, topK: 0 }, seed: 7, penalties: { presence: 0.5, frequency: 1 }, logprobs: 5 },
        { promptIds: prompts[0]!, maxTokens: 12, sampling: GREEDY },
        { promptIds: prompts[1]!, maxTokens: 14, sampling: GREEDY, penalties: { presence: -0.5, frequency: 0.3 }, logprobs: 0 },
        { promptIds: prompts[3]!, maxTokens: 10, sampling: { temperature: 1, topP: 1, topK: 20 }, seed: 8 },
      ];
      const expected: GenerateResult[] = [];
      for (const r of requests) expected.push(await alone(model, r));
      await using engine = new BatchEngine(model, { maxBatchTokens: 64, maxSeqs: 4, maxQueue: 8 });
      const results = await Promise.all(requests.map((r) => drain(engine.submit(r))));
      results.forEach((r, i) => {
        assert.deepEqual(r.ids, expected[i]!.completionIds, `request ${i} tokens`);
        if (requests[i]!.logprobs === undefined) {
          assert.equal(r.logprobs, undefined, `request ${i} asked for no logprobs`);
          assert.ok(r.streamed.every((l) => l === undefined));
          return;
        }
        assertLogprobsClose(r.logprobs, expected[i]!.logprobs, 1e-5, `request ${i}`);
        assert.deepEqual(r.streamed, r.logprobs, `request ${i}: the streamed logprobs are the result's`);
      });
      assert.equal(results[0]!.logprobs?.[0]?.top.length, 5);
      assert.equal(results[2]!.logprobs?.[0]?.top.length, 0);
    });

    test('greedy with logprobs: every chosen token is the top-1 token', async () => {
      for (const p of reference.prompts) {
        const r = await alone(model, { promptIds: asTokens(p.input_ids), maxTokens: 16, sampling: GREEDY, logprobs: 3 });
        assert.equal(r.logprobs?.length, r.completionIds.length);
        r.logprobs?.forEach((l, i) => {
          assert.equal(l.token, r.completionIds[i]);
          assert.equal(l.top[0]?.token, l.token, `${JSON.stringify(p.prompt)} token ${i}`);
          assert.equal(l.top[0]?.logprob, l.logprob);
        });
        assert.deepEqual(r.completionIds, p.greedy_ids.slice(0, 16), 'logprobs do not change the greedy tokens');
      }
    });

    test("the first token's logprobs are the log-softmax of transformers' last-position logits", async () => {
      const tolerance = logitTolerance(device, 1e-4);
      for (const p of reference.prompts) {
        assert.ok(p.last_logits);
        const expected = logSoftmax(p.last_logits);
        const r = await alone(model, { promptIds: asTokens(p.input_ids), maxTokens: 1, sampling: GREEDY, logprobs: 20 });
        const first = r.logprobs?.[0];
        assert.ok(first);
        const entries = [first, ...first.top];
        for (const e of entries) {
          const diff = Math.abs(e.logprob - expected[e.token]!);
          assert.ok(diff <= tolerance, `${JSON.stringify(p.prompt)} token ${e.token}: |logprob diff| ${diff.toExponential(2)}`);
        }
      }
    });

    test('prompt logprobs are the same computed in one step and in chunks of 3 tokens beside other requests', async () => {
      const tolerance = logitTolerance(device, 1e-4);
      const ids = asTokens([...reference.prompts[0]!.input_ids, ...reference.prompts[0]!.greedy_ids.slice(0, 10)]);
      const score = { promptIds: ids, maxTokens: 0, sampling: GREEDY, promptLogprobs: 2 };
      const whole = await alone(model, score);
      await using engine = new BatchEngine(model, { maxBatchTokens: 3, maxSeqs: 4, maxQueue: 8 });
      const others = [1, 2].map((i) => engine.submit({ promptIds: asTokens(reference.prompts[i]!.input_ids), maxTokens: 6, sampling: GREEDY }));
      const chunked = engine.submit(score);
      for (const o of others) await drain(o);
      for await (const c of chunked) void c;
      const r = await chunked.result;
      assert.equal(whole.promptLogprobs?.length, ids.length);
      assert.equal(whole.promptLogprobs?.[0], null);
      assert.deepEqual(r.completionIds, [], 'max_tokens 0 generates nothing');
      assert.equal(r.finishReason, 'length');
      assertLogprobsClose(r.promptLogprobs?.slice(1) as TokenLogprob[], whole.promptLogprobs?.slice(1) as TokenLogprob[], tolerance, 'chunked prompt');
      // Position t's logprob is of the prompt's own token t.
      r.promptLogprobs?.slice(1).forEach((lp, t) => assert.equal(lp?.token, ids[t + 1]));
    });
  });
}
