import type { ExpertId } from '../expert-id.js';
import type { CachePolicy } from './cache-policy.js';

/** Keeps nothing: every use loads the expert (the lower bound). */
export class NonePolicy implements CachePolicy {
  readonly name = 'none';

  onAccess(): void {}

  onInsert(): void {}

  onEvict(): void {}

  admit(): boolean {
    return false;
  }

  victim(candidates: ReadonlySet<ExpertId>): ExpertId | undefined {
    return candidates.values().next().value;
  }
}
