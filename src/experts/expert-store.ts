// The one place that knows where an expert's weights are: on disk (safetensors), in host memory (stored
// dtype), and resident in compute form in the byte-budgeted device cache. The forward pass asks for
// experts by key and gets a lease; it never sees files, offsets or eviction.
//
// The device cache is an lru-cache (maxSize = budget, sizeCalculation = expert bytes, dispose frees the
// tensors) whose membership is decided by a ResidencySet and its CachePolicy, the same pure code the
// replay tool simulates. Prefetched experts enter the cache when the prefetch is issued, with their load
// still in flight; a use that finds one waits for the load (counted as waitMs), not for a new one.
import { LRUCache } from 'lru-cache';
import type { ModelSpec } from '../model/hf-config.js';
import { toFloat32 } from '../model/dtype.js';
import type { DeviceTensor, RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import { prefetchLimit } from './cache-plan.js';
import { ExpertIds, type ExpertId } from './expert-id.js';
import { addCounters, emptyCounters, ratio, type ExpertCacheStats, type ExpertCounters } from './expert-stats.js';
import type { HostExpertCache, StoredExpert } from './host-expert-cache.js';
import type { CachePolicy } from './policies/index.js';
import { ResidencySet } from './residency-set.js';

/** An expert's SwiGLU weights in compute form: gate and up (I, H), down (H, I). */
export interface ExpertWeights {
  readonly gate: RtTensor;
  readonly up: RtTensor;
  readonly down: RtTensor;
}

/** Experts held for one run of the routed-experts graph; release() when the run is done. */
export interface ExpertLease {
  readonly weights: readonly ExpertWeights[];
  release(): void;
}

class ResidentExpert {
  constructor(
    readonly gate: DeviceTensor,
    readonly up: DeviceTensor,
    readonly down: DeviceTensor,
    /** CPU tensors over arrays this store converted into (not views of the host tier's f32 bytes). */
    readonly ownsHostBuffers: boolean,
  ) {}

  get weights(): ExpertWeights {
    return { gate: this.gate.tensor, up: this.up.tensor, down: this.down.tensor };
  }

  /** The fp32 arrays behind CPU tensors, to recycle once disposed. */
  hostBuffers(): Float32Array[] {
    return [this.gate, this.up, this.down].map((t) => t.tensor.data as Float32Array);
  }

  dispose(): void {
    this.gate.dispose();
    this.up.dispose();
    this.down.dispose();
  }
}

interface CacheEntry {
  readonly ready: Promise<ResidentExpert>;
  /** Prefetched and not used yet. */
  prefetchedUnused: boolean;
}

/** Bytes of one routed expert in compute form: gate, up and down in fp32. */
export function expertComputeBytes(spec: ModelSpec): number {
  return 3 * spec.hiddenSize * spec.expertIntermediateSize * 4;
}

/** Float32Arrays of freed experts, by length, for reuse; at most `capacity` kept. */
class BufferPool {
  private readonly free = new Map<number, Float32Array[]>();
  private count = 0;

  constructor(private readonly capacity: number) {}

  take(length: number): Float32Array | undefined {
    const list = this.free.get(length);
    const b = list?.pop();
    if (b) this.count--;
    return b;
  }

  give(b: Float32Array): void {
    if (this.count >= this.capacity || b.byteOffset !== 0) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.count++;
  }
}

export class BudgetTooSmallError extends Error {
  readonly code = 'expert_budget_too_small';

  constructor(
    readonly budgetBytes: number,
    readonly expertBytes: number,
  ) {
    super(`expert cache budget of ${budgetBytes} bytes is smaller than one expert (${expertBytes} bytes in compute form); raise --expert-cache-mb or --expert-cache-fraction`);
    this.name = 'BudgetTooSmallError';
  }
}

export interface ExpertStoreOptions {
  readonly spec: ModelSpec;
  readonly runtime: Runtime;
  readonly host: HostExpertCache;
  readonly policy: CachePolicy;
  readonly budgetBytes: number;
  readonly prefetchDepth: number;
}

export class ExpertStore implements Disposable {
  readonly ids: ExpertIds;
  /** Bytes of one expert in compute form (fp32). */
  readonly expertBytes: number;
  /** Most predicted experts one prefetch call loads (see cache-plan.ts). */
  private readonly prefetchLimit: number;
  private readonly residency: ResidencySet;
  private readonly cache: LRUCache<ExpertId, CacheEntry>;
  private readonly pins = new Map<ExpertId, number>();
  private readonly counters: ExpertCounters[];
  /** Experts the lookahead predicted per layer for the step in progress (for prefetch recall). */
  private readonly predicted = new Map<number, Set<number>>();
  /**
   * On the CPU provider, evicted experts' fp32 arrays are reused by the next loads: with a small budget
   * most steps load and evict, and fresh 100s-of-KB arrays each time cost as much in allocation and
   * garbage collection as the conversion itself (profiled: 17% of a batched run in the collector).
   */
  private readonly spare = new BufferPool(64);

  constructor(private readonly o: ExpertStoreOptions) {
    const { spec } = o;
    this.ids = new ExpertIds(spec.numLayers, spec.numExperts);
    this.expertBytes = expertComputeBytes(spec);
    if (o.budgetBytes < this.expertBytes) throw new BudgetTooSmallError(o.budgetBytes, this.expertBytes);
    this.residency = new ResidencySet(o.budgetBytes, o.policy);
    // The residency set alone decides what stays (the replay simulator runs the same decisions). The
    // cache must never evict by itself: when concurrent forward passes pin more experts than the budget
    // holds (counted as overBudget), a size-bounded cache would dispose an expert another pass is using.
    // Its bound is therefore every expert of the model, which it cannot exceed.
    this.cache = new LRUCache<ExpertId, CacheEntry>({
      max: spec.numLayers * spec.numExperts,
      dispose: (entry) => this.free(entry),
    });
    this.counters = Array.from({ length: spec.numLayers }, emptyCounters);
    this.prefetchLimit = prefetchLimit(this.maxExpertsInUse, spec.sparseLayers.filter(Boolean).length, spec.topK);
  }

  get prefetchDepth(): number {
    return this.o.prefetchDepth;
  }

  /** Bytes of every routed expert of the model in compute form. */
  get totalExpertBytes(): number {
    return this.o.spec.sparseLayers.filter(Boolean).length * this.o.spec.numExperts * this.expertBytes;
  }

  /** Most experts one run may hold at once while staying inside the budget. */
  get maxExpertsInUse(): number {
    return Math.floor(this.o.budgetBytes / this.expertBytes);
  }

  /**
   * Holds the given experts of `layer` for one run: hits are pinned, misses loaded (through the host
   * tier) and pinned. `experts` must not exceed maxExpertsInUse.
   */
  async acquire(layer: number, experts: readonly number[]): Promise<ExpertLease> {
    const c = this.layerCounters(layer);
    const ids = experts.map((expert) => this.ids.id({ layer, expert }));
    const busy = new Set<ExpertId>([...this.pins.keys(), ...ids]);
    this.countRecall(layer, experts, c);
    const transient: ExpertId[] = [];
    const entries: CacheEntry[] = [];
    for (const id of ids) {
      c.accesses++;
      const r = this.residency.demand(id, this.expertBytes, busy);
      this.evict(r.evicted);
      let entry = this.cache.get(id);
      if (r.hit && entry) {
        c.hits++;
        if (entry.prefetchedUnused) {
          entry.prefetchedUnused = false;
          c.prefetchUsed++;
        }
      } else {
        c.misses++;
        entry = this.startLoad(id, false);
        if (r.transient) transient.push(id);
      }
      this.pins.set(id, (this.pins.get(id) ?? 0) + 1);
      entries.push(entry);
    }
    const t0 = performance.now();
    let resident: ResidentExpert[];
    try {
      resident = await Promise.all(entries.map((e) => e.ready));
    } catch (err) {
      this.unpin(ids, transient);
      throw err;
    } finally {
      c.waitMs += performance.now() - t0;
    }
    let released = false;
    return {
      weights: resident.map((e) => e.weights),
      release: () => {
        if (released) throw new Error('expert lease released twice');
        released = true;
        this.unpin(ids, transient);
      },
    };
  }

  /**
   * Starts loading experts the router lookahead predicts for `layer` (most likely first), as many as
   * prefetchLimit allows and the policy keeps.
   */
  prefetch(layer: number, predicted: readonly number[]): void {
    this.recordPrediction(layer, predicted);
    const experts = predicted.slice(0, this.prefetchLimit);
    const c = this.layerCounters(layer);
    const busy = new Set(this.pins.keys());
    // Entries join the cache as they are admitted (a later admission may evict an earlier one), and load
    // once the set is known.
    const issued: { id: ExpertId; resolve: (e: ResidentExpert) => void; reject: (err: unknown) => void }[] = [];
    for (const expert of experts) {
      const id = this.ids.id({ layer, expert });
      const r = this.residency.prefetch(id, this.expertBytes, busy);
      this.evict(r.evicted);
      if (!r.kept) continue;
      c.prefetchIssued++;
      this.addEntry(id, new Promise<ResidentExpert>((resolve, reject) => issued.push({ id, resolve, reject })), true);
    }
    if (issued.length === 0) return;
    for (const i of issued) this.load(i.id).then(i.resolve, i.reject);
  }

  /** Records lookahead predictions for recall without loading anything (prefetch depth 0 with tracing). */
  recordPrediction(layer: number, experts: readonly number[]): void {
    let set = this.predicted.get(layer);
    if (!set) this.predicted.set(layer, (set = new Set()));
    for (const e of experts) set.add(e);
  }

  /** Loads experts until the budget is full, in the given order (for 'all' and 'static'). */
  async preload(ids: readonly ExpertId[], onProgress?: (done: number, total: number) => void): Promise<void> {
    const wanted = ids.slice(0, this.maxExpertsInUse);
    let done = 0;
    for (const id of wanted) {
      const r = this.residency.prefetch(id, this.expertBytes, new Set());
      this.evict(r.evicted);
      if (r.kept) await this.startLoad(id, false).ready;
      onProgress?.(++done, wanted.length);
    }
  }

  stats(): ExpertCacheStats {
    const residentPerLayer = new Array<number>(this.o.spec.numLayers).fill(0);
    for (const id of this.residency.ids()) residentPerLayer[this.ids.key(id).layer]! += 1;
    const total = emptyCounters();
    const layers = this.counters.map((c, layer) => {
      addCounters(total, c);
      const n = residentPerLayer[layer] ?? 0;
      return { ...c, layer, residentExperts: n, residentBytes: n * this.expertBytes, hitRatio: ratio(c.hits, c.accesses) };
    });
    return {
      policy: this.o.policy.name,
      prefetchDepth: this.o.prefetchDepth,
      budgetBytes: this.o.budgetBytes,
      expertBytes: this.expertBytes,
      totalExpertBytes: this.totalExpertBytes,
      residentBytes: this.residency.residentBytes,
      hostResidentBytes: this.o.host.residentBytes,
      overBudget: this.residency.overBudget,
      total: { ...total, hitRatio: ratio(total.hits, total.accesses), prefetchRecall: ratio(total.predictedAndUsed, total.usedWithLookahead) },
      layers,
    };
  }

  private layerCounters(layer: number): ExpertCounters {
    const c = this.counters[layer];
    if (!c) throw new RangeError(`no layer ${layer}`);
    return c;
  }

  private countRecall(layer: number, experts: readonly number[], c: ExpertCounters): void {
    const predicted = this.predicted.get(layer);
    if (!predicted) return;
    this.predicted.delete(layer);
    c.usedWithLookahead += experts.length;
    for (const e of experts) if (predicted.has(e)) c.predictedAndUsed++;
  }

  private startLoad(id: ExpertId, prefetched: boolean): CacheEntry {
    return this.addEntry(id, this.load(id), prefetched);
  }

  private addEntry(id: ExpertId, ready: Promise<ResidentExpert>, prefetched: boolean): CacheEntry {
    const entry: CacheEntry = { ready, prefetchedUnused: prefetched };
    this.cache.set(id, entry);
    // A failed load leaves the cache so that the next use retries it; the error reaches that use.
    entry.ready.catch(() => {
      if (this.cache.peek(id) === entry) {
        this.residency.remove(id);
        this.cache.delete(id);
      }
    });
    return entry;
  }

  /**
   * Reads (through the host tier) and converts an expert to compute form, on the main thread. Converting
   * prefetches on a worker thread instead, to overlap with the synchronous session.run, measured slower
   * on 2 cores (34-38 vs 43-45 decode tokens/s, tiny-moe, lru at 25%, prefetch 1): both are bound by
   * the same memory bandwidth, and each reply waits for the main thread.
   */
  private async load(id: ExpertId): Promise<ResidentExpert> {
    const stored = await this.stored(id);
    const [gate, up, down] = [stored.gate, stored.up, stored.down].map((bytes) =>
      stored.dtype === 'F32' ? toFloat32(bytes, 'F32') : toFloat32(bytes, stored.dtype, this.spare.take(bytes.byteLength / 2)),
    );
    const expert = await this.toResident(id, gate, up, down, stored.dtype !== 'F32');
    // On GPU providers the converted arrays were only staging for the upload.
    if (this.o.runtime.onGpu && stored.dtype !== 'F32') [gate, up, down].forEach((b) => b && this.spare.give(b));
    return expert;
  }

  private stored(id: ExpertId): Promise<StoredExpert> {
    const key = this.ids.key(id);
    const c = this.layerCounters(key.layer);
    return this.o.host.get(key, (bytes) => (c.bytesFromDisk += bytes));
  }

  private async toResident(id: ExpertId, gate: Float32Array | undefined, up: Float32Array | undefined, down: Float32Array | undefined, owned: boolean): Promise<ResidentExpert> {
    if (!gate || !up || !down) throw new Error(`conversion of expert ${id} returned too few matrices`);
    const { runtime, spec } = this.o;
    const H = spec.hiddenSize;
    const I = spec.expertIntermediateSize;
    const expert = new ResidentExpert(
      await runtime.toDevice(runtime.float32(gate, [I, H])),
      await runtime.toDevice(runtime.float32(up, [I, H])),
      await runtime.toDevice(runtime.float32(down, [H, I])),
      owned && !runtime.onGpu,
    );
    this.layerCounters(this.ids.key(id).layer).bytesToDevice += this.expertBytes;
    return expert;
  }

  private evict(ids: readonly ExpertId[]): void {
    for (const id of ids) {
      const entry = this.cache.peek(id);
      if (entry?.prefetchedUnused) this.layerCounters(this.ids.key(id).layer).prefetchWasted++;
      this.layerCounters(this.ids.key(id).layer).evictions++;
      this.cache.delete(id);
    }
  }

  private unpin(ids: readonly ExpertId[], transient: readonly ExpertId[]): void {
    for (const id of ids) {
      const n = (this.pins.get(id) ?? 0) - 1;
      if (n > 0) this.pins.set(id, n);
      else this.pins.delete(id);
    }
    for (const id of transient) {
      if (this.pins.has(id)) continue;
      this.residency.remove(id);
      this.cache.delete(id);
    }
  }

  /** Frees an entry's tensors once its load settles (it may still be in flight when evicted). */
  private free(entry: CacheEntry): void {
    entry.ready.then(
      (e) => {
        const buffers = this.o.runtime.onGpu || !e.ownsHostBuffers ? [] : e.hostBuffers();
        e.dispose();
        for (const b of buffers) this.spare.give(b);
      },
      () => undefined,
    );
  }

  [Symbol.dispose](): void {
    this.cache.clear();
  }
}
