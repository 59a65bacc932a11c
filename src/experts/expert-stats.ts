// Expert-cache counters, per layer and in total.

export interface ExpertCounters {
  /** Expert uses by the forward pass. */
  accesses: number;
  hits: number;
  misses: number;
  prefetchIssued: number;
  /** Prefetched experts that were used before being evicted. */
  prefetchUsed: number;
  /** Prefetched experts evicted without being used. */
  prefetchWasted: number;
  evictions: number;
  /** Device-tier misses whose weights the host tier held, and those it had to read from disk. */
  hostHits: number;
  hostMisses: number;
  bytesFromDisk: number;
  /** Bytes turned into compute form (uploaded on GPU providers, converted to fp32 on the CPU). */
  bytesToDevice: number;
  /** Time the forward pass waited for expert loads. */
  waitMs: number;
  /** Time spent turning experts into compute form (uploads on GPU providers): bytesToDevice / loadMs is the load rate. */
  loadMs: number;
  /**
   * Misses computed on the CPU provider from host memory instead of being loaded (GPU providers with
   * --miss-placement cpu or auto; counted in accesses and misses too), and the milliseconds those runs took.
   */
  cpuComputed: number;
  cpuMs: number;
  /** Of cpuComputed, those found in the CPU provider's form, kept from an earlier use (no host read, no widening or session creation). */
  cpuKept: number;
  /** Experts used that the router lookahead had predicted, and experts used while lookahead ran. */
  predictedAndUsed: number;
  usedWithLookahead: number;
}

export function emptyCounters(): ExpertCounters {
  return {
    accesses: 0,
    hits: 0,
    misses: 0,
    prefetchIssued: 0,
    prefetchUsed: 0,
    prefetchWasted: 0,
    evictions: 0,
    hostHits: 0,
    hostMisses: 0,
    bytesFromDisk: 0,
    bytesToDevice: 0,
    waitMs: 0,
    loadMs: 0,
    cpuComputed: 0,
    cpuMs: 0,
    cpuKept: 0,
    predictedAndUsed: 0,
    usedWithLookahead: 0,
  };
}

export interface LayerStats extends ExpertCounters {
  readonly layer: number;
  readonly residentBytes: number;
  readonly residentExperts: number;
  readonly hitRatio: number | null;
}

export interface ExpertCacheStats {
  readonly policy: string;
  readonly prefetchDepth: number;
  readonly budgetBytes: number;
  readonly expertBytes: number;
  readonly totalExpertBytes: number;
  readonly residentBytes: number;
  readonly hostResidentBytes: number;
  /** Times a use could not fit in the budget even after evicting every expert not in use (should be 0). */
  readonly overBudget: number;
  readonly total: ExpertCounters & {
    readonly hitRatio: number | null;
    readonly prefetchRecall: number | null;
    /** The disk tier: reads issued, and wall time with at least one in flight (bytesFromDisk / diskBusyMs is its rate). */
    readonly diskReads: number;
    readonly diskBusyMs: number;
  };
  readonly layers: readonly LayerStats[];
}

export function addCounters(into: ExpertCounters, c: ExpertCounters): void {
  for (const k of Object.keys(into) as (keyof ExpertCounters)[]) into[k] += c[k];
}

export function ratio(n: number, d: number): number | null {
  return d === 0 ? null : n / d;
}
