// Belady's offline optimum (MIN): on a miss with the cache full, evict the resident expert whose next use
// is furthest away. Same forward passes, use groups and budget rules as the simulator and the server: a
// pass uses the union of its sequences' experts once per layer, experts in use count against the budget
// and cannot be evicted, so a miss always takes room for its use (there is no bypass that skips it, as
// in the textbook variant: that would let the bound hold more experts than the server can). With
// experts of equal size, a byte budget is a whole number of experts, where MIN needs the fewest loads of
// any schedule, prefetching ones included (a prefetch can always be delayed to the use without costing a
// load): its hit ratio bounds every policy's loads avoided, and its misses are the fewest loads possible.
// One relaxation: the cache starts holding the experts used first (the best start; the server preloads
// 'static' hot sets too, and a load-test run starts with whatever earlier runs left).
import type { Trace } from './read-trace.js';
import type { HitCounts } from './simulate.js';
import { traceAccesses, useGroups, type PassLayerAccesses } from './trace-accesses.js';

export function belady(trace: Trace, budgetBytes: number): HitCounts {
  const { header } = trace;
  const accesses = traceAccesses(trace);
  const capacity = Math.floor(budgetBytes / header.expert_bytes);
  const idCount = header.num_layers * header.num_experts;
  const { ids, nextUse, firstUses } = flatten(accesses, idCount);

  // residentNext[id]: position of the resident expert's next use, -1 when not resident.
  const residentNext = new Float64Array(idCount).fill(-1);
  // Evictable residents by next use, as packed numbers (nextUse * idCount + id) in a max-heap; entries
  // whose next use has moved on since are stale and skipped when they surface.
  const heap = new MaxHeap();
  let residentCount = 0;
  for (const { id, position } of firstUses.slice(0, capacity)) {
    residentNext[id] = position;
    heap.push(position * idCount + id);
    residentCount++;
  }
  // busyGroup[id] === group: the expert is held by the group in use.
  const busyGroup = new Int32Array(idCount).fill(-1);
  let group = 0;
  let hits = 0;
  let evictions = 0;
  let position = 0;

  for (const step of accesses) {
    for (const used of useGroups(step.used, capacity)) {
      group++;
      for (const id of used) busyGroup[id] = group;
      for (let k = 0; k < used.length; k++, position++) {
        const id = ids[position]!;
        const next = nextUse[position]!;
        if (residentNext[id]! >= 0) {
          hits++;
          residentNext[id] = next;
          heap.push(next * idCount + id);
          continue;
        }
        if (residentCount < capacity) {
          residentCount++;
        } else {
          // The use takes room whatever happens after it, so someone not in use leaves: the one needed last.
          const victim = furthestEvictable(heap, residentNext, busyGroup, group, idCount);
          if (victim === undefined) throw new RangeError('a use group larger than the budget'); // useGroups prevents it
          residentNext[victim.id] = -1;
          evictions++;
        }
        residentNext[id] = next;
        heap.push(next * idCount + id);
      }
    }
  }
  const total = position;
  return { accesses: total, hits, misses: total - hits, hitRatio: total === 0 ? 0 : hits / total, evictions };
}

/**
 * The flattened access sequence; for each access, the position of the same expert's next access; and
 * each expert's first access, earliest first.
 */
function flatten(accesses: readonly PassLayerAccesses[], idCount: number) {
  let n = 0;
  for (const step of accesses) n += step.used.length;
  const ids = new Int32Array(n);
  let p = 0;
  for (const step of accesses) for (const id of step.used) ids[p++] = id;
  // Never used again sorts after every real position.
  const never = n;
  const nextUse = new Float64Array(n);
  const seenAt = new Float64Array(idCount).fill(never);
  for (let i = n - 1; i >= 0; i--) {
    const id = ids[i]!;
    nextUse[i] = seenAt[id]!;
    seenAt[id] = i;
  }
  const firstUses: { id: number; position: number }[] = [];
  seenAt.forEach((position, id) => {
    if (position < never) firstUses.push({ id, position });
  });
  firstUses.sort((a, b) => a.position - b.position);
  return { ids, nextUse, firstUses };
}

/** Pops the live, non-busy resident with the furthest next use; busy ones popped on the way go back. */
function furthestEvictable(heap: MaxHeap, residentNext: Float64Array, busyGroup: Int32Array, group: number, idCount: number): { id: number; next: number } | undefined {
  const setAside: number[] = [];
  let found: { id: number; next: number } | undefined;
  while (heap.size > 0) {
    const packed = heap.pop();
    const id = packed % idCount;
    const next = (packed - id) / idCount;
    if (residentNext[id] !== next) continue; // stale
    if (busyGroup[id] === group) {
      setAside.push(packed);
      continue;
    }
    found = { id, next };
    break;
  }
  for (const packed of setAside) heap.push(packed);
  return found;
}

/** A binary max-heap of numbers. */
class MaxHeap {
  private readonly items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  push(value: number): void {
    const a = this.items;
    let i = a.push(value) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (a[parent]! >= value) break;
      a[i] = a[parent]!;
      i = parent;
    }
    a[i] = value;
  }

  /** Removes and returns the largest value; the heap must not be empty. */
  pop(): number {
    const a = this.items;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length === 0) return top;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= a.length) break;
      if (child + 1 < a.length && a[child + 1]! > a[child]!) child++;
      if (a[child]! <= last) break;
      a[i] = a[child]!;
      i = child;
    }
    a[i] = last;
    return top;
  }
}
