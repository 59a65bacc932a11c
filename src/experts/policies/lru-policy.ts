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

  /** A prefetched expert is about to be used: it enters as the most recent, not where its last use left it. */
  onInsert(id: ExpertId): void {
    this.recency.delete(id);
    this.recency.set(id, true);
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
