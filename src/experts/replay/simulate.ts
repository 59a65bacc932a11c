// Replays a routing trace against one cache policy, budget and prefetch depth, making the same
// ResidencySet calls in the same order as the server's device cache (ExpertStore), on the forward passes
// the server ran (trace-accesses.ts), so its counters are the ones the server would count. Timing plays
// no part in them: the server admits a prefetched expert when the prefetch is issued, and a use that
// finds its load still in flight is a hit that waits. A trace that records pass numbers and lookahead
// votes gives every pass and its prefetch order exactly. An older one, without votes, cannot give the
// order of a batch's lookahead when a multi-token request (a prompt) shares a pass with others; such
// prefetches are counted in estimatedPrefetches. The device tier only: the host tier's hits depend on
// when reads complete, and every device-tier load (misses + prefetchIssued) is one host-tier request.
import type { ExpertId } from '../expert-id.js';
import { planCache, prefetchLimit } from '../cache-plan.js';
import type { PolicyName } from '../policies/index.js';
import { ResidencySet } from '../residency-set.js';
import type { Trace } from './read-trace.js';
import { allSparseExperts, traceAccesses, usageProfile, useGroups, type PassLayerAccesses } from './trace-accesses.js';

export interface SimulateOptions {
  readonly policy: PolicyName;
  /** Device memory for experts, at least one expert; ignored by 'all', which holds every expert. */
  readonly budgetBytes: number;
  /** How many sparse layers ahead to prefetch from the trace's lookahead; 0 = demand loading only. */
  readonly prefetchDepth: number;
  /**
   * Experts most used first, for 'static'. Default: this trace's own access counts, the best static hot
   * set for this trace (an optimistic static: it has seen the future).
   */
  readonly profile?: readonly ExpertId[];
}

export interface HitCounts {
  readonly accesses: number;
  readonly hits: number;
  readonly misses: number;
  /** hits / accesses; 0 for a trace without accesses. */
  readonly hitRatio: number;
  readonly evictions: number;
}

export interface ReplayResult extends HitCounts {
  /** Experts loaded before serving ('all', 'static'): neither misses nor prefetches. */
  readonly preloaded: number;
  /** Prefetches that made an expert resident. */
  readonly prefetchIssued: number;
  /** Prefetched experts later accessed while still resident (each is also a hit). */
  readonly prefetchUsed: number;
  /** Prefetched experts evicted before any access. (Issued - used - wasted are still resident at the end.) */
  readonly prefetchWasted: number;
  /**
   * Prefetch calls (one per layer of a pass and depth) whose order of experts the trace does not
   * determine, so it was estimated (see PassLayerAccesses.predictedExact); while 0 the replay makes the
   * server's calls exactly.
   */
  readonly estimatedPrefetches: number;
  /**
   * Share of accesses that the lookahead of the previous prefetchDepth sparse layers of the same step
   * predicted, whatever the cache did with the prediction; null at depth 0. The first sparse layer of a
   * step is never predicted, so it counts as unpredicted.
   */
  readonly prefetchRecall: number | null;
}

/**
 * 1 - loads / accesses, loads being misses plus prefetches: the share of uses that cost no load. It is
 * the hit ratio without prefetching, and what Belady bounds with it (a prefetched hit was a load too).
 */
export function loadsAvoided(r: HitCounts | ReplayResult): number {
  if (r.accesses === 0) return 0;
  const prefetched = 'prefetchIssued' in r ? r.prefetchIssued : 0;
  return 1 - (r.misses + prefetched) / r.accesses;
}

export function simulate(trace: Trace, options: SimulateOptions): ReplayResult {
  const { header } = trace;
  const accesses = traceAccesses(trace);
  const bytes = header.expert_bytes;
  const { residency, preload } = buildCache(trace, options, accesses);
  const capacityExperts = Math.floor(residency.capacityBytes / bytes);
  const limit = prefetchLimit(capacityExperts, header.sparse_layers.length, header.top_k);
  const prefetchedUnused = new Set<ExpertId>();
  let hits = 0;
  let misses = 0;
  let evictions = 0;
  let prefetchIssued = 0;
  let prefetchUsed = 0;
  let prefetchWasted = 0;
  let estimatedPrefetches = 0;
  const evicted = (ids: readonly ExpertId[]) => {
    evictions += ids.length;
    for (const id of ids) if (prefetchedUnused.delete(id)) prefetchWasted++;
  };
  const prefetch = (step: PassLayerAccesses, busy: ReadonlySet<ExpertId>) => {
    // As ExpertStore.lookahead: the policy hears the next layer's prediction whether or not it is prefetched.
    const next = step.predicted[0];
    if (next !== undefined) residency.policy.onPredicted?.(next);
    for (let d = 1; d <= options.prefetchDepth; d++) {
      const predicted = step.predicted[d - 1] ?? [];
      if (predicted.length > 0 && step.predictedExact[d - 1] === false) estimatedPrefetches++;
      for (const id of predicted.slice(0, limit)) {
        const r = residency.prefetch(id, bytes, busy);
        evicted(r.evicted);
        if (!r.kept) continue;
        prefetchIssued++;
        prefetchedUnused.add(id);
      }
    }
  };

  // The server loads these before serving (not counted as prefetches).
  let preloaded = 0;
  for (const id of preload.slice(0, capacityExperts)) {
    const r = residency.prefetch(id, bytes, new Set());
    evicted(r.evicted);
    if (r.kept) preloaded++;
  }

  // One sparse layer of one forward pass at a time, handled as forward.ts's applyExperts and
  // ExpertStore.acquire do: each group of the pass's experts is demanded (ascending id) while held busy;
  // once the first group is held the pass's lookahead is prefetched; a group's transient experts leave
  // when its use ends.
  for (const step of accesses) {
    useGroups(step.used, capacityExperts).forEach((group, g) => {
      const busy = new Set(group);
      const transient: ExpertId[] = [];
      for (const id of group) {
        const r = residency.demand(id, bytes, busy);
        evicted(r.evicted);
        if (r.hit) {
          hits++;
          if (prefetchedUnused.delete(id)) prefetchUsed++;
        } else {
          misses++;
          if (r.transient) transient.push(id);
        }
      }
      if (g === 0) prefetch(step, busy);
      for (const id of transient) residency.remove(id);
    });
  }

  const total = hits + misses;
  return {
    accesses: total,
    hits,
    misses,
    hitRatio: total === 0 ? 0 : hits / total,
    evictions,
    preloaded,
    prefetchIssued,
    prefetchUsed,
    prefetchWasted,
    estimatedPrefetches,
    prefetchRecall: options.prefetchDepth === 0 ? null : prefetchRecall(accesses, options.prefetchDepth),
  };
}

/** The residency set the server builds for this policy and budget, and what it loads before serving. */
function buildCache(trace: Trace, options: SimulateOptions, accesses: readonly PassLayerAccesses[]): { residency: ResidencySet; preload: readonly ExpertId[] } {
  const { header } = trace;
  if (options.budgetBytes < header.expert_bytes && options.policy !== 'all') {
    throw new RangeError(`a budget of ${options.budgetBytes} bytes holds no expert (${header.expert_bytes} bytes each)`);
  }
  const plan = planCache({
    policy: options.policy,
    budgetBytes: options.budgetBytes,
    expertBytes: header.expert_bytes,
    topK: header.top_k,
    allExperts: allSparseExperts(header),
    profile: options.profile ?? (options.policy === 'static' ? usageProfile(accesses) : undefined),
    layout: { numExperts: header.num_experts, sparseLayers: header.sparse_layers },
  });
  return { residency: new ResidencySet(plan.budgetBytes, plan.policy), preload: plan.preload };
}

/** Sum over lines of |used ∩ predicted for it by the previous `depth` sparse layers of its step| / sum |used|. */
function prefetchRecall(accesses: readonly PassLayerAccesses[], depth: number): number {
  // Predictions waiting for their line, by slot; a line takes (and drops) its own before adding its own.
  const pending = new Map<string, Set<ExpertId>>();
  let predictedUses = 0;
  let uses = 0;
  for (const line of accesses.flatMap((a) => a.lines)) {
    const predicted = pending.get(line.slot);
    pending.delete(line.slot);
    uses += line.used.length;
    if (predicted) for (const id of line.used) if (predicted.has(id)) predictedUses++;
    for (let d = 1; d <= depth; d++) {
      const slot = line.predictedSlots[d - 1];
      if (slot === undefined) continue;
      let set = pending.get(slot);
      if (!set) pending.set(slot, (set = new Set()));
      for (const id of line.predicted[d - 1] ?? []) set.add(id);
    }
  }
  return uses === 0 ? 0 : predictedUses / uses;
}
