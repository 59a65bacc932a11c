import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ExpertDiskReader } from '../../src/experts/expert-disk-reader.js';
import { BytesRangeReader, SafetensorsArchive, type ByteRangeReader } from '../../src/model/safetensors.js';
import { buildSafetensors, type TensorBytes } from '../helpers/safetensors-bytes.js';

function tensor(name: string, bytes: number, fill: number): TensorBytes {
  return { name, dtype: 'U8', shape: [bytes], data: new Uint8Array(bytes).fill(fill) };
}

/** A reader that records every read and how many were in flight at once, each taking a few milliseconds. */
class SlowReader implements ByteRangeReader {
  readonly reads: { offset: number; length: number }[] = [];
  inFlight = 0;
  maxInFlight = 0;
  private readonly inner: BytesRangeReader;

  constructor(bytes: Uint8Array) {
    this.inner = new BytesRangeReader(bytes);
  }

  get byteLength(): number {
    return this.inner.byteLength;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.inner.read(offset, length);
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    this.reads.push({ offset, length: target.byteLength });
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    await new Promise((resolve) => setTimeout(resolve, 3));
    await this.inner.readInto(offset, target);
    this.inFlight--;
  }

  async close(): Promise<void> {}
}

async function archiveOf(tensors: readonly TensorBytes[]): Promise<{ archive: SafetensorsArchive; reader: SlowReader }> {
  const reader = new SlowReader(buildSafetensors(tensors));
  return { archive: await SafetensorsArchive.fromSources([{ fileLabel: 'a.safetensors', reader }]), reader };
}

describe('expert disk reader', () => {
  it('reads adjacent tensors as one span cut at aligned chunk boundaries, and returns each tensor exact', async () => {
    const { archive, reader } = await archiveOf([tensor('gate', 3000, 1), tensor('up', 3000, 2), tensor('down', 3000, 3), tensor('other', 5000, 4)]);
    const disk = new ExpertDiskReader(archive, { chunkBytes: 4096, maxInFlight: 2 });
    const { source, bytes } = await disk.read(['gate', 'up', 'down']);
    assert.equal(bytes, 9000);
    for (const [name, fill] of [['gate', 1], ['up', 2], ['down', 3]] as const) {
      const got = await source.readBytes(name);
      assert.equal(got.byteLength, 3000);
      assert.ok(got.every((b) => b === fill), `${name} bytes`);
    }
    // One span of 9000 bytes: every chunk but the first starts at a multiple of 4096, none longer.
    const start = archive.entry('gate').byteOffset;
    assert.deepEqual(reader.reads.map((r) => r.offset).sort((a, b) => a - b)[0], start);
    for (const r of reader.reads) {
      assert.ok(r.length <= 4096);
      if (r.offset !== start) assert.equal(r.offset % 4096, 0);
    }
    assert.equal(reader.reads.reduce((n, r) => n + r.length, 0), 9000, 'nothing outside the span was read');
    assert.equal(disk.stats().reads, reader.reads.length);
    assert.equal(disk.stats().bytes, 9000);
  });

  it('keeps at most maxInFlight reads in flight and counts the busy time once', async () => {
    const { archive, reader } = await archiveOf(Array.from({ length: 12 }, (_, i) => tensor(`t${i}`, 1024, i)));
    const disk = new ExpertDiskReader(archive, { chunkBytes: 1024, maxInFlight: 3, mergeGapBytes: 0 });
    const t0 = performance.now();
    await Promise.all([disk.read(['t0', 't1', 't2', 't3']), disk.read(['t4', 't5', 't6', 't7']), disk.read(['t8', 't9', 't10', 't11'])]);
    const wall = performance.now() - t0;
    assert.equal(reader.maxInFlight, 3);
    const { busyMs, reads } = disk.stats();
    assert.ok(reads >= 12);
    // Overlapping reads count once: busy time is at most the wall time, and at least 12 reads / 3 at a time x 3 ms.
    assert.ok(busyMs <= wall + 1, `busy ${busyMs} ms within wall ${wall} ms`);
    assert.ok(busyMs >= 10, `busy ${busyMs} ms`);
  });

  it('reads tensors apart in the file separately, and leaves names it does not hold to the archive', async () => {
    const { archive, reader } = await archiveOf([tensor('a', 100, 7), tensor('gap', 200_000, 0), tensor('b', 100, 8)]);
    const disk = new ExpertDiskReader(archive, { mergeGapBytes: 1024 });
    const { source, bytes } = await disk.read(['a', 'b', 'absent.weight_packed']);
    assert.equal(bytes, 200, 'the 200 kB between them was not read');
    assert.equal(reader.reads.length, 2);
    assert.equal((await source.readBytes('b'))[0], 8);
    assert.equal(source.has('absent.weight_packed'), false);
  });
});
