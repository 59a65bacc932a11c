import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TINY_MOE_DIR } from '../helpers/paths.js';
import { buildSafetensors, type TensorBytes } from '../helpers/safetensors-bytes.js';

import {
  BadSafetensorsHeaderError,
  BadSafetensorsIndexError,
  MissingTensorError,
  ModelLoadError,
  TensorShapeError,
  UnsupportedDTypeError,
  WeightsNotFoundError,
} from '../../src/model/errors.js';
import {
  BytesRangeReader,
  SafetensorsArchive,
  parseSafetensorsHeader,
  readSafetensorsEntries,
} from '../../src/model/safetensors.js';

function f32(values: readonly number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

/** bf16 by truncation: exact for the values used here. */
function bf16(values: readonly number[]): Uint8Array {
  const bits = new Uint32Array(Float32Array.from(values).buffer);
  return new Uint8Array(Uint16Array.from(bits, (b) => b >>> 16).buffer);
}

function archiveOf(tensors: readonly TensorBytes[], fileLabel = 'test.safetensors'): Promise<SafetensorsArchive> {
  return SafetensorsArchive.fromSources([{ fileLabel, reader: new BytesRangeReader(buildSafetensors(tensors), fileLabel) }]);
}

describe('parseSafetensorsHeader', () => {
  it('gives absolute byte ranges in data order and skips __metadata__', () => {
    const json = JSON.stringify({
      __metadata__: { format: 'pt' },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
      a: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] },
    });
    assert.deepEqual(parseSafetensorsHeader(json, 100, 'f'), [
      { name: 'a', dtype: 'BF16', shape: [2], fileLabel: 'f', byteOffset: 100, byteLength: 4 },
      { name: 'b', dtype: 'F32', shape: [2], fileLabel: 'f', byteOffset: 104, byteLength: 8 },
    ]);
  });

  it('accepts dtypes it cannot convert, and scalars', () => {
    const json = JSON.stringify({ step: { dtype: 'I64', shape: [], data_offsets: [0, 8] }, q: { dtype: 'Q4_WEIRD', shape: [3], data_offsets: [8, 9] } });
    assert.deepEqual(parseSafetensorsHeader(new TextEncoder().encode(json), 8, 'f').map((e) => e.name), ['step', 'q']);
  });

  it('rejects entries whose byte length does not match shape and dtype', () => {
    const json = JSON.stringify({ w: { dtype: 'BF16', shape: [2, 3], data_offsets: [0, 10] } });
    assert.throws(() => parseSafetensorsHeader(json, 8, 'f.safetensors'), (e: unknown) => {
      assert.ok(e instanceof BadSafetensorsHeaderError);
      assert.equal(e.code, 'bad_safetensors_header');
      assert.match(e.message, /f\.safetensors.*"w".*12 bytes.*\[0, 10\] give 10/);
      return true;
    });
  });

  it('rejects malformed entries and non-JSON', () => {
    const bad = [
      '{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}',
      '{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}',
      '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}',
      '{"w": {"shape": [1], "data_offsets": [0, 4]}}',
      '{"w": {"dtype": "F32", "shape": [1]}}',
      '[1, 2]',
      '{"w": ',
    ];
    for (const json of bad) assert.throws(() => parseSafetensorsHeader(json, 8, 'f'), BadSafetensorsHeaderError, json);
    assert.throws(() => parseSafetensorsHeader(new Uint8Array([0x7b, 0xff, 0x7d]), 8, 'f'), /not valid UTF-8/);
  });
});

describe('readSafetensorsEntries', () => {
  it('reads the header through a ByteRangeReader', async () => {
    const bytes = buildSafetensors([
      { name: 'x', dtype: 'F32', shape: [2], data: f32([1, 2]) },
      { name: 'y', dtype: 'BF16', shape: [1, 3], data: bf16([1, 2, 3]) },
    ]);
    const entries = await readSafetensorsEntries(new BytesRangeReader(bytes), 'mem');
    assert.deepEqual(entries.map((e) => [e.name, e.byteLength, e.shape]), [['x', 8, [2]], ['y', 6, [1, 3]]]);
    assert.equal(entries[1]!.byteOffset + entries[1]!.byteLength, bytes.byteLength);
  });

  const corrupt: [string, Uint8Array, RegExp][] = [
    ['a file shorter than the length prefix', new Uint8Array(5), /too short/],
    ['a header length past the end of the file', buildSafetensors([], { headerLength: 4096n }), /header length is 4096 bytes but the file has only/],
    ['a header length above the 100 MB limit', buildSafetensors([], { headerLength: 2n ** 60n }), /above the 100000000-byte limit/],
    ['a header that is not JSON', buildSafetensors([], { rawHeader: '{"w": {"dtype"' }), /not valid JSON/],
    [
      'a tensor whose bytes run past the end of the file',
      buildSafetensors([], { rawHeader: JSON.stringify({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }) }),
      /"w" ends at byte \d+ but the file has \d+ bytes/,
    ],
  ];
  for (const [what, bytes, message] of corrupt) {
    it(`rejects ${what} with BadSafetensorsHeaderError`, async () => {
      await assert.rejects(readSafetensorsEntries(new BytesRangeReader(bytes), 'bad.safetensors'), (e: unknown) => {
        assert.ok(e instanceof BadSafetensorsHeaderError, String(e));
        assert.ok(e instanceof ModelLoadError);
        assert.match(e.message, /^bad\.safetensors is not a valid safetensors file/);
        assert.match(e.message, message);
        return true;
      });
    });
  }
});

describe('SafetensorsArchive over in-memory bytes', () => {
  const tensors: TensorBytes[] = [
    { name: 'model.layers.0.mlp.experts.0.w1.weight', dtype: 'F32', shape: [2, 2], data: f32([1, -2, 3.5, 0]) },
    { name: 'model.layers.0.mlp.experts.1.w1.weight', dtype: 'BF16', shape: [3], data: bf16([0.5, -1, 256]) },
    { name: 'model.layers.1.mlp.experts.0.w1.weight', dtype: 'F16', shape: [2], data: new Uint8Array(Uint16Array.from([0x3c00, 0xc000]).buffer) },
    { name: 'model.layers.1.mlp.experts.1.w1.weight', dtype: 'BF16', shape: [1], data: bf16([7]) },
    { name: 'model.norm.weight', dtype: 'F32', shape: [1], data: f32([1]) },
    { name: 'step', dtype: 'I64', shape: [], data: new Uint8Array(8) },
  ];

  it('lists names and entries, and reads every float dtype as float32', async () => {
    await using archive = await archiveOf(tensors);
    assert.deepEqual(archive.names(), tensors.map((t) => t.name));
    assert.ok(archive.has('model.norm.weight'));
    assert.ok(!archive.has('lm_head.weight'));
    assert.deepEqual(archive.entry('model.layers.0.mlp.experts.1.w1.weight').shape, [3]);
    assert.deepEqual([...(await archive.readFloat32('model.layers.0.mlp.experts.0.w1.weight', [2, 2]))], [1, -2, 3.5, 0]);
    assert.deepEqual([...(await archive.readFloat32('model.layers.0.mlp.experts.1.w1.weight'))], [0.5, -1, 256]);
    assert.deepEqual([...(await archive.readFloat32('model.layers.1.mlp.experts.0.w1.weight'))], [1, -2]);
    assert.deepEqual(await archive.readBytes('model.layers.1.mlp.experts.1.w1.weight'), bf16([7]));
  });

  it('runs many reads at once and counts the tensor bytes read', async () => {
    await using archive = await archiveOf(tensors);
    assert.equal(archive.bytesRead, 0);
    const floatNames = archive.names().filter((n) => n !== 'step');
    const results = await Promise.all(floatNames.map((n) => archive.readFloat32(n)));
    assert.deepEqual(results.map((r) => r.length), [4, 3, 2, 1, 1]);
    assert.equal(archive.bytesRead, 16 + 6 + 4 + 2 + 4);
  });

  it('rejects a shape other than the expected one with TensorShapeError', async () => {
    await using archive = await archiveOf(tensors);
    await assert.rejects(archive.readFloat32('model.layers.0.mlp.experts.0.w1.weight', [4]), (e: unknown) => {
      assert.ok(e instanceof TensorShapeError);
      assert.deepEqual([e.expectedShape, e.actualShape], [[4], [2, 2]]);
      assert.match(e.message, /has shape \[2, 2\]; expected \[4\]/);
      return true;
    });
    assert.equal(archive.bytesRead, 0, 'nothing is read when the shape is wrong');
  });

  it('rejects a non-float tensor with UnsupportedDTypeError naming tensor and dtype', async () => {
    await using archive = await archiveOf(tensors);
    await assert.rejects(archive.readFloat32('step'), (e: unknown) => {
      assert.ok(e instanceof UnsupportedDTypeError);
      assert.equal(e.code, 'unsupported_dtype');
      assert.match(e.message, /"step" is stored as I64; expected one of F32, F16, BF16/);
      return true;
    });
  });

  it('names the files searched and similar names present when a tensor is missing', async () => {
    await using archive = await archiveOf(tensors, 'weights.safetensors');
    assert.throws(() => archive.entry('model.layers.7.mlp.experts.1.w1.weight'), (e: unknown) => {
      assert.ok(e instanceof MissingTensorError);
      assert.equal(e.code, 'missing_tensor');
      assert.deepEqual(e.filesSearched, ['weights.safetensors']);
      assert.deepEqual(e.similarNames.slice(0, 2), ['model.layers.0.mlp.experts.1.w1.weight', 'model.layers.1.mlp.experts.1.w1.weight']);
      assert.ok(e.similarNames.length <= 5);
      assert.match(e.message, /"model\.layers\.7\.mlp\.experts\.1\.w1\.weight" is not in weights\.safetensors\. Similar names present: "model\.layers\.0/);
      return true;
    });
    await assert.rejects(archive.readFloat32('norm.weight'), (e: unknown) => e instanceof MissingTensorError && e.similarNames[0] === 'model.norm.weight');
  });

  it('refuses reads once disposed', async () => {
    const archive = await archiveOf(tensors);
    await archive[Symbol.asyncDispose]();
    await assert.rejects(archive.readBytes('model.norm.weight'), /archive has been closed/);
  });

  it('rejects a tensor name present in two files', async () => {
    const bytes = buildSafetensors([tensors[4]!]);
    await assert.rejects(
      SafetensorsArchive.fromSources([
        { fileLabel: 'a', reader: new BytesRangeReader(bytes) },
        { fileLabel: 'b', reader: new BytesRangeReader(bytes) },
      ]),
      /"model\.norm\.weight" is also in a/,
    );
  });
});

describe('SafetensorsArchive.open on a model directory', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'moe-serve-safetensors-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function writeSharded(subdir: string, weightMap?: Record<string, string>): Promise<string> {
    const path = join(dir, subdir);
    await mkdir(path, { recursive: true });
    const shard1 = [
      { name: 'embed.weight', dtype: 'BF16', shape: [2, 2], data: bf16([1, 2, 3, 4]) },
      { name: 'layers.0.w', dtype: 'F32', shape: [2], data: f32([5, 6]) },
    ];
    const shard2 = [{ name: 'layers.1.w', dtype: 'F32', shape: [2], data: f32([7, 8]) }];
    await writeFile(join(path, 'model-00001-of-00002.safetensors'), buildSafetensors(shard1));
    await writeFile(join(path, 'model-00002-of-00002.safetensors'), buildSafetensors(shard2));
    const map = weightMap ?? {
      'embed.weight': 'model-00001-of-00002.safetensors',
      'layers.0.w': 'model-00001-of-00002.safetensors',
      'layers.1.w': 'model-00002-of-00002.safetensors',
    };
    await writeFile(join(path, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 32 }, weight_map: map }));
    return path;
  }

  it('reads tensors from both shards named by model.safetensors.index.json', async () => {
    const path = await writeSharded('sharded');
    await using archive = await SafetensorsArchive.open(path);
    assert.deepEqual(archive.names().sort(), ['embed.weight', 'layers.0.w', 'layers.1.w']);
    assert.equal(archive.entry('layers.1.w').fileLabel, join(path, 'model-00002-of-00002.safetensors'));
    const [embed, w0, w1] = await Promise.all(['embed.weight', 'layers.0.w', 'layers.1.w'].map((n) => archive.readFloat32(n)));
    assert.deepEqual([...embed!], [1, 2, 3, 4]);
    assert.deepEqual([...w0!], [5, 6]);
    assert.deepEqual([...w1!], [7, 8]);
    assert.equal(archive.bytesRead, 8 + 8 + 8);
    assert.throws(() => archive.entry('layers.2.w'), (e: unknown) => e instanceof MissingTensorError && e.filesSearched.length === 2);
  });

  it('reads model.safetensors when there is no index', async () => {
    const path = join(dir, 'single');
    await mkdir(path);
    await writeFile(join(path, 'model.safetensors'), buildSafetensors([{ name: 'w', dtype: 'F32', shape: [1], data: f32([9]) }]));
    await using archive = await SafetensorsArchive.open(path);
    assert.deepEqual([...(await archive.readFloat32('w', [1]))], [9]);
  });

  it('throws WeightsNotFoundError naming the directory and the files it looked for', async () => {
    await assert.rejects(SafetensorsArchive.open(join(dir, 'nowhere')), (e: unknown) => {
      assert.ok(e instanceof WeightsNotFoundError);
      assert.equal(e.code, 'weights_not_found');
      assert.match(e.message, /nowhere: looked for model\.safetensors\.index\.json, model\.safetensors/);
      return true;
    });
  });

  it('throws WeightsNotFoundError when the index names a shard that is not there', async () => {
    const path = await writeSharded('missing-shard', { 'embed.weight': 'model-00001-of-00002.safetensors', x: 'model-00003-of-00003.safetensors' });
    await assert.rejects(SafetensorsArchive.open(path), (e: unknown) => e instanceof WeightsNotFoundError && /missing: model-00003-of-00003/.test(e.message));
  });

  it('throws BadSafetensorsIndexError when the index disagrees with the shards or points outside the directory', async () => {
    const wrongShard = await writeSharded('wrong-shard', {
      'embed.weight': 'model-00002-of-00002.safetensors',
      'layers.0.w': 'model-00001-of-00002.safetensors',
    });
    await assert.rejects(SafetensorsArchive.open(wrongShard), (e: unknown) => e instanceof BadSafetensorsIndexError && /"embed\.weight" in model-00002/.test(e.message));
    const escaping = await writeSharded('escaping', { w: '../single/model.safetensors' });
    await assert.rejects(SafetensorsArchive.open(escaping), (e: unknown) => e instanceof BadSafetensorsIndexError && /not a plain file name/.test(e.message));
    const noMap = await writeSharded('no-map', {});
    await writeFile(join(noMap, 'model.safetensors.index.json'), '{"metadata": {}}');
    await assert.rejects(SafetensorsArchive.open(noMap), BadSafetensorsIndexError);
  });
});

describe('the tiny-moe checkpoint', () => {
  it('has a [8192, 256] BF16 embedding and a finite final norm', async () => {
    await using archive = await SafetensorsArchive.open(TINY_MOE_DIR);
    const embed = archive.entry('model.embed_tokens.weight');
    assert.equal(embed.dtype, 'BF16');
    assert.deepEqual(embed.shape, [8192, 256]);
    const norm = await archive.readFloat32('model.norm.weight', [256]);
    assert.equal(norm.length, 256);
    assert.ok(norm.every(Number.isFinite));
    assert.ok(norm.some((v) => v !== 0));
    assert.equal(archive.bytesRead, 512);
  });
});
