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
import { prefetchLimit } from './cache-plan.js';
import { ExpertIds, type ExpertId, type ExpertKey } from './expert-id.js';
import { addCounters, emptyCounters, ratio, type ExpertCacheStats, type ExpertCounters } from './expert-stats.js';
import type { HostExpert, HostExpertCache } from './host-expert-cache.js';
import type { CachePolicy } from './policies/index.js';
import { ResidencySet } from './residency-set.js';

/**
 * An expert in the device tier, in whatever shape the compute route needs (a prepacked session on the
 * CPU provider, device tensors on GPU providers: engine/expert-routes.ts). It holds native or device
 * memory, so it is disposed exactly once, when it leaves the cache.
 */
export interface ResidentExpert {
  dispose(): void;
}

/** Turns an expert's host weights into its device-tier form (the "load" of a cache miss). */
export type ExpertMaterializer<R extends ResidentExpert> = (weights: HostExpert, id: ExpertId) => Promise<R>;

/** Experts held for one run of the routed experts; release() when the run is done. */
export interface ExpertLease<R extends ResidentExpert> {
  readonly experts: readonly R[];
  release(): void;
}

interface CacheEntry<R> {
  readonly ready: Promise<R>;
  /** Prefetched and not used yet. */
  prefetchedUnused: boolean;
}

export class BudgetTooSmallError extends Error {
  readonly code = 'expert_budget_too_small';

  constructor(
    readonly budgetBytes: number,
    readonly expertBytes: number,
  ) {
    super(`expert cache budget of ${budgetBytes} bytes is smaller than one expert (${expertBytes} bytes in compute form); raise --expert-cache-mb or --expert-cache-fraction, or use a smaller --expert-dtype`);
    this.name = 'BudgetTooSmallError';
  }
}

export interface ExpertStoreOptions<R extends ResidentExpert> {
  readonly spec: ModelSpec;
  readonly host: HostExpertCache;
  readonly materialize: ExpertMaterializer<R>;
  /** Bytes of one expert in compute form: what the budget counts. */
  readonly expertBytes: number;
  readonly policy: CachePolicy;
  readonly budgetBytes: number;
  readonly prefetchDepth: number;
  /** Told how long each load's materializing took (the hybrid cost model's upload rate). */
  readonly onLoaded?: (ms: number) => void;
}

export class ExpertStore<R extends ResidentExpert = ResidentExpert> implements Disposable {
  readonly ids: ExpertIds;
  /** Bytes of one expert in compute form. */
  readonly expertBytes: number;
  /** Most predicted experts one prefetch call loads (see cache-plan.ts). */
  private readonly prefetchLimit: number;
  private readonly residency: ResidencySet;
  private readonly cache: LRUCache<ExpertId, CacheEntry<R>>;
  private readonly pins = new Map<ExpertId, number>();
  private readonly counters: ExpertCounters[];
  /** Experts the lookahead predicted per layer for the step in progress (for prefetch recall). */
  private readonly predicted = new Map<number, Set<number>>();

  constructor(private readonly o: ExpertStoreOptions<R>) {
    const { spec } = o;
    this.ids = new ExpertIds(spec.numLayers, spec.numExperts);
    this.expertBytes = o.expertBytes;
    if (o.budgetBytes < this.expertBytes) throw new BudgetTooSmallError(o.budgetBytes, this.expertBytes);
    this.residency = new ResidencySet(o.budgetBytes, o.policy);
    // The residency set alone decides what stays (the replay simulator runs the same decisions). The
    // cache must never evict by itself: when concurrent forward passes pin more experts than the budget
    // holds (counted as overBudget), a size-bounded cache would dispose an expert another pass is using.
    // Its bound is therefore every expert of the model, which it cannot exceed.
    this.cache = new LRUCache<ExpertId, CacheEntry<R>>({
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

  /** Whether the expert is in the device cache now (a prefetch in flight counts): for expert-aware admission. */
  isResident(layer: number, expert: number): boolean {
    return this.residency.has(this.ids.id({ layer, expert }));
  }

  /** Share of all routed experts resident now, 0..1. */
  get residentShare(): number {
    return Math.min(1, this.residency.residentBytes / this.totalExpertBytes);
  }

  /**
   * Holds the given experts of `layer` for one run: hits are pinned, misses loaded (through the host
   * tier) and pinned. `experts` must not exceed maxExpertsInUse.
   */
  async acquire(layer: number, experts: readonly number[]): Promise<ExpertLease<R>> {
    const c = this.layerCounters(layer);
    const ids = experts.map((expert) => this.ids.id({ layer, expert }));
    const busy = new Set<ExpertId>([...this.pins.keys(), ...ids]);
    this.countRecall(layer, experts, c);
    const transient: ExpertId[] = [];
    const entries: CacheEntry<R>[] = [];
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
    let resident: R[];
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
      experts: resident,
      release: () => {
        if (released) throw new Error('expert lease released twice');
        released = true;
        this.unpin(ids, transient);
      },
    };
  }

  /**
   * The host weights of experts of `layer` that miss the device cache and will be computed on the CPU
   * instead of loaded (engine/hybrid-experts.ts), except those `kept` in the CPU provider's form from an
   * earlier use (undefined there). Counted as accesses and misses, and as computed on the CPU (and kept);
   * the device cache and its policy do not see them (nothing enters or leaves it).
   */
  async hostWeights(layer: number, experts: readonly number[], kept: readonly boolean[]): Promise<(HostExpert | undefined)[]> {
    const c = this.layerCounters(layer);
    this.countRecall(layer, experts, c);
    c.accesses += experts.length;
    c.misses += experts.length;
    c.cpuComputed += experts.length;
    c.cpuKept += kept.filter(Boolean).length;
    return Promise.all(experts.map((expert, i) => (kept[i] ? undefined : this.readHost({ layer, expert }, c))));
  }

  /** An expert's weights through the host tier, counted as a host hit or miss and its disk bytes. */
  private async readHost(key: ExpertKey, c: ExpertCounters): Promise<HostExpert> {
    // A read that joins another's in flight found nothing in host memory either: a host miss.
    let inHost = false;
    const weights = await this.o.host.get(
      key,
      (bytes) => (c.bytesFromDisk += bytes),
      () => (inHost = true),
    );
    if (inHost) c.hostHits++;
    else c.hostMisses++;
    return weights;
  }

  /** Adds the time of CPU runs of missed experts to `layer`'s counters. */
  addCpuMs(layer: number, ms: number): void {
    this.layerCounters(layer).cpuMs += ms;
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
    const issued: { id: ExpertId; resolve: (e: R) => void; reject: (err: unknown) => void }[] = [];
    for (const expert of experts) {
      const id = this.ids.id({ layer, expert });
      const r = this.residency.prefetch(id, this.expertBytes, busy);
      this.evict(r.evicted);
      if (!r.kept) continue;
      c.prefetchIssued++;
      this.addEntry(id, new Promise<R>((resolve, reject) => issued.push({ id, resolve, reject })), true);
    }
    if (issued.length === 0) return;
    for (const i of issued) this.load(i.id).then(i.resolve, i.reject);
  }

  /**
   * The router lookahead's prediction for `layer`, `depth` sparse layers after the one computing: counted
   * for recall, told to the policy (the next layer's only, which every lookahead-computing model has),
   * and prefetched within the prefetch depth.
   */
  lookahead(layer: number, predicted: readonly number[], depth: number): void {
    if (depth === 1) this.o.policy.onPredicted?.(predicted.map((expert) => this.ids.id({ layer, expert })));
    if (depth <= this.prefetchDepth) this.prefetch(layer, predicted);
    else this.recordPrediction(layer, predicted);
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
    const disk = this.o.host.diskStats();
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
      total: {
        ...total,
        hitRatio: ratio(total.hits, total.accesses),
        prefetchRecall: ratio(total.predictedAndUsed, total.usedWithLookahead),
        diskReads: disk.reads,
        diskBusyMs: disk.busyMs,
      },
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

  private startLoad(id: ExpertId, prefetched: boolean): CacheEntry<R> {
    return this.addEntry(id, this.load(id), prefetched);
  }

  private addEntry(id: ExpertId, ready: Promise<R>, prefetched: boolean): CacheEntry<R> {
    const entry: CacheEntry<R> = { ready, prefetchedUnused: prefetched };
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
   * Reads an expert through the host tier and materializes it for the device in compute form (see
   * engine/expert-routes.ts): on the CPU provider a session creation that prepacks quantized weights
   * (synchronous, on this thread: the binding has no other way) or a widening to float32, on GPU
   * providers an upload. Prefetches start this ahead of
   * use; disk reads overlap the forward pass's runs, materializing happens between them.
   */
  private async load(id: ExpertId): Promise<R> {
    const key = this.ids.key(id);
    const c = this.layerCounters(key.layer);
    const weights = await this.readHost(key, c);
    // Materializing holds the thread (a widening or a session creation, ~0.3-1 ms each at tiny-moe's
    // shape, tens of them a step under a small budget): let pending I/O in first, so that a step of
    // many misses does not hold the event loop for its whole length.
    await new Promise((resolve) => setImmediate(resolve));
    const t0 = performance.now();
    const expert = await this.o.materialize(weights, id);
    const ms = performance.now() - t0;
    c.loadMs += ms;
    c.bytesToDevice += this.expertBytes;
    this.o.onLoaded?.(ms);
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

  /** Frees an entry's memory once its load settles (it may still be in flight when evicted). */
  private free(entry: CacheEntry<R>): void {
    entry.ready.then(
      (e) => e.dispose(),
      () => undefined,
    );
  }

  [Symbol.dispose](): void {
    this.cache.clear();
  }
}
