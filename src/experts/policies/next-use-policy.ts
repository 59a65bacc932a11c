import type { ExpertId } from '../expert-id.js';
import type { CachePolicy, ExpertLayout } from './cache-policy.js';
import { LayerClock } from './layer-clock.js';

/**
 * An online Belady for batched forward passes: evict the expert whose next use is expected furthest away.
 *
 * - Expected next use (layer-clock.ts): the sparse layers until its layer comes round, plus a cycle for
 *   each visit it is expected to sit out, from the decayed share of visits whose batch used it. With a
 *   full batch nearly every expert is used at every visit, so this evicts the layer just computed and
 *   keeps a stable set, as Belady does; LRU evicts the layer that comes next.
 * - Step-aware: an expert the pass's router lookahead predicts for the next layer (any sequence of the
 *   batch, onPredicted) is expected at that layer's visit, and is never the victim while any other
 *   candidate exists. Experts in use by the current layer are not candidates at all (ResidencySet).
 *   This matters when prefetching: the prediction arrives once the current layer's experts are held,
 *   so without prefetches no eviction happens between it and the next layer's use (replayed on tiny-moe
 *   at prefetch depth 0 it changes nothing; at depth 1 it raises the hit ratio, e.g. 60.4% -> 79.8% at
 *   concurrency 1 and a 25% budget, at the cost of more loads: see README, "Batch-aware caching").
 * - Admission with bypass: a used expert is not kept when its expected next use is further away than
 *   every resident's with the cache full (it would be the next victim anyway, and a kept newcomer
 *   would cost a resident with a sooner use). A demand use still takes room for its duration, since
 *   the budget counts experts in use; a prefetch is kept only when it displaces an expert needed later.
 */
export class NextUsePolicy implements CachePolicy {
  readonly name = 'next-use';
  private readonly clock: LayerClock;
  /** 1 for an expert predicted for a layer not visited since (a flag per id: victim() asks for every resident). */
  private readonly predicted: Uint8Array;
  /** The predicted experts, by the sparse position of their layer, to clear when that layer is visited. */
  private readonly predictedAt = new Map<number, ExpertId[]>();
  private readonly resident = new Set<ExpertId>();
  private lastPosition = -1;

  constructor(
    layout: ExpertLayout | undefined,
    private readonly capacityExperts: number,
  ) {
    this.clock = new LayerClock(layout, this.name);
    this.predicted = new Uint8Array(this.clock.idCount);
  }

  onAccess(id: ExpertId): void {
    const at = this.clock.positionOf(id);
    if (at !== this.lastPosition) {
      // Predictions for this layer have come true or not; either way they are spent.
      for (const p of this.predictedAt.get(at) ?? []) this.predicted[p] = 0;
      this.predictedAt.delete(at);
      this.lastPosition = at;
    }
    this.clock.use(id);
  }

  onPredicted(ids: readonly ExpertId[]): void {
    for (const id of ids) {
      if (this.predicted[id] === 1) continue;
      this.predicted[id] = 1;
      const at = this.clock.positionOf(id);
      let list = this.predictedAt.get(at);
      if (!list) this.predictedAt.set(at, (list = []));
      list.push(id);
    }
  }

  onInsert(id: ExpertId): void {
    this.resident.add(id);
  }

  onEvict(id: ExpertId): void {
    this.resident.delete(id);
  }

  admit(id: ExpertId): boolean {
    if (this.isPredicted(id) || this.resident.size < this.capacityExperts) return true;
    const mine = this.clock.expectedNextUse(id);
    for (const r of this.resident) if (this.nextUse(r) >= mine) return true;
    return false;
  }

  victim(candidates: ReadonlySet<ExpertId>, incoming: ExpertId, forced: boolean): ExpertId | undefined {
    let best: ExpertId | undefined;
    let bestPredicted = true;
    let bestNext = -1;
    for (const id of candidates) {
      const predicted = this.isPredicted(id);
      const next = this.nextUse(id);
      // Unpredicted before predicted; then the furthest expected use.
      if ((bestPredicted && !predicted) || (predicted === bestPredicted && next > bestNext)) {
        best = id;
        bestPredicted = predicted;
        bestNext = next;
      }
    }
    if (!forced && best !== undefined && bestNext <= this.nextUse(incoming)) return undefined;
    return best;
  }

  private isPredicted(id: ExpertId): boolean {
    return this.predicted[id] === 1;
  }

  /** A predicted expert is expected at its layer's next visit; any other, as its history says. */
  private nextUse(id: ExpertId): number {
    return this.isPredicted(id) ? this.clock.layersUntilVisit(id) : this.clock.expectedNextUse(id);
  }
}
