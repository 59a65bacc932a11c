// Every gpu-buffer tensor a session returns is disposed exactly once: garbage collection never frees GPU
// memory (PLATFORM.md), so a missed dispose is a leak and a double dispose is a bug. Runs on GPU devices
// only (`npm run test:webgpu`); on the CPU provider there are no gpu-buffer tensors to track.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import { generate } from '../../src/engine/generate.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { liveGpuTensorCount } from '../../src/runtime/onnx-runtime.js';
import { testDevices } from '../helpers/devices.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

const TENSORS_PER_EXPERT = 3;

for (const device of testDevices().filter((d) => d !== 'cpu')) {
  describe(`gpu tensor lifetimes on ${device}`, () => {
    test('generation leaves exactly the resident weights and loaded experts alive, and unloading frees them all', async () => {
      const before = liveGpuTensorCount();
      const model = await MoeModel.load(TINY_MOE_DIR, { device });
      const afterLoad = liveGpuTensorCount();
      const loaded = () => model.experts.stats().total.bytesToDevice / model.experts.expertBytes;
      const loadsAfterLoad = loaded();
      assert.ok(afterLoad > before, 'resident weights live on the GPU');
      for (const prompt of ['The Python interpreter', 'import os\n']) {
        const stream = generate(model, { promptIds: model.tokenizer.encode(prompt), maxTokens: 12, sampling: { temperature: 0, topP: 1, topK: 0 } });
        for (let step = await stream.next(); !step.done; step = await stream.next()) {
          assert.ok(liveGpuTensorCount() >= afterLoad, 'a tensor was disposed twice');
        }
      }
      const newExperts = loaded() - loadsAfterLoad;
      assert.equal(liveGpuTensorCount(), afterLoad + TENSORS_PER_EXPERT * newExperts, 'transient tensors of the forward pass or KV cache leaked');
      await model[Symbol.asyncDispose]();
      assert.equal(liveGpuTensorCount(), before, 'unloading the model freed every GPU tensor');
    });

    test('a batch of sequences joined and split on the device, with evictions, leaks nothing', async () => {
      const before = liveGpuTensorCount();
      const model = await MoeModel.load(TINY_MOE_DIR, { device, experts: { budgetFraction: 0.25 } });
      const residentExperts = () => model.experts.stats().residentBytes / model.experts.expertBytes;
      const weightsOnly = liveGpuTensorCount() - TENSORS_PER_EXPERT * residentExperts();
      {
        await using engine = new BatchEngine(model, { maxBatchTokens: 64, maxSeqs: 4, maxQueue: 8 });
        const prompts = ['The Python interpreter', 'import os\n', 'A list comprehension', 'Q: What is a generator?\nA:'];
        await Promise.all(prompts.map((p) => engine.submit({ promptIds: model.tokenizer.encode(p), maxTokens: 8, sampling: { temperature: 0, topP: 1, topK: 0 } }).result));
      }
      await new Promise((r) => setImmediate(r));
      assert.ok(model.experts.stats().total.evictions > 0, 'the 25% budget evicted experts');
      assert.equal(liveGpuTensorCount(), weightsOnly + TENSORS_PER_EXPERT * residentExperts(), 'only resident weights and resident experts remain');
      await model[Symbol.asyncDispose]();
      await new Promise((r) => setImmediate(r));
      assert.equal(liveGpuTensorCount(), before, 'unloading the model freed every GPU tensor');
    });
  });
}
