// Load-time validation of a checkpoint's tensors from its safetensors headers (src/model/checkpoint-tensors.ts):
// every tensor the model will read, experts included, is present with the dtype and shape it needs, or
// one error names all that are not.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { checkCheckpointTensors, requiredTensors } from '../../src/model/checkpoint-tensors.js';
import { packedNames } from '../../src/model/compressed-tensors.js';
import { CheckpointTensorsError, type TensorProblem } from '../../src/model/errors.js';
import { loadModelConfig } from '../../src/model/hf-config.js';
import { quantizeCheckpoint } from '../../src/model/quantize-checkpoint.js';
import { SafetensorsArchive } from '../../src/model/safetensors.js';
import { expertTensorNames, layerTensorNames } from '../../src/model/tensor-names.js';
import { FIXTURES_DIR, TINY_MOE_DIR } from '../helpers/paths.js';
import { relabel, rewriteCheckpoint, without } from '../helpers/rewrite-checkpoint.js';
import { makeCheckpoint } from '../reference/make-checkpoint.js';

const MIXTRAL = join(FIXTURES_DIR, 'mixtral');
const QWEN2 = join(FIXTURES_DIR, 'qwen2_moe');
const OLMOE = join(FIXTURES_DIR, 'olmoe');

const scratch = await mkdtemp(join(tmpdir(), 'moe-serve-checkpoint-tensors-'));
after(() => rm(scratch, { recursive: true, force: true }));

async function check(dir: string): Promise<void> {
  const spec = await loadModelConfig(dir);
  await using archive = await SafetensorsArchive.open(dir);
  checkCheckpointTensors(archive, spec, dir);
}

/** The error checking `dir` throws. */
async function failure(dir: string): Promise<CheckpointTensorsError> {
  try {
    await check(dir);
  } catch (err) {
    assert.ok(err instanceof CheckpointTensorsError, `expected CheckpointTensorsError, got ${String(err)}`);
    return err;
  }
  assert.fail(`${dir} passed the check`);
}

/** The last expert of the last sparse layer: read only when a request routes to it. */
async function lastExpert(dir: string): Promise<{ gate: string; up: string; down: string }> {
  const spec = await loadModelConfig(dir);
  return expertTensorNames(spec.family, spec.sparseLayers.lastIndexOf(true), spec.numExperts - 1);
}

describe('requiredTensors', () => {
  test('lists exactly the tensors of each fixture, tiny-moe and a generated qwen3_moe, which pass the check', async () => {
    await using qwen3 = await makeCheckpoint({ family: 'qwen3_moe', dtype: 'BF16', tieWordEmbeddings: true, seed: 3 });
    for (const dir of [MIXTRAL, QWEN2, OLMOE, TINY_MOE_DIR, qwen3.dir]) {
      const spec = await loadModelConfig(dir);
      await using archive = await SafetensorsArchive.open(dir);
      // Equal sets: a tensor the loader reads but this list lacks would show up as one left over here.
      const required = requiredTensors(spec, (n) => archive.has(n)).map((t) => t.name);
      assert.deepEqual(new Set(required), new Set(archive.names()), dir);
      assert.equal(required.length, new Set(required).size, `${dir}: no tensor listed twice`);
      checkCheckpointTensors(archive, spec, dir);
    }
  });

  test('checks tiny-moe (6 layers x 16 experts) in milliseconds, reading no tensor bytes', async (t) => {
    const spec = await loadModelConfig(TINY_MOE_DIR);
    await using archive = await SafetensorsArchive.open(TINY_MOE_DIR);
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      checkCheckpointTensors(archive, spec, TINY_MOE_DIR);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    t.diagnostic(`tiny-moe: ${requiredTensors(spec, (n) => archive.has(n)).length} tensors checked in ${times[2]?.toFixed(2)} ms (median of 5: ${times.map((ms) => ms.toFixed(2)).join(', ')} ms)`);
    assert.equal(archive.bytesRead, 0, 'headers only');
    assert.ok((times[2] ?? Infinity) < 50, `median ${times[2]} ms`);
  });
});

describe('checkCheckpointTensors', () => {
  for (const dir of [MIXTRAL, QWEN2, OLMOE]) {
    test(`names a missing expert tensor, the file searched and what was expected (${dir.split('/').pop()})`, async () => {
      const { down } = await lastExpert(dir);
      await using broken = await rewriteCheckpoint(dir, without(down));
      const err = await failure(broken.dir);
      const spec = await loadModelConfig(dir);
      const expected = `F32, F16 or BF16 [${spec.hiddenSize}, ${spec.expertIntermediateSize}] (or its compressed-tensors weight_packed form)`;
      assert.deepEqual(err.problems, [{ tensor: down, kind: 'missing', file: null, expected, found: null }]);
      assert.deepEqual(err.files, ['model.safetensors']);
      assert.match(err.message, new RegExp(`^The weights in ${broken.dir} do not match its config.json: 1 tensor missing, 0 with the wrong dtype or shape \\(checked against the headers of model\\.safetensors\\)`));
      assert.ok(err.message.includes(`"${down}": missing; expected ${expected}`), err.message);
      assert.equal(err.code, 'checkpoint_tensors');
    });
  }

  test('names an expert tensor of the wrong shape, with the shape found and expected', async () => {
    const { gate } = await lastExpert(MIXTRAL);
    await using broken = await rewriteCheckpoint(MIXTRAL, relabel(gate, { shape: [64, 96] }));
    const err = await failure(broken.dir);
    assert.deepEqual(err.problems, [{ tensor: gate, kind: 'shape', file: 'model.safetensors', expected: 'F32, F16 or BF16 [96, 64]', found: 'F32 [64, 96]' }]);
    assert.ok(err.message.includes(`"${gate}" in model.safetensors: F32 [64, 96]; expected F32, F16 or BF16 [96, 64]`), err.message);
  });

  test('names an expert tensor of the wrong dtype, with the dtype found and expected', async () => {
    const { up } = await lastExpert(OLMOE);
    await using broken = await rewriteCheckpoint(OLMOE, relabel(up, { dtype: 'I32' }));
    const err = await failure(broken.dir);
    assert.deepEqual(err.problems, [{ tensor: up, kind: 'dtype', file: 'model.safetensors', expected: 'F32, F16 or BF16 [48, 64]', found: 'I32 [48, 64]' }]);
  });

  test("names a missing tensor of qwen2_moe's shared expert and a misshapen shared-expert gate", async () => {
    const n = layerTensorNames('qwen2_moe', 1);
    await using broken = await rewriteCheckpoint(QWEN2, (t) => relabel(n.sharedExpertGate, { shape: [64, 1] })(without(n.sharedExpert.up)(t)));
    const err = await failure(broken.dir);
    assert.deepEqual(err.problems.map((p) => [p.tensor, p.kind]), [[n.sharedExpert.up, 'missing'], [n.sharedExpertGate, 'shape']]);
  });

  test('reports attention biases that some layers have and others lack', async () => {
    const n = layerTensorNames('qwen2_moe', 1);
    await using broken = await rewriteCheckpoint(QWEN2, without(n.kBias));
    assert.deepEqual((await failure(broken.dir)).problems.map((p) => p.tensor), [n.kBias]);
  });

  test('reports a misshapen per-head q_norm of qwen3_moe', async () => {
    await using source = await makeCheckpoint({ family: 'qwen3_moe', seed: 4 });
    const n = layerTensorNames('qwen3_moe', 2);
    await using broken = await rewriteCheckpoint(source.dir, relabel(n.qNorm, { shape: [16, 2] }));
    assert.deepEqual((await failure(broken.dir)).problems, [{ tensor: n.qNorm, kind: 'shape', file: 'model.safetensors', expected: 'F32, F16 or BF16 [32]', found: 'F32 [16, 2]' }]);
  });

  test('puts every problem in one error, listing 20 and counting the rest', async () => {
    const spec = await loadModelConfig(MIXTRAL);
    const experts = Array.from({ length: spec.numLayers * spec.numExperts }, (_, i) => expertTensorNames('mixtral', Math.floor(i / spec.numExperts), i % spec.numExperts));
    const names = experts.flatMap((e) => [e.gate, e.up, e.down]);
    await using broken = await rewriteCheckpoint(MIXTRAL, without(...names));
    const err = await failure(broken.dir);
    assert.equal(err.problems.length, names.length);
    assert.deepEqual(new Set(err.problems.map((p) => p.tensor)), new Set(names));
    const lines = err.message.split('\n');
    assert.equal(lines.filter((l) => l.endsWith('(or its compressed-tensors weight_packed form)')).length, CheckpointTensorsError.maxListed);
    assert.ok(lines.includes(`  ... and ${names.length - CheckpointTensorsError.maxListed} more`), err.message);
    assert.match(err.message, new RegExp(`: ${names.length} tensors missing, 0 with the wrong dtype or shape`));
  });

  describe('a quantized checkpoint (moe-serve quantize: int4 experts with zero points, int8 weights, in shards)', () => {
    const quantized = join(scratch, 'qwen2-int4');
    const expert = expertTensorNames('qwen2_moe', 1, 7);
    const down = packedNames(expert.down);
    const gate = packedNames(expert.gate);
    const problemsOf = async (edit: Parameters<typeof rewriteCheckpoint>[1]): Promise<readonly TensorProblem[]> => {
      await using broken = await rewriteCheckpoint(quantized, edit);
      return (await failure(broken.dir)).problems;
    };

    test('passes, as written', async () => {
      await quantizeCheckpoint({ modelDir: QWEN2, outDir: quantized, expertDtype: 'int4', weightDtype: 'int8', zeroPoints: true, blockSize: 16, shardBytes: 100_000 });
      assert.ok((await loadModelConfig(quantized)).quantization, 'the checkpoint is declared quantized');
      await using archive = await SafetensorsArchive.open(quantized);
      assert.ok(archive.has(down.packed) && !archive.has(expert.down), 'experts are stored packed');
      assert.ok(archive.fileLabels.length > 1, 'in shards');
      await check(quantized);
    });

    test("names a packed expert's missing values, scales and weight_shape", async () => {
      assert.deepEqual(await problemsOf(without(down.packed)), [{ tensor: down.packed, kind: 'missing', file: null, expected: 'I32 [64, 6 (4 bits) or 12 (8 bits)]', found: null }]);
      assert.deepEqual(
        (await problemsOf(without(down.scale, gate.shape))).map((p) => [p.tensor, p.kind]),
        [[gate.shape, 'missing'], [down.scale, 'missing']],
      );
    });

    test("names a packed expert whose values, scales or zero points do not fit its shape", async () => {
      const [packed] = await problemsOf(relabel(down.packed, { shape: [32, 12] }));
      assert.deepEqual(packed, { tensor: expert.down, kind: 'packed', file: 'model.safetensors', expected: 'a packed [64, 48] weight', found: 'weight_packed has shape [32, 12] for a [64, 48] weight' });
      assert.deepEqual(await problemsOf(relabel(down.zeroPoint, { shape: [3, 8] })), [
        { tensor: down.zeroPoint, kind: 'shape', file: 'model.safetensors', expected: 'I32 [8, 3]', found: 'I32 [3, 8]' },
      ]);
      assert.deepEqual(await problemsOf(relabel(down.scale, { dtype: 'I32' })), [
        { tensor: expert.down, kind: 'packed', file: 'model.safetensors', expected: 'a packed [64, 48] weight', found: 'weight_scale is I32; expected F32, F16 or BF16' },
      ]);
    });
  });
});
