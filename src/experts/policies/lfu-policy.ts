import type { ExpertId } from '../expert-id.js';
import type { CachePolicy } from './cache-policy.js';

/**
 * Least frequently used, counting every use since start (not only while resident): MoE routing is close
 * to stationary per layer, so long-run frequency is the better predictor. Ties go to the least recent.
 */
export class LfuPolicy implements CachePolicy {
  readonly name = 'lfu';
  private readonly uses = new Map<ExpertId, number>();
  private readonly lastUse = new Map<ExpertId, number>();
  private clock = 0;

  onAccess(id: ExpertId): void {
    this.uses.set(id, (this.uses.get(id) ?? 0) + 1);
    this.lastUse.set(id, this.clock++);
  }

  onInsert(): void {}

  onEvict(): void {}

  admit(): boolean {
    return true;
  }

  victim(candidates: ReadonlySet<ExpertId>, incoming: ExpertId, forced: boolean): ExpertId | undefined {
    let best: ExpertId | undefined;
    let bestUses = Infinity;
    let bestLast = Infinity;
    for (const id of candidates) {
      const uses = this.uses.get(id) ?? 0;
      const last = this.lastUse.get(id) ?? -1;
      if (uses < bestUses || (uses === bestUses && last < bestLast)) {
        best = id;
        bestUses = uses;
        bestLast = last;
      }
    }
    // Keep the resident set if the newcomer is used less than every candidate.
    if (!forced && best !== undefined && (this.uses.get(incoming) ?? 0) < bestUses) return undefined;
    return best;
  }
}
