// The disk tier: reads an expert's tensors from the checkpoint as few large reads as the file allows.
//
// An expert is three matrices (and, packed, their scales): separate tensors, but usually adjacent in the
// file (Hugging Face writers put an expert's weights together; `npm run make-model` does). Reading them
// as one span instead of three reads, split at fixed aligned boundaries into chunks of `chunkBytes`,
// keeps the disk busy with large sequential requests. The chunks go through libuv's thread pool (off the
// main thread, so the forward pass computes meanwhile), at most `maxInFlight` at a time: enough to keep
// a fast disk's queue full, few enough that the pool still serves everything else (trace writes, other
// files) and that prefetches cannot pile up unbounded memory in buffers nobody reads yet.
import { allocateReadBuffer, type SafetensorsArchive, type TensorEntry, type TensorSource } from '../model/safetensors.js';

export interface DiskReaderOptions {
  /** Largest single read; spans are cut at multiples of it in the file (default 8 MiB). */
  readonly chunkBytes?: number;
  /** Most chunk reads in flight at once (default: twice libuv's pool size, UV_THREADPOOL_SIZE or 4). */
  readonly maxInFlight?: number;
  /** Tensors this close in a file are read together with the gap (default 64 KiB). */
  readonly mergeGapBytes?: number;
}

export interface DiskReadStats {
  /** Chunk reads issued. */
  readonly reads: number;
  readonly bytes: number;
  /** Wall time during which at least one read was in flight: bytes / busyMs is the rate achieved. */
  readonly busyMs: number;
}

interface Span {
  readonly fileLabel: string;
  readonly start: number;
  end: number;
  readonly entries: TensorEntry[];
}

/** Tensors with their bytes already read, looked up by name; anything else comes from the archive. */
class ReadTensors implements TensorSource {
  constructor(
    private readonly archive: TensorSource,
    private readonly bytes: ReadonlyMap<string, Uint8Array>,
  ) {}

  has(name: string): boolean {
    return this.archive.has(name);
  }

  entry(name: string): TensorEntry {
    return this.archive.entry(name);
  }

  async readBytes(name: string): Promise<Uint8Array> {
    return this.bytes.get(name) ?? this.archive.readBytes(name);
  }
}

function defaultInFlight(): number {
  const pool = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10);
  return 2 * (Number.isInteger(pool) && pool > 0 ? Math.min(pool, 64) : 4);
}

export class ExpertDiskReader {
  private readonly chunkBytes: number;
  private readonly maxInFlight: number;
  private readonly mergeGapBytes: number;
  private readonly waiting: (() => void)[] = [];
  private inFlight = 0;
  private busySince = 0;
  private counts = { reads: 0, bytes: 0, busyMs: 0 };

  constructor(
    private readonly archive: SafetensorsArchive,
    o: DiskReaderOptions = {},
  ) {
    this.chunkBytes = o.chunkBytes ?? 8 * 2 ** 20;
    // Twice the pool's threads: a completed read's slot is released by a callback on the main thread,
    // which a session creation or a run can hold for milliseconds; the second half waits in libuv's
    // queue so that the pool's threads go straight on to it meanwhile. (Measured cold on this VM, 8 MiB
    // chunks, 16 experts at a time, nothing else running: 1 in flight 622 MB/s, 4: 880-950, 8 with
    // UV_THREADPOOL_SIZE=16: 990-1030, against dd's 1060 MB/s.)
    this.maxInFlight = o.maxInFlight ?? defaultInFlight();
    this.mergeGapBytes = o.mergeGapBytes ?? 64 * 2 ** 10;
  }

  stats(): DiskReadStats {
    const open = this.inFlight > 0 ? performance.now() - this.busySince : 0;
    return { ...this.counts, busyMs: this.counts.busyMs + open };
  }

  /**
   * Reads the named tensors (those the archive has; others are left to the caller's lookups) and returns
   * a source that serves them from memory. Each tensor's bytes are a view into its span's buffer.
   */
  async read(names: readonly string[]): Promise<{ source: TensorSource; bytes: number }> {
    const spans = this.spans(names.filter((n) => this.archive.has(n)).map((n) => this.archive.entry(n)));
    const found = new Map<string, Uint8Array>();
    let bytes = 0;
    await Promise.all(
      spans.map(async (span) => {
        const buffer = await this.readSpan(span);
        bytes += buffer.byteLength;
        for (const e of span.entries) found.set(e.name, buffer.subarray(e.byteOffset - span.start, e.byteOffset - span.start + e.byteLength));
      }),
    );
    return { source: new ReadTensors(this.archive, found), bytes };
  }

  /** Entries grouped into contiguous (or nearly contiguous) byte ranges per file. */
  private spans(entries: readonly TensorEntry[]): Span[] {
    const sorted = [...entries].sort((a, b) => a.fileLabel.localeCompare(b.fileLabel) || a.byteOffset - b.byteOffset);
    const spans: Span[] = [];
    for (const e of sorted) {
      const last = spans[spans.length - 1];
      if (last && last.fileLabel === e.fileLabel && e.byteOffset - last.end <= this.mergeGapBytes) {
        last.end = Math.max(last.end, e.byteOffset + e.byteLength);
        last.entries.push(e);
      } else {
        spans.push({ fileLabel: e.fileLabel, start: e.byteOffset, end: e.byteOffset + e.byteLength, entries: [e] });
      }
    }
    return spans;
  }

  private async readSpan(span: Span): Promise<Uint8Array> {
    const length = span.end - span.start;
    const buffer = allocateReadBuffer(length);
    const pieces: Promise<void>[] = [];
    for (let at = span.start; at < span.end; ) {
      const next = Math.min(span.end, (Math.floor(at / this.chunkBytes) + 1) * this.chunkBytes);
      pieces.push(this.readChunk(span.fileLabel, at, buffer.subarray(at - span.start, next - span.start)));
      at = next;
    }
    await Promise.all(pieces);
    return buffer;
  }

  private async readChunk(fileLabel: string, offset: number, target: Uint8Array): Promise<void> {
    await this.slot();
    try {
      await this.archive.readSpanInto(fileLabel, offset, target);
      this.counts.reads++;
      this.counts.bytes += target.byteLength;
    } finally {
      this.release();
    }
  }

  /** Takes a read slot, waiting for one when all are in use (a released slot passes straight to the next waiter). */
  private async slot(): Promise<void> {
    if (this.inFlight < this.maxInFlight) {
      if (this.inFlight++ === 0) this.busySince = performance.now();
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else if (--this.inFlight === 0) this.counts.busyMs += performance.now() - this.busySince;
  }
}
