// One simulated device cache, fed one sparse layer of one forward pass at a time: the ResidencySet and
// policy the server builds (cache-plan.ts), called in the order the server's device cache (ExpertStore)
// calls them. simulate() runs one over a trace's own passes; the route study (route-study.ts) runs one
// per simulated replica over the passes it re-batches. One implementation, so both count alike.
import type { ExpertId } from '../expert-id.js';
import { planCache, prefetchLimit } from '../cache-plan.js';
import type { PolicyName } from '../policies/index.js';
import { ResidencySet } from '../residency-set.js';
import type { TraceHeader } from '../trace-format.js';
import type { ReplayResult } from './simulate.js';
import { allSparseExperts, useGroups, type PassLayerAccesses } from './trace-accesses.js';

export interface ReplayCacheOptions {
  readonly policy: PolicyName;
  /** Device memory for experts, at least one expert; ignored by 'all', which holds every expert. */
  readonly budgetBytes: number;
  /** How many sparse layers ahead to prefetch from the passes' lookahead; 0 = demand loading only. */
  readonly prefetchDepth: number;
  /** Experts most used first: 'static' needs it (its hot set), the other policies ignore it. */
  readonly profile?: readonly ExpertId[];
}

/** The counters of ReplayResult that the cache itself keeps (prefetch recall is a property of the trace). */
export type ReplayCounts = Omit<ReplayResult, 'prefetchRecall'>;

export class ReplayCache {
  private readonly residency: ResidencySet;
  private readonly expertBytes: number;
  private readonly capacityExperts: number;
  /** Most predicted experts of one layer that a prefetch loads (cache-plan.ts). */
  private readonly prefetchLimit: number;
  private readonly prefetchDepth: number;
  private readonly prefetchedUnused = new Set<ExpertId>();
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private preloaded = 0;
  private prefetchIssued = 0;
  private prefetchUsed = 0;
  private prefetchWasted = 0;
  private estimatedPrefetches = 0;

  constructor(header: TraceHeader, options: ReplayCacheOptions) {
    if (options.budgetBytes < header.expert_bytes && options.policy !== 'all') {
      throw new RangeError(`a budget of ${options.budgetBytes} bytes holds no expert (${header.expert_bytes} bytes each)`);
    }
    const plan = planCache({
      policy: options.policy,
      budgetBytes: options.budgetBytes,
      expertBytes: header.expert_bytes,
      topK: header.top_k,
      allExperts: allSparseExperts(header),
      profile: options.profile,
      layout: { numExperts: header.num_experts, sparseLayers: header.sparse_layers },
    });
    this.residency = new ResidencySet(plan.budgetBytes, plan.policy);
    this.expertBytes = header.expert_bytes;
    this.capacityExperts = Math.floor(plan.budgetBytes / header.expert_bytes);
    this.prefetchLimit = prefetchLimit(this.capacityExperts, header.sparse_layers.length, header.top_k);
    this.prefetchDepth = options.prefetchDepth;
    // The server loads these before serving (not counted as prefetches).
    for (const id of plan.preload.slice(0, this.capacityExperts)) {
      const r = this.residency.prefetch(id, this.expertBytes, new Set());
      this.evicted(r.evicted);
      if (r.kept) this.preloaded++;
    }
  }

  /** Whether `id` is resident now (what a router that knows this replica's residency sees). */
  has(id: ExpertId): boolean {
    return this.residency.has(id);
  }

  /**
   * One sparse layer of one forward pass, handled as forward.ts's applyExperts and ExpertStore.acquire
   * do: each group of the pass's experts is demanded (ascending id) while held busy; once the first group
   * is held the pass's lookahead is prefetched; a group's transient experts leave when its use ends.
   */
  use(layer: PassLayerAccesses): void {
    useGroups(layer.used, this.capacityExperts).forEach((group, g) => {
      const busy = new Set(group);
      const transient: ExpertId[] = [];
      for (const id of group) {
        const r = this.residency.demand(id, this.expertBytes, busy);
        this.evicted(r.evicted);
        if (r.hit) {
          this.hits++;
          if (this.prefetchedUnused.delete(id)) this.prefetchUsed++;
        } else {
          this.misses++;
          if (r.transient) transient.push(id);
        }
      }
      if (g === 0) this.prefetch(layer, busy);
      for (const id of transient) this.residency.remove(id);
    });
  }

  counts(): ReplayCounts {
    const total = this.hits + this.misses;
    return {
      accesses: total,
      hits: this.hits,
      misses: this.misses,
      hitRatio: total === 0 ? 0 : this.hits / total,
      evictions: this.evictions,
      preloaded: this.preloaded,
      prefetchIssued: this.prefetchIssued,
      prefetchUsed: this.prefetchUsed,
      prefetchWasted: this.prefetchWasted,
      estimatedPrefetches: this.estimatedPrefetches,
    };
  }

  private prefetch(layer: PassLayerAccesses, busy: ReadonlySet<ExpertId>): void {
    // As ExpertStore.lookahead: the policy hears the next layer's prediction whether or not it is prefetched.
    const next = layer.predicted[0];
    if (next !== undefined) this.residency.policy.onPredicted?.(next);
    for (let d = 1; d <= this.prefetchDepth; d++) {
      const predicted = layer.predicted[d - 1] ?? [];
      if (predicted.length > 0 && layer.predictedExact[d - 1] === false) this.estimatedPrefetches++;
      for (const id of predicted.slice(0, this.prefetchLimit)) {
        const r = this.residency.prefetch(id, this.expertBytes, busy);
        this.evicted(r.evicted);
        if (!r.kept) continue;
        this.prefetchIssued++;
        this.prefetchedUnused.add(id);
      }
    }
  }

  private evicted(ids: readonly ExpertId[]): void {
    this.evictions += ids.length;
    for (const id of ids) if (this.prefetchedUnused.delete(id)) this.prefetchWasted++;
  }
}
