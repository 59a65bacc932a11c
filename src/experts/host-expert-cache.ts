// The host tier: expert weights as stored in the checkpoint (bf16 stays bf16), read from disk on demand.
// Without a budget every expert read stays; with one, an LRU keeps the most recently used within it, so
// a model larger than RAM still runs (re-reading from disk).
import { LRUCache } from 'lru-cache';
import { isWeightDType, type WeightDType } from '../model/dtype.js';
import { UnsupportedDTypeError } from '../model/errors.js';
import type { SafetensorsArchive } from '../model/safetensors.js';
import type { ModelFamily } from '../model/hf-config.js';
import { expertTensorNames } from '../model/tensor-names.js';
import type { ExpertKey } from './expert-id.js';

/** An expert's three matrices in their stored dtype. */
export interface StoredExpert {
  readonly dtype: WeightDType;
  readonly gate: Uint8Array;
  readonly up: Uint8Array;
  readonly down: Uint8Array;
  readonly bytes: number;
}

export class HostExpertCache {
  private readonly kept: LRUCache<string, StoredExpert> | Map<string, StoredExpert>;
  private readonly reading = new Map<string, Promise<StoredExpert>>();

  constructor(
    private readonly archive: SafetensorsArchive,
    private readonly family: ModelFamily,
    readonly budgetBytes: number | null,
  ) {
    this.kept = budgetBytes === null ? new Map() : new LRUCache<string, StoredExpert>({ maxSize: budgetBytes, sizeCalculation: (e) => e.bytes });
  }

  get residentBytes(): number {
    if (this.kept instanceof LRUCache) return this.kept.calculatedSize;
    let n = 0;
    for (const e of this.kept.values()) n += e.bytes;
    return n;
  }

  /** The stored expert; `onDiskRead(bytes)` is called when it had to come from disk. */
  async get(key: ExpertKey, onDiskRead: (bytes: number) => void): Promise<StoredExpert> {
    const id = `${key.layer}:${key.expert}`;
    const hit = this.kept.get(id);
    if (hit) return hit;
    let pending = this.reading.get(id);
    if (!pending) {
      pending = this.read(key).then((e) => {
        onDiskRead(e.bytes);
        // An expert larger than the whole host budget is simply not kept.
        if (this.budgetBytes === null || e.bytes <= this.budgetBytes) this.kept.set(id, e);
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

  private async read(key: ExpertKey): Promise<StoredExpert> {
    const names = expertTensorNames(this.family, key.layer, key.expert);
    const dtype = this.archive.entry(names.gate).dtype;
    if (!isWeightDType(dtype)) throw new UnsupportedDTypeError(names.gate, dtype, ['F32', 'F16', 'BF16']);
    for (const n of [names.up, names.down]) {
      if (this.archive.entry(n).dtype !== dtype) throw new UnsupportedDTypeError(n, this.archive.entry(n).dtype, [dtype]);
    }
    const [gate, up, down] = await Promise.all([this.archive.readBytes(names.gate), this.archive.readBytes(names.up), this.archive.readBytes(names.down)]);
    return { dtype, gate, up, down, bytes: gate.byteLength + up.byteLength + down.byteLength };
  }
}
