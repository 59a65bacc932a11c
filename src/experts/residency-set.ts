// Which experts are resident under a byte budget, decided by a CachePolicy. Pure: the device cache applies
// its decisions to real tensors and the replay simulator to nothing, so both evict exactly alike.
//
// Experts in use count against the budget too: a demand miss always becomes resident for its use
// (evicting others if needed), and one the policy does not admit is a transient entry that the caller
// removes after the use. So resident bytes include everything the device holds for experts.
//
// How a user of this class (the device cache, the replay simulator) processes one layer of one step:
//   for each expert id used by the layer, ascending:  r = demand(id, bytes, busy = all ids in use)
//   while they are held:                               prefetch(id, bytes, busy) for each predicted id
//   after the layer's use:                             remove(id) for every r.transient
import type { ExpertId } from './expert-id.js';
import type { CachePolicy } from './policies/index.js';

export interface DemandResult {
  /** Resident before this use. */
  readonly hit: boolean;
  /** Resident only for this use: remove() it afterwards. */
  readonly transient: boolean;
  /** Experts evicted to make room; the caller frees them. */
  readonly evicted: readonly ExpertId[];
}

export interface PrefetchResult {
  readonly kept: boolean;
  readonly evicted: readonly ExpertId[];
}

export class ResidencySet {
  private readonly resident = new Map<ExpertId, number>();
  private usedBytes = 0;
  private overBudgetCount = 0;

  constructor(
    readonly capacityBytes: number,
    readonly policy: CachePolicy,
  ) {}

  get residentBytes(): number {
    return this.usedBytes;
  }

  /** Uses that could not fit even after evicting every expert not in use (should stay 0). */
  get overBudget(): number {
    return this.overBudgetCount;
  }

  has(id: ExpertId): boolean {
    return this.resident.has(id);
  }

  ids(): IterableIterator<ExpertId> {
    return this.resident.keys();
  }

  /** A use of `id` by the forward pass; `busy` are experts in use that must not be evicted. */
  demand(id: ExpertId, bytes: number, busy: ReadonlySet<ExpertId>): DemandResult {
    this.policy.onAccess(id);
    if (this.resident.has(id)) return { hit: true, transient: false, evicted: [] };
    const admitted = this.policy.admit(id);
    // The use must happen, so room is made even where the policy would rather not keep the newcomer.
    const evicted = this.makeRoom(id, bytes, busy, true) ?? [];
    if (this.usedBytes + bytes > this.capacityBytes) this.overBudgetCount++;
    this.add(id, bytes, admitted);
    return { hit: false, transient: !admitted, evicted };
  }

  /** A predicted future use: kept only if the policy admits it and room can be made. */
  prefetch(id: ExpertId, bytes: number, busy: ReadonlySet<ExpertId>): PrefetchResult {
    if (this.resident.has(id) || !this.policy.admit(id)) return { kept: false, evicted: [] };
    const evicted = this.makeRoom(id, bytes, busy, false);
    if (evicted === undefined) return { kept: false, evicted: [] };
    this.add(id, bytes, true);
    return { kept: true, evicted };
  }

  remove(id: ExpertId): void {
    const bytes = this.resident.get(id);
    if (bytes === undefined) return;
    this.resident.delete(id);
    this.usedBytes -= bytes;
    this.policy.onEvict(id);
  }

  private add(id: ExpertId, bytes: number, notifyPolicy: boolean): void {
    this.resident.set(id, bytes);
    this.usedBytes += bytes;
    if (notifyPolicy) this.policy.onInsert(id);
  }

  /** Evicts until `bytes` more fit; undefined (and nothing evicted) when the policy refuses and !force. */
  private makeRoom(incoming: ExpertId, bytes: number, busy: ReadonlySet<ExpertId>, force: boolean): ExpertId[] | undefined {
    // Most calls need no eviction (a cache still filling, a generous budget): skip building the candidates.
    if (this.usedBytes + bytes <= this.capacityBytes) return [];
    const candidates = new Set<ExpertId>();
    for (const r of this.resident.keys()) if (!busy.has(r)) candidates.add(r);
    const evicted: ExpertId[] = [];
    let freed = 0;
    while (this.usedBytes - freed + bytes > this.capacityBytes && candidates.size > 0) {
      let v = this.policy.victim(candidates, incoming, force);
      if (v === undefined || !candidates.has(v)) {
        if (!force) return undefined;
        v = candidates.values().next().value as ExpertId; // a policy that names no victim when forced
      }
      candidates.delete(v);
      evicted.push(v);
      freed += this.resident.get(v) ?? 0;
    }
    if (!force && this.usedBytes - freed + bytes > this.capacityBytes) return undefined;
    for (const v of evicted) this.remove(v);
    return evicted;
  }
}
