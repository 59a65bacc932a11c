import type { ExpertId } from '../expert-id.js';
import type { CachePolicy, ExpertLayout } from './cache-policy.js';
import { LayerClock } from './layer-clock.js';

/**
 * Least frequently used with decay, counted per visit of the expert's layer rather than per use: the
 * share of the last ~16 forward passes whose batch used the expert (layer-clock.ts). A batched pass uses
 * an expert once however many of its sequences pick it, and the batch's mix changes as requests come and
 * go, which 'lfu' (every use since start) follows slowly. Ties (at high concurrency most experts are used
 * at every visit) go to the expert whose layer comes round last.
 */
export class LfuDecayPolicy implements CachePolicy {
  readonly name = 'lfu-decay';
  private readonly clock: LayerClock;

  constructor(layout: ExpertLayout | undefined) {
    this.clock = new LayerClock(layout, this.name);
  }

  onAccess(id: ExpertId): void {
    this.clock.use(id);
  }

  onInsert(): void {}

  onEvict(): void {}

  admit(): boolean {
    return true;
  }

  victim(candidates: ReadonlySet<ExpertId>, incoming: ExpertId, forced: boolean): ExpertId | undefined {
    let best: ExpertId | undefined;
    let bestP = Infinity;
    let bestAhead = -1;
    for (const id of candidates) {
      const p = this.clock.useProbability(id);
      const ahead = this.clock.layersUntilVisit(id);
      if (p < bestP || (p === bestP && ahead > bestAhead)) {
        best = id;
        bestP = p;
        bestAhead = ahead;
      }
    }
    if (!forced && best !== undefined && this.clock.useProbability(incoming) < bestP) return undefined;
    return best;
  }
}
