import type { ExpertId } from '../expert-id.js';
import type { CachePolicy } from './cache-policy.js';

/** Everything resident (the upper bound): the budget is raised to every expert's bytes. */
export class AllPolicy implements CachePolicy {
  readonly name = 'all';

  onAccess(): void {}

  onInsert(): void {}

  onEvict(): void {}

  admit(): boolean {
    return true;
  }

  victim(candidates: ReadonlySet<ExpertId>): ExpertId | undefined {
    return candidates.values().next().value;
  }
}
