// MoeModel.load checks every tensor the model will read before it builds anything: a checkpoint with one
// expert tensor missing, misshapen or of another dtype fails to load, naming it, where it used to load,
// report healthy, and fail every request routed to that expert (experts are read on demand).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { generate } from '../../src/engine/generate.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { CheckpointTensorsError } from '../../src/model/errors.js';
import { quantizeCheckpoint } from '../../src/model/quantize-checkpoint.js';
import { expertTensorNames } from '../../src/model/tensor-names.js';
import { F32, testDevices } from '../helpers/devices.js';
import { FIXTURES_DIR } from '../helpers/paths.js';
import { relabel, rewriteCheckpoint, without } from '../helpers/rewrite-checkpoint.js';

const MIXTRAL = join(FIXTURES_DIR, 'mixtral');
const scratch = await mkdtemp(join(tmpdir(), 'moe-serve-checkpoint-load-'));
after(() => rm(scratch, { recursive: true, force: true }));

for (const device of testDevices()) {
  describe(`loading a checkpoint on ${device}`, () => {
    // The last expert of the last layer: nothing reads it before a request is routed to it.
    const { gate, up, down } = expertTensorNames('mixtral', 1, 3);
    const cases = [
      { what: 'one expert tensor missing', edit: without(down), tensor: down, says: 'missing; expected F32, F16 or BF16 [64, 96]' },
      { what: 'an expert tensor of the wrong shape', edit: relabel(gate, { shape: [64, 96] }), tensor: gate, says: 'F32 [64, 96]; expected F32, F16 or BF16 [96, 64]' },
      { what: 'an expert tensor of the wrong dtype', edit: relabel(up, { dtype: 'I32' }), tensor: up, says: 'I32 [96, 64]; expected F32, F16 or BF16 [96, 64]' },
    ];
    for (const c of cases) {
      test(`fails on a checkpoint with ${c.what}, naming it`, async () => {
        await using broken = await rewriteCheckpoint(MIXTRAL, c.edit);
        // Every expert fits the budget and none is preloaded: only the check can find the broken one.
        await assert.rejects(MoeModel.load(broken.dir, { device, compute: F32 }), (err: unknown) => {
          assert.ok(err instanceof CheckpointTensorsError, String(err));
          assert.ok(err.message.includes(`"${c.tensor}"`) && err.message.includes(c.says), err.message);
          return true;
        });
      });
    }

    test('loads and generates from a quantized checkpoint (int4 experts, int8 weights)', async () => {
      const out = join(scratch, `mixtral-int4-${device}`);
      await quantizeCheckpoint({ modelDir: MIXTRAL, outDir: out, expertDtype: 'int4', weightDtype: 'int8' });
      await using model = await MoeModel.load(out, { device });
      assert.equal(model.computeForms.experts, 'int4');
      const stream = generate(model, { promptIds: model.tokenizer.encode('Hello'), maxTokens: 4, sampling: { temperature: 0, topP: 1, topK: 0 }, ignoreEos: true });
      let step = await stream.next();
      while (!step.done) step = await stream.next();
      assert.equal(step.value.completionIds.length, 4);
    });
  });
}
