import type { ExpertId } from '../expert-id.js';
import type { CachePolicy } from './cache-policy.js';

/** Least recently used: a Map's insertion order is the recency order (re-inserted on every access). */
export class LruPolicy implements CachePolicy {
  readonly name = 'lru';
  private readonly recency = new Map<ExpertId, true>();

  onAccess(id: ExpertId): void {
    this.recency.delete(id);
    this.recency.set(id, true);
  }

  onInsert(id: ExpertId): void {
    if (!this.recency.has(id)) this.recency.set(id, true);
  }

  onEvict(): void {}

  admit(): boolean {
    return true;
  }

  victim(candidates: ReadonlySet<ExpertId>): ExpertId | undefined {
    for (const id of this.recency.keys()) if (candidates.has(id)) return id;
    return candidates.values().next().value;
  }
}
