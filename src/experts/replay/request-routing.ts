// How a load balancer in front of several moe-serve replicas picks one for a request: the rules the
// route study (route-study.ts) compares. Pure: a rule sees what a router could be told (each replica's
// queue, and for the affinity rules what its expert cache holds), never the simulation itself.
//
// The affinity rules follow the Gateway API inference extension's endpoint picker: score the replicas,
// but only those whose queue is at most `loadGuard` longer than the shortest (so that affinity cannot
// pile every request on one replica); the best score wins, ties (and a score of 0 everywhere) go to the
// shortest queue, then to the lowest index.
import { createHash } from 'node:crypto';
import { ExpertAffinity } from '../../engine/expert-affinity.js';
import { ExpertIds, type ExpertId } from '../expert-id.js';
import type { TraceHeader, TraceLine } from '../trace-format.js';

export const ROUTING_RULES = ['round-robin', 'least-queue', 'prefix-affinity', 'expert-affinity', 'expert-affinity-table'] as const;
export type RoutingRule = (typeof ROUTING_RULES)[number];

/** The rules that need the prompts' token ids (the trace's prompt_tokens). */
export const PROMPT_RULES: ReadonlySet<RoutingRule> = new Set(['prefix-affinity', 'expert-affinity-table']);

/** What a router knows of a replica when it routes a request. */
export interface ReplicaView {
  readonly index: number;
  /** Requests running plus waiting there. */
  readonly queue: number;
  /** Whether its expert cache holds `id` now (what a per-replica residency digest would tell). */
  isResident(id: ExpertId): boolean;
}

/** What a router knows of a request, or (promptExperts) what an oracle would. */
export interface RoutedRequest {
  /** The prompt's token ids; undefined when the trace did not record them. */
  readonly promptTokens: readonly number[] | undefined;
  /** Distinct experts the prompt's computation was routed to, ascending: known only after running it (the oracle). */
  readonly promptExperts: readonly ExpertId[];
  /** The prompt's trace lines (a line per sparse layer of each prompt step, in order): what a replica reports once it has computed it. */
  readonly promptLines: readonly TraceLine[];
}

export interface RequestRouter {
  /** The index of the replica to send `request` to. */
  route(request: RoutedRequest, replicas: readonly ReplicaView[]): number;
  /** Hears that a replica has computed `request`'s prompt (the routing it reported). */
  onPromptComputed?(request: RoutedRequest): void;
}

export interface RouterOptions {
  readonly header: TraceHeader;
  /** The affinity rules consider only replicas whose queue exceeds the shortest by at most this. */
  readonly loadGuard: number;
  /** prefix-affinity: tokens per hashed block; a prompt's last partial block is not hashed. */
  readonly prefixBlockTokens: number;
}

export function createRouter(rule: RoutingRule, o: RouterOptions): RequestRouter {
  switch (rule) {
    case 'round-robin':
      return roundRobin();
    case 'least-queue':
      return { route: (_, replicas) => leastQueue(replicas) };
    case 'prefix-affinity':
      return prefixAffinity(o);
    case 'expert-affinity':
      return { route: (request, replicas) => guardedBest(replicas, o.loadGuard, (r) => residentCount(request.promptExperts, r)) };
    case 'expert-affinity-table':
      return expertAffinityTable(o);
  }
}

/** Each replica in turn, whatever their queues. */
function roundRobin(): RequestRouter {
  let next = 0;
  return { route: (_, replicas) => next++ % replicas.length };
}

/** The shortest queue; ties to the lowest index. */
export function leastQueue(replicas: readonly ReplicaView[]): number {
  return guardedBest(replicas, 0, () => 0);
}

/**
 * Among the replicas whose queue is at most `loadGuard` over the shortest, the highest score; ties to
 * the shorter queue, then the lower index.
 */
function guardedBest(replicas: readonly ReplicaView[], loadGuard: number, score: (r: ReplicaView) => number): number {
  const shortest = Math.min(...replicas.map((r) => r.queue));
  let best: { index: number; score: number; queue: number } | undefined;
  for (const r of replicas) {
    if (r.queue > shortest + loadGuard) continue;
    const s = score(r);
    if (!best || s > best.score || (s === best.score && r.queue < best.queue)) best = { index: r.index, score: s, queue: r.queue };
  }
  return best?.index ?? 0;
}

function residentCount(ids: readonly ExpertId[], replica: ReplicaView): number {
  let n = 0;
  for (const id of ids) if (replica.isResident(id)) n++;
  return n;
}

/**
 * The endpoint picker's prefix-cache scorer: the prompt is cut into blocks of `prefixBlockTokens` token
 * ids, each block's key chained to the keys before it (one key names a whole prefix, as in
 * src/engine/prefix-cache.ts); the router remembers which blocks it sent to which replica, and a
 * request's score at a replica is how many of its leading blocks were sent there. Remembered without a
 * bound (the picker keeps an LRU per replica, far larger than these traces need).
 */
function prefixAffinity(o: RouterOptions): RequestRouter {
  const sent = new Map<number, Set<string>>();
  const keysOf = new WeakMap<RoutedRequest, readonly string[]>();
  const keys = (request: RoutedRequest) => {
    let k = keysOf.get(request);
    if (!k) keysOf.set(request, (k = prefixBlockKeys(request.promptTokens ?? [], o.prefixBlockTokens)));
    return k;
  };
  return {
    route(request, replicas) {
      const blocks = keys(request);
      const matched = (r: ReplicaView) => {
        const known = sent.get(r.index);
        let n = 0;
        while (n < blocks.length && known?.has(blocks[n] as string)) n++;
        return n;
      };
      const chosen = guardedBest(replicas, o.loadGuard, matched);
      let known = sent.get(chosen);
      if (!known) sent.set(chosen, (known = new Set()));
      for (const b of blocks) known.add(b);
      return chosen;
    },
  };
}

/** The keys of a prompt's whole blocks, each a hash of its tokens and the key before it. */
export function prefixBlockKeys(tokens: readonly number[], blockTokens: number): string[] {
  const keys: string[] = [];
  let parent = '';
  for (let start = 0; start + blockTokens <= tokens.length; start += blockTokens) {
    parent = createHash('sha256').update(parent).update(new Int32Array(tokens.slice(start, start + blockTokens))).digest('base64');
    keys.push(parent);
  }
  return keys;
}

/**
 * What a router could do without running the model: predict a prompt's experts from its token ids with
 * the engine's expert-affinity table (src/engine/expert-affinity.ts: each token id's last routing, learned
 * here from the prompts the replicas have computed and reported) and score a replica by how many of the
 * predicted experts it holds.
 */
function expertAffinityTable(o: RouterOptions): RequestRouter {
  const { header } = o;
  const sparseLayers = header.sparse_layers;
  const table = new ExpertAffinity({
    numLayers: header.num_layers,
    numExperts: header.num_experts,
    topK: header.top_k,
    sparseLayers: Array.from({ length: header.num_layers }, (_, layer) => sparseLayers.includes(layer)),
  });
  const ids = new ExpertIds(header.num_layers, header.num_experts);
  // The table's layers are the sparse layers in ascending order.
  const ascending = [...sparseLayers].sort((a, b) => a - b);
  return {
    route(request, replicas) {
      const predicted = request.promptTokens === undefined ? [] : table.predict(request.promptTokens).experts;
      const predictedIds = predicted.flatMap((experts, s) => experts.map((expert) => ids.id({ layer: ascending[s] as number, expert })));
      return guardedBest(replicas, o.loadGuard, (r) => residentCount(predictedIds, r));
    },
    onPromptComputed(request) {
      const tokens = request.promptTokens;
      if (tokens === undefined) return;
      // A prompt computed in chunks has a line per chunk and layer, in order: their rows, one after another.
      const rowsByLayer = new Map<number, number[][]>();
      for (const line of request.promptLines) rowsByLayer.set(line.layer, [...(rowsByLayer.get(line.layer) ?? []), ...line.experts]);
      for (const [layer, rows] of rowsByLayer) {
        // Fewer rows than the prompt's tokens (a prompt partly found in a prefix cache) do not say which token went where.
        if (rows.length !== tokens.length) continue;
        const experts = Int32Array.from(rows.flat());
        table.onStepRouting(layer, tokens, { tokens: tokens.length, topK: header.top_k, experts, weights: new Float32Array(experts.length) });
      }
    },
  };
}
