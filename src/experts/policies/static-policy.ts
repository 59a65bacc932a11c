import type { ExpertId } from '../expert-id.js';
import type { CachePolicy } from './cache-policy.js';

/**
 * A fixed hot set: the most used experts of a routing profile that fit the budget stay resident; every
 * other expert is loaded for its use and dropped right after.
 */
export class StaticPolicy implements CachePolicy {
  readonly name = 'static';
  readonly hotSet: ReadonlySet<ExpertId>;

  constructor(profile: readonly ExpertId[], capacityExperts: number) {
    this.hotSet = new Set(profile.slice(0, capacityExperts));
  }

  onAccess(): void {}

  onInsert(): void {}

  onEvict(): void {}

  admit(id: ExpertId): boolean {
    return this.hotSet.has(id);
  }

  victim(candidates: ReadonlySet<ExpertId>, _incoming: ExpertId, forced: boolean): ExpertId | undefined {
    for (const id of candidates) if (!this.hotSet.has(id)) return id;
    if (!forced) return undefined;
    // The hot set is ordered most used first: give up its least used resident member.
    let last: ExpertId | undefined;
    for (const id of this.hotSet) if (candidates.has(id)) last = id;
    return last;
  }
}
