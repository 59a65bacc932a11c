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

  victim(candidates: ReadonlySet<ExpertId>): ExpertId | undefined {
    for (const id of candidates) if (!this.hotSet.has(id)) return id;
    return undefined;
  }
}
