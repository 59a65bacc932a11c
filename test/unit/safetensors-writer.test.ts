import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { WeightsNotFoundError } from '../../src/model/errors.js';
import { INDEX_FILE_NAME, SINGLE_FILE_NAME, SafetensorsArchive } from '../../src/model/safetensors.js';
import { WrongTensorBytesError, writeSafetensors, type PlannedTensor } from '../../src/model/safetensors-writer.js';
import { seededRandom } from '../helpers/seeded-random.js';


const ELEMENT_BYTES: Readonly<Record<string, number>> = { F32: 4, I32: 4, F16: 2, BF16: 2, U8: 1 };

interface TestTensor extends PlannedTensor {
  readonly data: Uint8Array;
}

/** A planned tensor of random bytes whose bytes() hands over a copy (as a producer computing them would). */
function tensor(random: () => number, name: string, dtype: string, shape: readonly number[]): TestTensor {
  const byteLength = shape.reduce((n, d) => n * d, 1) * ELEMENT_BYTES[dtype]!;
  const data = Uint8Array.from({ length: byteLength }, () => Math.floor(random() * 256));
  return { name, dtype, shape, byteLength, data, bytes: async () => data.slice() };
}

/** Runs `body` in a fresh temporary directory, removed afterwards. */
async function inTempDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'moe-serve-writer-'));
  try {
    await body(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Opens `dir` as a model and checks that it holds exactly `tensors`: names, dtypes, shapes and bytes. */
async function assertHolds(dir: string, tensors: readonly TestTensor[]): Promise<void> {
  const archive = await SafetensorsArchive.open(dir);
  try {
    assert.deepEqual(archive.names().sort(), tensors.map((t) => t.name).sort());
    for (const t of tensors) {
      const entry = archive.entry(t.name);
      assert.equal(entry.dtype, t.dtype, t.name);
      assert.deepEqual(entry.shape, t.shape, t.name);
      assert.deepEqual(await archive.readBytes(t.name), t.data, t.name);
    }
  } finally {
    await archive.close();
  }
}

/** The header of a safetensors file: its JSON and its byte length. */
async function headerOf(path: string): Promise<{ json: Record<string, { data_offsets?: [number, number] } & Record<string, unknown>>; bytes: number }> {
  const file = await readFile(path);
  const bytes = Number(file.readBigUInt64LE(0));
  return { json: JSON.parse(file.subarray(8, 8 + bytes).toString('utf8')) as never, bytes };
}

interface IndexJson {
  metadata: { total_size: number };
  weight_map: Record<string, string>;
}

async function indexOf(dir: string): Promise<IndexJson> {
  return JSON.parse(await readFile(join(dir, INDEX_FILE_NAME), 'utf8')) as IndexJson;
}

describe('writeSafetensors', () => {
  it('writes one model.safetensors, without an index, when everything fits in shardBytes', async () => {
    const random = seededRandom(1);
    const tensors = [
      tensor(random, 'model.embed_tokens.weight', 'BF16', [5, 4]),
      tensor(random, 'model.layers.0.mlp.down_proj.weight_packed', 'I32', [4, 2]),
      tensor(random, 'model.layers.0.mlp.down_proj.weight_scale', 'F32', [4, 1]),
      tensor(random, 'model.norm.weight', 'F16', [3]),
    ];
    await inTempDir(async (dir) => {
      const files = await writeSafetensors(dir, tensors, 1 << 20, { format: 'pt', quantized_by: 'moe-serve' });
      assert.deepEqual(files, [SINGLE_FILE_NAME]);
      assert.deepEqual(await readdir(dir), [SINGLE_FILE_NAME]);
      await assertHolds(dir, tensors);
      const { json, bytes } = await headerOf(join(dir, SINGLE_FILE_NAME));
      assert.deepEqual(json.__metadata__, { format: 'pt', quantized_by: 'moe-serve' });
      assert.equal(bytes % 8, 0, 'the header is padded so that the data starts 8-byte aligned');
      // Data in the order given, with no gaps.
      assert.deepEqual(
        tensors.map((t) => json[t.name]!.data_offsets),
        [
          [0, 40],
          [40, 72],
          [72, 88],
          [88, 94],
        ],
      );
    });
  });

  it('splits tensors into numbered shards of at most shardBytes, with an index of where each is', async () => {
    const random = seededRandom(2);
    const tensors = ['a', 'b', 'c', 'd', 'e'].map((name) => tensor(random, `layers.${name}.weight`, 'F32', [10])); // 40 bytes each
    await inTempDir(async (dir) => {
      const files = await writeSafetensors(dir, tensors, 100);
      const shards = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
      assert.deepEqual(files, shards);
      assert.deepEqual((await readdir(dir)).sort(), [...shards, INDEX_FILE_NAME].sort());
      const index = await indexOf(dir);
      assert.equal(index.metadata.total_size, 200);
      assert.deepEqual(index.weight_map, {
        'layers.a.weight': shards[0],
        'layers.b.weight': shards[0],
        'layers.c.weight': shards[1],
        'layers.d.weight': shards[1],
        'layers.e.weight': shards[2],
      });
      for (const shard of shards) {
        const { json } = await headerOf(join(dir, shard));
        const dataBytes = Object.values(json).reduce((n, e) => n + (e.data_offsets ? e.data_offsets[1] - e.data_offsets[0] : 0), 0);
        assert.ok(dataBytes <= 100, `${shard} holds ${dataBytes} bytes`);
        assert.deepEqual(json.__metadata__, { format: 'pt' });
      }
      await assertHolds(dir, tensors);
    });
  });

  it('fills a shard up to exactly shardBytes', async () => {
    const random = seededRandom(3);
    const tensors = ['a', 'b', 'c'].map((name) => tensor(random, name, 'U8', [50]));
    await inTempDir(async (dir) => {
      assert.deepEqual(await writeSafetensors(dir, tensors, 100), ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
      assert.deepEqual((await indexOf(dir)).weight_map, { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' });
      await assertHolds(dir, tensors);
    });
  });

  it('gives a tensor larger than shardBytes a shard of its own, first, in the middle or last', async () => {
    const random = seededRandom(4);
    const small = (name: string): TestTensor => tensor(random, name, 'U8', [16]);
    const big = (name: string): TestTensor => tensor(random, name, 'F32', [50]); // 200 bytes
    const cases: [TestTensor[], string[][]][] = [
      [[small('s1'), big('b'), small('s2')], [['s1'], ['b'], ['s2']]],
      [[big('b'), small('s1'), small('s2')], [['b'], ['s1', 's2']]],
      [[small('s1'), small('s2'), big('b')], [['s1', 's2'], ['b']]],
      [[big('b1'), big('b2')], [['b1'], ['b2']]],
    ];
    for (const [tensors, expected] of cases) {
      await inTempDir(async (dir) => {
        const files = await writeSafetensors(dir, tensors, 64);
        assert.equal(files.length, expected.length);
        const index = await indexOf(dir);
        const grouped = files.map((file) => Object.keys(index.weight_map).filter((name) => index.weight_map[name] === file));
        assert.deepEqual(grouped, expected);
        assert.equal(index.metadata.total_size, tensors.reduce((n, t) => n + t.byteLength, 0));
        await assertHolds(dir, tensors);
      });
    }
  });

  it('reports progress after each tensor as (done, total)', async () => {
    const random = seededRandom(5);
    const tensors = ['a', 'b', 'c'].map((name) => tensor(random, name, 'U8', [30]));
    const calls: [number, number][] = [];
    await inTempDir(async (dir) => {
      await writeSafetensors(dir, tensors, 50, undefined, (done, total) => calls.push([done, total]));
    });
    assert.deepEqual(calls, [
      [1, 3],
      [2, 3],
      [3, 3],
    ]);
  });

  it('pads the header to a multiple of 8 bytes also when tensor names are not ASCII', async () => {
    // JSON length in UTF-16 code units is not its length in UTF-8 bytes.
    const random = seededRandom(6);
    const tensors = [tensor(random, 'modèle.poids', 'F32', [2]), tensor(random, '层.权重', 'F32', [2])];
    await inTempDir(async (dir) => {
      await writeSafetensors(dir, tensors, 1 << 20);
      const { bytes } = await headerOf(join(dir, SINGLE_FILE_NAME));
      assert.equal(bytes % 8, 0, `header of ${bytes} bytes`);
      await assertHolds(dir, tensors);
    });
  });

  it('rejects a tensor whose bytes() has the wrong length with WrongTensorBytesError and leaves nothing behind', async () => {
    const random = seededRandom(7);
    for (const wrong of [7, 9, 0]) {
      const good = tensor(random, 'good', 'F32', [4]);
      const bad: PlannedTensor = { name: 'bad', dtype: 'F32', shape: [2], byteLength: 8, bytes: async () => new Uint8Array(wrong) };
      await inTempDir(async (dir) => {
        await assert.rejects(writeSafetensors(dir, [good, bad], 1 << 20), (e: unknown) => {
          assert.ok(e instanceof WrongTensorBytesError);
          assert.equal(e.code, 'wrong_tensor_bytes');
          assert.deepEqual([e.tensor, e.expected, e.actual], ['bad', 8, wrong]);
          assert.match(e.message, new RegExp(`"bad" produced ${wrong} bytes; its header declared 8`));
          return true;
        });
        assert.deepEqual(await readdir(dir), [], 'no model.safetensors and no partial file');
      });
    }
  });

  it('leaves no index and no partial file when a later shard fails, so the directory does not open as a model', async () => {
    const random = seededRandom(8);
    const tensors: PlannedTensor[] = [
      tensor(random, 'a', 'U8', [40]),
      tensor(random, 'b', 'U8', [40]),
      { name: 'c', dtype: 'U8', shape: [40], byteLength: 40, bytes: async () => new Uint8Array(39) },
    ];
    await inTempDir(async (dir) => {
      await assert.rejects(writeSafetensors(dir, tensors, 50), WrongTensorBytesError);
      const left = await readdir(dir);
      assert.ok(!left.includes(INDEX_FILE_NAME), `left ${left.join(', ')}`);
      assert.ok(!left.includes(SINGLE_FILE_NAME), `left ${left.join(', ')}`);
      assert.ok(!left.some((f) => f.endsWith('.partial')), `left ${left.join(', ')}`);
      await assert.rejects(SafetensorsArchive.open(dir), WeightsNotFoundError);
    });
  });

  it('passes on an error thrown by bytes() and removes the partial file', async () => {
    const failure = new Error('disk on fire');
    const tensors: PlannedTensor[] = [{ name: 'x', dtype: 'U8', shape: [4], byteLength: 4, bytes: () => Promise.reject(failure) }];
    await inTempDir(async (dir) => {
      await assert.rejects(writeSafetensors(dir, tensors, 100), (e: unknown) => e === failure);
      assert.deepEqual(await readdir(dir), []);
    });
  });
});
