// The resident set under every cache policy: invariants over seeded random routing (used the way the
// device cache and the replay simulator use it), then the behaviour that tells the policies apart.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ExpertId } from '../../src/experts/expert-id.js';
import { createPolicy, POLICY_NAMES, type CachePolicy, type ExpertLayout, type PolicyName } from '../../src/experts/policies/index.js';
import { StaticPolicy } from '../../src/experts/policies/static-policy.js';
import { ResidencySet } from '../../src/experts/residency-set.js';
import { createRng } from '../../src/engine/sampler.js';

const EXPERT_BYTES = 100;

/** Seeded uniform numbers in [0, 1), from the sampler's PRNG. */
function seededRandom(seed: number): () => number {
  const rng = createRng(seed);
  return () => rng.next();
}

interface Shape {
  readonly layers: number;
  readonly experts: number;
  /** Most experts one line holds busy at once (tokens x top-k, deduplicated). */
  readonly maxBusy: number;
}

const SHAPE: Shape = { layers: 4, experts: 8, maxBusy: 4 };
const ALL_EXPERTS = SHAPE.layers * SHAPE.experts;
/** Every layer sparse, as in Mixtral: ids are layer * 8 + expert. */
const LAYOUT: ExpertLayout = { numExperts: SHAPE.experts, sparseLayers: Array.from({ length: SHAPE.layers }, (_, l) => l) };

/**
 * One line of routing (one sparse layer of one step): the experts in use (ascending), and what the
 * router lookahead predicts for the next two layers (half right, half random, as a real lookahead is).
 * Expert popularity is skewed (Zipf-like, a different ranking per layer) so that LFU and static see
 * frequent and rare experts.
 */
interface Line {
  readonly used: readonly ExpertId[];
  readonly predicted: readonly ExpertId[];
}

function routing(seed: number, lineCount: number, shape: Shape): { lines: Line[]; profile: ExpertId[] } {
  const random = seededRandom(seed);
  const int = (n: number) => Math.floor(random() * n);
  const rankings = Array.from({ length: shape.layers }, () => {
    const r = [...Array(shape.experts).keys()];
    for (let i = r.length - 1; i > 0; i--) {
      const j = int(i + 1);
      [r[i], r[j]] = [r[j]!, r[i]!];
    }
    return r;
  });
  const weights = Array.from({ length: shape.experts }, (_, rank) => 1 / (rank + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const draw = (layer: number): ExpertId => {
    let x = random() * total;
    let rank = 0;
    while (rank < shape.experts - 1 && x >= weights[rank]!) x -= weights[rank++]!;
    return layer * shape.experts + rankings[layer]![rank]!;
  };
  const usedAt = (layer: number) => {
    const used = new Set<ExpertId>();
    const size = 1 + int(shape.maxBusy);
    while (used.size < size) used.add(draw(layer));
    return [...used].sort((a, b) => a - b);
  };
  const lines: Line[] = [];
  const usage = new Map<ExpertId, number>();
  let next = usedAt(0);
  for (let i = 0; i < lineCount; i++) {
    const layer = i % shape.layers;
    const used = next;
    next = usedAt((layer + 1) % shape.layers);
    const predicted: ExpertId[] = [];
    for (let d = 1; d <= 2; d++) {
      const target = (layer + d) % shape.layers;
      for (const id of d === 1 ? next : usedAt(target)) predicted.push(random() < 0.5 ? id : target * shape.experts + int(shape.experts));
    }
    for (const id of used) usage.set(id, (usage.get(id) ?? 0) + 1);
    lines.push({ used, predicted });
  }
  // A routing profile (most used first) from the same distribution, as a training report would give.
  const profile = [...Array(shape.layers * shape.experts).keys()].sort((a, b) => (usage.get(b) ?? 0) - (usage.get(a) ?? 0) || a - b);
  return { lines, profile };
}

/**
 * Builds the set as createExpertStore does: static keeps room for one line's busy experts beyond its hot
 * set. `reserveForBusy: false` gives static a hot set as large as the budget instead, so that demands must
 * force hot experts out.
 */
function residencySet(
  policyName: PolicyName,
  capacityBytes: number,
  profile: readonly ExpertId[],
  reserveForBusy = true,
): { set: ResidencySet; policy: CachePolicy; preload: readonly ExpertId[] } {
  const capacityExperts = Math.floor(capacityBytes / EXPERT_BYTES);
  const hotCapacity = reserveForBusy ? Math.max(0, capacityExperts - SHAPE.maxBusy) : capacityExperts;
  const policy = createPolicy(policyName, { profile, capacityExperts: policyName === 'static' ? hotCapacity : capacityExperts, layout: LAYOUT });
  const preload = policyName === 'static' ? profile.slice(0, hotCapacity) : policyName === 'all' ? [...profile] : [];
  return { set: new ResidencySet(capacityBytes, policy), policy, preload };
}

/** Everything a run observed, for the assertions. */
interface RunLog {
  readonly evictions: ExpertId[];
  readonly residentAfterLine: ExpertId[][];
  readonly transientCount: number;
  /** Prefetches made while every resident expert was busy and the set was full. */
  readonly prefetchesIntoBusyFullSet: number;
  readonly prefetchesKept: number;
}

/**
 * Replays `lines` as ExpertStore.acquire / prefetch / release do, checking after every call the
 * invariants that hold for every policy while no line uses more experts than fit.
 */
function replay(set: ResidencySet, lines: readonly Line[], preload: readonly ExpertId[], label: string): RunLog {
  const evictions: ExpertId[] = [];
  const residentAfterLine: ExpertId[][] = [];
  let transientCount = 0;
  let prefetchesIntoBusyFullSet = 0;
  let prefetchesKept = 0;
  const check = (where: string) => {
    const ids = [...set.ids()];
    assert.equal(set.residentBytes, ids.length * EXPERT_BYTES, `${label} ${where}: residentBytes disagrees with ids()`);
    assert.ok(set.residentBytes <= set.capacityBytes, `${label} ${where}: ${set.residentBytes} resident bytes > capacity ${set.capacityBytes}`);
    assert.equal(set.overBudget, 0, `${label} ${where}: overBudget`);
  };
  const checkEvicted = (evicted: readonly ExpertId[], before: ReadonlySet<ExpertId>, busy: ReadonlySet<ExpertId>, where: string) => {
    assert.equal(new Set(evicted).size, evicted.length, `${label} ${where}: an expert evicted twice in one call`);
    for (const v of evicted) {
      assert.ok(!busy.has(v), `${label} ${where}: evicted busy expert ${v}`);
      assert.ok(before.has(v), `${label} ${where}: evicted ${v}, which was not resident`);
      assert.ok(!set.has(v), `${label} ${where}: evicted ${v} is still resident`);
    }
    evictions.push(...evicted);
  };

  for (const id of preload) {
    const before = new Set(set.ids());
    const r = set.prefetch(id, EXPERT_BYTES, new Set());
    checkEvicted(r.evicted, before, new Set(), `preload ${id}`);
    check(`preload ${id}`);
  }
  lines.forEach((line, i) => {
    const busy = new Set(line.used);
    const transient: ExpertId[] = [];
    for (const id of line.used) {
      const before = new Set(set.ids());
      const r = set.demand(id, EXPERT_BYTES, busy);
      const where = `line ${i} demand ${id}`;
      assert.equal(r.hit, before.has(id), `${where}: hit`);
      assert.ok(set.has(id), `${where}: a demanded expert is resident for its use`);
      if (r.hit) assert.deepEqual(r.evicted, [], `${where}: a hit evicts nothing`);
      checkEvicted(r.evicted, before, busy, where);
      check(where);
      if (r.transient) transient.push(id);
    }
    for (const id of line.used) assert.ok(set.has(id), `line ${i}: busy expert ${id} left while in use`);
    set.policy.onPredicted?.(line.predicted);
    for (const id of line.predicted) {
      const before = new Set(set.ids());
      const wasFullOfBusy = set.residentBytes + EXPERT_BYTES > set.capacityBytes && before.size > 0 && [...before].every((r) => busy.has(r));
      const r = set.prefetch(id, EXPERT_BYTES, busy);
      const where = `line ${i} prefetch ${id}`;
      checkEvicted(r.evicted, before, busy, where);
      check(where);
      if (before.has(id)) assert.equal(r.kept, false, `${where}: an already resident expert is not prefetched again`);
      if (r.kept) {
        prefetchesKept++;
        assert.ok(set.has(id), `${where}: kept but not resident`);
      } else {
        assert.deepEqual(r.evicted, [], `${where}: a prefetch that is not kept evicts nothing`);
        assert.deepEqual(new Set(set.ids()), before, `${where}: a prefetch that is not kept changes nothing`);
      }
      if (wasFullOfBusy) {
        prefetchesIntoBusyFullSet++;
        assert.equal(r.kept, false, `${where}: kept although the set is full of busy experts`);
        assert.deepEqual(r.evicted, [], `${where}: evicted although every resident is busy`);
      }
    }
    for (const id of line.used) assert.ok(set.has(id), `line ${i}: busy expert ${id} evicted by a prefetch`);
    for (const id of transient) set.remove(id);
    transientCount += transient.length;
    for (const id of transient) assert.ok(!set.has(id), `line ${i}: transient ${id} still resident after remove`);
    check(`line ${i} end`);
    residentAfterLine.push([...set.ids()]);
  });
  return { evictions, residentAfterLine, transientCount, prefetchesIntoBusyFullSet, prefetchesKept };
}

const SEEDS = Array.from({ length: 12 }, (_, i) => 1000 + i * 7919);
const LINES = 240;
/** From "exactly one busy line fits" to everything, including budgets that are not a whole number of experts. */
const CAPACITIES_BYTES = [SHAPE.maxBusy * EXPERT_BYTES, SHAPE.maxBusy * EXPERT_BYTES + 37, 7 * EXPERT_BYTES, 12 * EXPERT_BYTES + 99, 20 * EXPERT_BYTES, ALL_EXPERTS * EXPERT_BYTES];

describe('ResidencySet invariants over seeded random routing', () => {
  for (const policyName of POLICY_NAMES) {
    test(`${policyName}: stays within capacity, never over budget, never evicts a busy expert, prefetch never forces`, () => {
      let evictions = 0;
      let intoBusyFullSet = 0;
      let kept = 0;
      for (const seed of SEEDS) {
        const { lines, profile } = routing(seed, LINES, SHAPE);
        for (const capacity of CAPACITIES_BYTES) {
          for (const reserveForBusy of policyName === 'static' ? [true, false] : [true]) {
            const { set, preload } = residencySet(policyName, capacity, profile, reserveForBusy);
            const log = replay(set, lines, preload, `${policyName} seed ${seed} capacity ${capacity}${reserveForBusy ? '' : ' (hot set = budget)'}`);
            evictions += log.evictions.length;
            intoBusyFullSet += log.prefetchesIntoBusyFullSet;
            kept += log.prefetchesKept;
          }
        }
      }
      // The sequences must reach the cases the invariants are about, or the test proves nothing.
      if (policyName !== 'none') {
        assert.ok(evictions > 0, 'no evictions happened');
        assert.ok(kept > 0, 'no prefetch was kept');
      }
      assert.ok(intoBusyFullSet > 0, 'no prefetch met a set full of busy experts');
    });

    test(`${policyName}: a capacity holding every expert never evicts`, () => {
      for (const seed of SEEDS) {
        const { lines, profile } = routing(seed, LINES, SHAPE);
        const { set, preload } = residencySet(policyName, ALL_EXPERTS * EXPERT_BYTES, profile);
        const log = replay(set, lines, preload, `${policyName} seed ${seed} all`);
        assert.deepEqual(log.evictions, [], `${policyName} seed ${seed}`);
      }
    });
  }

  test('none keeps nothing once the transients are removed, and every use is a transient miss', () => {
    for (const seed of SEEDS) {
      const { lines, profile } = routing(seed, LINES, SHAPE);
      for (const capacity of CAPACITIES_BYTES) {
        const { set, preload } = residencySet('none', capacity, profile);
        const log = replay(set, lines, preload, `none seed ${seed} capacity ${capacity}`);
        for (const [i, resident] of log.residentAfterLine.entries()) assert.deepEqual(resident, [], `seed ${seed} capacity ${capacity} line ${i}`);
        assert.equal(log.transientCount, lines.reduce((n, l) => n + l.used.length, 0));
        assert.deepEqual(log.evictions, []);
      }
    }
  });

  test('all, preloaded at every expert as the server does, hits on every use', () => {
    const { lines, profile } = routing(42, LINES, SHAPE);
    const { set, preload } = residencySet('all', ALL_EXPERTS * EXPERT_BYTES, profile);
    replay(set, [], preload, 'all preload');
    assert.equal(set.residentBytes, ALL_EXPERTS * EXPERT_BYTES);
    for (const line of lines) for (const id of line.used) assert.equal(set.demand(id, EXPERT_BYTES, new Set(line.used)).hit, true);
  });

  test('static keeps only hot experts after each line', () => {
    for (const seed of SEEDS) {
      const { lines, profile } = routing(seed, LINES, SHAPE);
      for (const capacity of CAPACITIES_BYTES) {
        const { set, policy, preload } = residencySet('static', capacity, profile);
        assert.ok(policy instanceof StaticPolicy);
        const log = replay(set, lines, preload, `static seed ${seed} capacity ${capacity}`);
        for (const resident of log.residentAfterLine) for (const id of resident) assert.ok(policy.hotSet.has(id), `seed ${seed} capacity ${capacity}: ${id} is not hot`);
      }
    }
  });

  test('counts a use that cannot fit because more experts are busy than the budget holds', () => {
    // Callers keep |busy| * bytes <= capacity (ExpertStore.maxExpertsInUse); this documents what happens if not.
    for (const policyName of POLICY_NAMES) {
      const set = residencySet(policyName, 2 * EXPERT_BYTES, [0, 1, 2]).set;
      const busy = new Set([0, 1, 2]);
      for (const id of busy) set.demand(id, EXPERT_BYTES, busy);
      assert.equal(set.overBudget, 1, policyName);
    }
  });
});

/** One use of `id` alone (one token, top-1), its transient removed afterwards. */
function use(set: ResidencySet, id: ExpertId): ReturnType<ResidencySet['demand']> {
  const r = set.demand(id, EXPERT_BYTES, new Set([id]));
  if (r.transient) set.remove(id);
  return r;
}

describe('LRU', () => {
  test('evicts the least recently used expert when the budget is exceeded', () => {
    const set = new ResidencySet(3 * EXPERT_BYTES, createPolicy('lru', { capacityExperts: 3 }));
    for (const id of [1, 2, 3]) use(set, id);
    use(set, 1); // 2 is now the least recently used
    assert.deepEqual(use(set, 4).evicted, [2]);
    assert.deepEqual(use(set, 5).evicted, [3]);
    assert.deepEqual(use(set, 6).evicted, [1]);
  });

  test('a prefetched expert enters as the most recent, not where its last use left it', () => {
    const set = new ResidencySet(2 * EXPERT_BYTES, createPolicy('lru', { capacityExperts: 2 }));
    use(set, 7); // 7's last use is the oldest
    use(set, 1);
    assert.deepEqual(use(set, 2).evicted, [7]);
    // While 2 is in use, the lookahead predicts 7: the only candidate, 1, makes room.
    const p = set.prefetch(7, EXPERT_BYTES, new Set([2]));
    assert.deepEqual(p, { kept: true, evicted: [1] });
    // 2 (used before the prefetch) is now older than 7.
    assert.deepEqual(use(set, 3).evicted, [2]);
    assert.ok(set.has(7));
  });

  test('a demand hit refreshes recency', () => {
    const set = new ResidencySet(2 * EXPERT_BYTES, createPolicy('lru', { capacityExperts: 2 }));
    use(set, 1);
    use(set, 2);
    assert.equal(use(set, 1).hit, true);
    assert.deepEqual(use(set, 3).evicted, [2]);
  });
});

describe('LFU', () => {
  function lfuWithHistory(): ResidencySet {
    const set = new ResidencySet(2 * EXPERT_BYTES, createPolicy('lfu', { capacityExperts: 2 }));
    for (let i = 0; i < 3; i++) use(set, 1);
    for (let i = 0; i < 2; i++) use(set, 2);
    return set;
  }

  test('a prefetch of a rarely used expert does not displace frequently used ones', () => {
    const set = lfuWithHistory();
    // 9 has never been used: the policy names no victim and the prefetch is not kept.
    assert.deepEqual(set.prefetch(9, EXPERT_BYTES, new Set()), { kept: false, evicted: [] });
    assert.ok(set.has(1) && set.has(2) && !set.has(9));
  });

  test('a demand (forced) still evicts the least used candidate', () => {
    const set = lfuWithHistory();
    const r = set.demand(9, EXPERT_BYTES, new Set([9]));
    assert.deepEqual(r, { hit: false, transient: false, evicted: [2] });
    assert.ok(set.has(1) && set.has(9));
  });

  test('a prefetch of an expert used at least as often as the least used candidate is kept', () => {
    const set = lfuWithHistory();
    for (let i = 0; i < 2; i++) use(set, 9); // 9 now used twice; the set holds 1 (3 uses) and 9 (2 uses)
    assert.ok(!set.has(2));
    use(set, 1);
    // 2 (2 uses) vs the least used resident candidate 9 (2 uses): not less, so the prefetch is kept.
    assert.deepEqual(set.prefetch(2, EXPERT_BYTES, new Set([1])), { kept: true, evicted: [9] });
  });

  test('ties in use count go to the least recently used', () => {
    const set = new ResidencySet(2 * EXPERT_BYTES, createPolicy('lfu', { capacityExperts: 2 }));
    use(set, 1);
    use(set, 2);
    assert.deepEqual(use(set, 3).evicted, [1]);
  });
});

describe('static', () => {
  // Hot set = the first 2 of the profile: 5 (most used), then 6.
  const PROFILE = [5, 6, 7, 8];

  test('only admits its hot set: other experts are transient and never prefetched', () => {
    const set = new ResidencySet(4 * EXPERT_BYTES, createPolicy('static', { profile: PROFILE, capacityExperts: 2 }));
    assert.deepEqual(set.prefetch(7, EXPERT_BYTES, new Set()), { kept: false, evicted: [] });
    assert.deepEqual(set.prefetch(5, EXPERT_BYTES, new Set()), { kept: true, evicted: [] });
    const cold = set.demand(8, EXPERT_BYTES, new Set([8]));
    assert.deepEqual(cold, { hit: false, transient: true, evicted: [] });
    set.remove(8);
    const hot = set.demand(6, EXPERT_BYTES, new Set([6]));
    assert.deepEqual(hot, { hit: false, transient: false, evicted: [] });
    assert.deepEqual([...set.ids()].sort(), [5, 6]);
  });

  test('when forced, gives up its least used hot expert', () => {
    const set = new ResidencySet(2 * EXPERT_BYTES, createPolicy('static', { profile: PROFILE, capacityExperts: 2 }));
    set.prefetch(5, EXPERT_BYTES, new Set());
    set.prefetch(6, EXPERT_BYTES, new Set());
    const r = set.demand(7, EXPERT_BYTES, new Set([7]));
    assert.deepEqual(r, { hit: false, transient: true, evicted: [6] });
    set.remove(7);
    assert.deepEqual([...set.ids()], [5]);
  });

  test('a prefetch of a hot expert does not displace other hot experts', () => {
    const set = new ResidencySet(1 * EXPERT_BYTES, createPolicy('static', { profile: PROFILE, capacityExperts: 2 }));
    set.prefetch(6, EXPERT_BYTES, new Set());
    assert.deepEqual(set.prefetch(5, EXPERT_BYTES, new Set()), { kept: false, evicted: [] });
  });

  test('prefers evicting a cold resident over a hot one', () => {
    const set = new ResidencySet(2 * EXPERT_BYTES, createPolicy('static', { profile: PROFILE, capacityExperts: 2 }));
    set.prefetch(5, EXPERT_BYTES, new Set());
    set.demand(8, EXPERT_BYTES, new Set([8])); // transient, still resident until removed
    assert.deepEqual(set.prefetch(6, EXPERT_BYTES, new Set()), { kept: true, evicted: [8] });
  });
});

describe('none and all', () => {
  test('none never keeps a prefetch', () => {
    const set = new ResidencySet(4 * EXPERT_BYTES, createPolicy('none', { capacityExperts: 4 }));
    assert.deepEqual(set.prefetch(1, EXPERT_BYTES, new Set()), { kept: false, evicted: [] });
    assert.deepEqual(use(set, 1), { hit: false, transient: true, evicted: [] });
    assert.deepEqual([...set.ids()], []);
  });

  test('all keeps every expert it is given room for', () => {
    const set = new ResidencySet(3 * EXPERT_BYTES, createPolicy('all', { capacityExperts: 3 }));
    for (const id of [1, 2, 3]) assert.equal(use(set, id).transient, false);
    for (const id of [1, 2, 3]) assert.equal(use(set, id).hit, true);
  });
});

/**
 * Batched decoding in miniature: three layers of two experts, every expert of a layer used at every
 * visit (a full batch), a budget of four. Each visit needs its two experts busy, so two others can stay.
 */
function cyclicVisits(set: ResidencySet, visits: number, predict = false): number {
  let hits = 0;
  for (let v = 0; v < visits; v++) {
    const layer = v % 3;
    const used = [layer * 8, layer * 8 + 1];
    const busy = new Set(used);
    const transient: ExpertId[] = [];
    for (const id of used) {
      const r = set.demand(id, EXPERT_BYTES, busy);
      if (r.hit) hits++;
      if (r.transient) transient.push(id);
    }
    const next = ((layer + 1) % 3) * 8;
    if (predict) set.policy.onPredicted?.([next, next + 1]);
    for (const id of transient) set.remove(id);
  }
  return hits;
}

const CYCLE_LAYOUT: ExpertLayout = { numExperts: 8, sparseLayers: [0, 1, 2] };

describe('next-use', () => {
  const nextUse = (capacity: number) => new ResidencySet(capacity * EXPERT_BYTES, createPolicy('next-use', { capacityExperts: capacity, layout: CYCLE_LAYOUT }));

  test('keeps a stable set where LRU evicts exactly the layer that comes next', () => {
    const lru = new ResidencySet(4 * EXPERT_BYTES, createPolicy('lru', { capacityExperts: 4 }));
    assert.equal(cyclicVisits(lru, 300), 0, 'LRU thrashes on a cycle larger than its budget');
    // Belady on this cycle: 2 of the 6 experts stay, a hit on 2 of every 6 uses.
    const hits = cyclicVisits(nextUse(4), 300);
    assert.ok(hits >= 0.3 * 600, `next-use hit ${hits} of 600 uses`);
  });

  // The rest calls the policy directly: onAccess in forward order, then the question.
  const policyAfter = (capacity: number, accesses: readonly ExpertId[]): CachePolicy => {
    const p = createPolicy('next-use', { capacityExperts: capacity, layout: CYCLE_LAYOUT });
    for (const id of accesses) p.onAccess(id);
    return p;
  };
  const cycles = (n: number, ids: readonly ExpertId[]) => Array.from({ length: n }, () => ids).flat();

  test('never evicts an expert the lookahead predicts while another candidate exists', () => {
    // 9 (layer 1) used once, then 20 passes over 16, 0 and 8... ending at layer 0.
    const accesses = [9, ...cycles(20, [8, 16, 0])];
    const candidates = new Set([0, 8, 9, 16]);
    assert.equal(policyAfter(4, accesses).victim(candidates, 1, true), 9, 'the rarely used expert is expected last');
    const p = policyAfter(4, accesses);
    p.onPredicted?.([9]); // the lookahead, computing layer 0, predicts 9 for layer 1
    // Next furthest: 0, whose layer (in progress) comes round after 16's and 8's.
    assert.equal(p.victim(candidates, 1, true), 0);
    // Only predicted candidates left: the policy still names one when forced.
    assert.equal(p.victim(new Set([9]), 1, true), 9);
  });

  test('bypasses an expert whose next use is expected after every resident one when full', () => {
    const p = policyAfter(2, cycles(20, [0, 8, 16]));
    assert.equal(p.admit(20), true, 'room left: kept');
    p.onInsert(0);
    p.onInsert(8);
    p.onAccess(17); // at layer 2, a first use: a small share of visits
    assert.equal(p.admit(17), false, 'full, and expected after 0 and 8');
    p.onPredicted?.([1]);
    assert.equal(p.admit(1), true, 'predicted for the next layer: kept');
  });

  test('a prefetch is kept only when it displaces an expert needed later', () => {
    const p = policyAfter(3, cycles(20, [0, 8, 16])); // at layer 2
    p.onPredicted?.([1]); // for layer 0, next
    assert.equal(p.victim(new Set([0, 8, 16]), 1, false), 16, 'the layer in progress is needed last');
    // An expert of layer 0 nobody predicted and rarely used is expected after all of them: not kept.
    p.onAccess(3);
    p.onAccess(16);
    assert.equal(p.victim(new Set([0, 8, 16]), 3, false), undefined);
  });
});

describe('lfu-decay', () => {
  const after = (name: 'lfu' | 'lfu-decay', accesses: readonly ExpertId[]): CachePolicy => {
    const p = createPolicy(name, { capacityExperts: 2, layout: CYCLE_LAYOUT });
    for (const id of accesses) p.onAccess(id);
    return p;
  };

  test('forgets an expert the batch stopped using, where lfu keeps it for its old count', () => {
    // Expert 0 at 40 visits of layer 0, then 1 and 2 at the next 30.
    const accesses = [...Array.from({ length: 40 }, () => 0), ...Array.from({ length: 30 }, () => [1, 2]).flat()];
    assert.equal(after('lfu', accesses).victim(new Set([0, 1]), 2, true), 1, 'lfu: 1 has 30 uses, 0 has 40');
    assert.equal(after('lfu-decay', accesses).victim(new Set([0, 1]), 2, true), 0, 'lfu-decay: 0 sat out the last 30 visits');
  });

  test('among experts used at every visit, evicts the layer that comes round last', () => {
    const accesses = Array.from({ length: 10 }, () => [0, 8, 16]).flat();
    // At layer 2: 0 comes next, 8 after it, and 16 (of the layer in progress) last.
    assert.equal(after('lfu-decay', accesses).victim(new Set([0, 8, 16]), 17, true), 16);
    assert.equal(after('lfu', accesses).victim(new Set([0, 8, 16]), 17, true), 0, 'lfu (ties to least recent) evicts the one needed next');
  });
});
