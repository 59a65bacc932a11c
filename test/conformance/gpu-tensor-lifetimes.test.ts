// Every gpu-buffer tensor a session returns is disposed exactly once: garbage collection never frees GPU
// memory (PLATFORM.md), so a missed dispose is a leak and a double dispose is a bug. Runs on GPU devices
// only (`npm run test:webgpu`); on the CPU provider there are no gpu-buffer tensors to track.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
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
  });
}
