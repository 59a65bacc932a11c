// Replays a routing trace against one cache policy, budget and prefetch depth, making the same
// ResidencySet calls in the same order as the server's device cache (ExpertStore; replay-cache.ts makes
// them), on the forward passes the server ran (trace-accesses.ts), so its counters are the ones the
// server would count. Timing plays no part in them: the server admits a prefetched expert when the
// prefetch is issued, and a use that finds its load still in flight is a hit that waits. A trace that
// records pass numbers and lookahead votes gives every pass and its prefetch order exactly. An older one,
// without votes, cannot give the order of a batch's lookahead when a multi-token request (a prompt)
// shares a pass with others; such prefetches are counted in estimatedPrefetches. The device tier only: the host tier's hits depend on
// when reads complete, and every device-tier load (misses + prefetchIssued) is one host-tier request.
import type { ExpertId } from '../expert-id.js';
import type { Trace } from './read-trace.js';
import { ReplayCache, type ReplayCacheOptions } from './replay-cache.js';
import { traceAccesses, usageProfile, type PassLayerAccesses } from './trace-accesses.js';

export interface SimulateOptions extends ReplayCacheOptions {
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
  const accesses = traceAccesses(trace);
  const profile = options.profile ?? (options.policy === 'static' ? usageProfile(accesses) : undefined);
  const cache = new ReplayCache(trace.header, { ...options, profile });
  for (const layer of accesses) cache.use(layer);
  return { ...cache.counts(), prefetchRecall: options.prefetchDepth === 0 ? null : prefetchRecall(accesses, options.prefetchDepth) };
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
