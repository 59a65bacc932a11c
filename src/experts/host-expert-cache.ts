// The host tier: expert weights in host memory as the checkpoint stores them (bf16 stays bf16), read from
// disk on demand; except that experts computed quantized are quantized once on the way in (`toHost`), so
// that a cache miss never quantizes. Without a budget every expert read stays, so each is read (and
// quantized) once; with one, an LRU keeps the most recently used within it, so a model larger than RAM
// still runs (re-reading, and re-quantizing unless the checkpoint is stored quantized: `moe-serve
// quantize` writes such a checkpoint).
import { LRUCache } from 'lru-cache';
import type { StoredMatrix } from '../model/compute-form.js';
import { heldBytes } from '../model/quantization.js';
import type { CheckpointQuantization, ModelFamily } from '../model/hf-config.js';
import { packedNames } from '../model/compressed-tensors.js';
import type { SafetensorsArchive, TensorSource } from '../model/safetensors.js';
import { expertTensorNames } from '../model/tensor-names.js';
import { readStoredMatrix } from '../model/weight-reader.js';
import { ExpertDiskReader, type DiskReaderOptions, type DiskReadStats } from './expert-disk-reader.js';
import type { ExpertKey } from './expert-id.js';

/** An expert's SwiGLU weights in host form: gate and up (I, H), down (H, I). */
export interface HostExpert {
  readonly gate: StoredMatrix;
  readonly up: StoredMatrix;
  readonly down: StoredMatrix;
  readonly bytes: number;
}

export interface HostExpertCacheOptions {
  readonly archive: SafetensorsArchive;
  readonly family: ModelFamily;
  readonly quantization: CheckpointQuantization | null;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  /** Stored form -> host form: the stored object itself, or its quantized form when experts compute quantized. */
  readonly toHost: (stored: StoredMatrix) => StoredMatrix;
  /** Host budget in bytes; null keeps every expert read. */
  readonly budgetBytes: number | null;
  readonly disk?: DiskReaderOptions;
}

export class HostExpertCache {
  private readonly kept: LRUCache<string, HostExpert> | Map<string, HostExpert>;
  private readonly reading = new Map<string, Promise<HostExpert>>();
  private readonly disk: ExpertDiskReader;

  constructor(private readonly o: HostExpertCacheOptions) {
    this.disk = new ExpertDiskReader(o.archive, o.disk);
    // A budget of 0 (no host tier) keeps nothing: get() never stores an expert larger than the budget.
    this.kept = o.budgetBytes === null || o.budgetBytes === 0 ? new Map() : new LRUCache<string, HostExpert>({ maxSize: o.budgetBytes, sizeCalculation: (e) => e.bytes });
  }

  get budgetBytes(): number | null {
    return this.o.budgetBytes;
  }

  get residentBytes(): number {
    if (this.kept instanceof LRUCache) return this.kept.calculatedSize;
    let n = 0;
    for (const e of this.kept.values()) n += e.bytes;
    return n;
  }

  /** The disk tier's reads so far. */
  diskStats(): DiskReadStats {
    return this.disk.stats();
  }

  /**
   * The expert in host form; `onDiskRead(bytes)` is called with the stored bytes when this call read it
   * from disk, `onHostHit()` when host memory held it (neither: it joined a read already in flight).
   */
  async get(key: ExpertKey, onDiskRead: (bytes: number) => void, onHostHit?: () => void): Promise<HostExpert> {
    const id = `${key.layer}:${key.expert}`;
    const hit = this.kept.get(id);
    if (hit) {
      onHostHit?.();
      return hit;
    }
    let pending = this.reading.get(id);
    if (!pending) {
      pending = this.read(key, onDiskRead).then((e) => {
        // An expert larger than the whole host budget is simply not kept.
        if (this.o.budgetBytes === null || e.bytes <= this.o.budgetBytes) this.kept.set(id, e);
        return e;
      });
      this.reading.set(id, pending);
      void pending.then(
        () => this.reading.delete(id),
        () => this.reading.delete(id),
      );
    }
    return pending;
  }

  /** The stored form of an expert (bf16 or packed) without converting it, from `source` (default: straight from the archive). */
  readStored(key: ExpertKey, source: TensorSource = this.o.archive): Promise<{ gate: StoredMatrix; up: StoredMatrix; down: StoredMatrix }> {
    const { family, quantization, hiddenSize: H, intermediateSize: I } = this.o;
    const names = expertTensorNames(family, key.layer, key.expert);
    return Promise.all([
      readStoredMatrix(source, names.gate, I, H, quantization),
      readStoredMatrix(source, names.up, I, H, quantization),
      readStoredMatrix(source, names.down, H, I, quantization),
    ]).then(([gate, up, down]) => ({ gate, up, down }));
  }

  /** Reads the expert through the disk tier: its tensors in as few large reads as their layout allows. */
  private async read(key: ExpertKey, onDiskRead: (bytes: number) => void): Promise<HostExpert> {
    const { source, bytes } = await this.disk.read(this.tensorNames(key));
    onDiskRead(bytes);
    const stored = await this.readStored(key, source);
    const [gate, up, down] = [stored.gate, stored.up, stored.down].map(this.o.toHost) as [StoredMatrix, StoredMatrix, StoredMatrix];
    return { gate, up, down, bytes: storedBytes(gate) + storedBytes(up) + storedBytes(down) };
  }

  /** Every tensor holding the expert's weights: each matrix as a float tensor, or its packed parts. */
  private tensorNames(key: ExpertKey): string[] {
    const { archive, family } = this.o;
    const names = expertTensorNames(family, key.layer, key.expert);
    return [names.gate, names.up, names.down].flatMap((name) => {
      if (archive.has(name)) return [name];
      const p = packedNames(name);
      return [p.packed, p.scale, p.zeroPoint, p.shape];
    });
  }
}

/** Bytes a stored matrix holds in memory. */
export function storedBytes(s: StoredMatrix): number {
  return s.kind === 'float' ? s.bytes.byteLength : heldBytes(s.quantized);
}
