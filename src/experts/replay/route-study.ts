// The route study: what routing requests across N replicas by expert-cache or prefix affinity buys over
// round-robin, when each replica offloads experts and its warm experts are its most valuable state.
// Simulated, from a routing trace: no model runs.
//
// The model. Each of the trace's requests is its routing per step (the trace's lines, step by step); the
// study re-batches them. A closed loop of `clients` clients sends them in trace order (recycled when the
// trace runs out): each client sends its next request when its previous one has finished, and a router
// (request-routing.ts) picks a replica for it as it arrives. Time goes in ticks: in each tick every
// replica with work admits waiting requests in arrival order up to `maxSeqs` running, then runs one
// forward pass over its running requests (step 0, the prompt, for those just admitted; the next step for
// the others), and a request that has run its last step finishes. Each replica has its own device cache:
// a ReplayCache (replay-cache.ts, the server's ResidencySet and policy), fed each pass's union of
// experts per sparse layer exactly as simulate() feeds it the server's passes.
//
// Limits: ticks are not seconds (a pass of 8 sequences takes as long as a pass of 1, a miss costs
// nothing in time); routing is instantaneous and sees every replica's residency as it is; every request
// routes as it did in the recorded server, whatever it is batched with (true of routing itself: a token's
// experts depend on its own sequence only); recycled requests repeat their routing exactly.
import { createRng } from '../../engine/sampler.js';
import { ExpertIds, type ExpertId } from '../expert-id.js';
import type { TraceLine } from '../trace-format.js';
import type { Trace } from './read-trace.js';
import { ReplayCache, type ReplayCacheOptions, type ReplayCounts } from './replay-cache.js';
import { createRouter, type ReplicaView, type RoutedRequest, type RoutingRule } from './request-routing.js';
import { passAccesses, traceAccesses, usageProfile } from './trace-accesses.js';

export interface RouteStudyOptions extends Omit<ReplayCacheOptions, 'profile'> {
  readonly rule: RoutingRule;
  readonly replicas: number;
  /** Clients of the closed loop: requests in flight across all replicas. */
  readonly clients: number;
  /** Requests to run to completion; the trace's are recycled, in order, when it has fewer. */
  readonly requests: number;
  /**
   * Send the trace's requests in a random order drawn from this seed, a new order each time round,
   * instead of the trace's. A load test sends its prompts in turn, so in trace order round-robin over N
   * replicas gives each replica the same few prompts over and over: an affinity by accident.
   */
  readonly shuffleSeed?: number;
  /** Most requests a replica runs in one pass (the server's --max-seqs); the others wait, in arrival order. */
  readonly maxSeqs: number;
  /** The affinity rules' load guard (request-routing.ts). */
  readonly loadGuard: number;
  /** prefix-affinity's block size, in tokens. */
  readonly prefixBlockTokens: number;
  /**
   * Hears every pass a replica runs: its lines as a trace of that replica would record them (request: the
   * study's request number; pass: the replica's pass count). For tests.
   */
  readonly onPass?: (replica: number, lines: readonly TraceLine[]) => void;
}

export interface ReplicaOutcome {
  /** Requests routed to it. */
  readonly requests: number;
  readonly passes: number;
  readonly cache: ReplayCounts;
}

export interface RouteStudyResult {
  /** The replicas' cache counters, summed. */
  readonly cache: ReplayCounts;
  readonly replicas: readonly ReplicaOutcome[];
  /** Tokens the requests generated (one per step past the prompt's chunks, and one for the prompt). */
  readonly generatedTokens: number;
  /** Expert loads (misses and prefetches) x expert bytes / generated tokens. */
  readonly bytesMovedPerToken: number;
  /** Most requests routed to one replica / the mean: 1 is even. */
  readonly requestImbalance: number;
  /** Ticks from a request's arrival at its replica to its admission, averaged over requests. */
  readonly meanWaitTicks: number;
  /** Ticks until the last request finished: a makespan. */
  readonly ticks: number;
}

/** One request of a trace, as the study replays it. */
export interface TraceRequest extends RoutedRequest {
  /** Its number in the trace. */
  readonly request: number;
  /** steps[s]: its lines of its s-th step, one per sparse layer, ascending. */
  readonly steps: readonly (readonly TraceLine[])[];
  /** Leading steps that compute the prompt (more than one when it was computed in chunks). */
  readonly promptSteps: number;
  readonly generatedTokens: number;
}

// Remembered per trace: a study runs one trace under dozens of configurations.
const requestsCache = new WeakMap<Trace, readonly TraceRequest[]>();
const accessBuilders = new WeakMap<Trace, ReturnType<typeof passAccesses>>();

/** The trace's requests in order, each with its steps in order; requests without lines are not in it. */
export function traceRequests(trace: Trace): readonly TraceRequest[] {
  let requests = requestsCache.get(trace);
  if (!requests) requestsCache.set(trace, (requests = computeRequests(trace)));
  return requests;
}

function computeRequests(trace: Trace): TraceRequest[] {
  const ids = new ExpertIds(trace.header.num_layers, trace.header.num_experts);
  const byRequest = new Map<number, Map<number, TraceLine[]>>();
  for (const line of trace.lines) {
    let steps = byRequest.get(line.request);
    if (!steps) byRequest.set(line.request, (steps = new Map()));
    const lines = steps.get(line.step);
    if (lines) lines.push(line);
    else steps.set(line.step, [line]);
  }
  return [...byRequest.entries()]
    .sort(([a], [b]) => a - b)
    .map(([request, stepMap]) => {
      const steps = [...stepMap.entries()].sort(([a], [b]) => a - b).map(([, lines]) => [...lines].sort((a, b) => a.layer - b.layer));
      // A prompt computed in chunks is its leading multi-token steps; the last of them samples a token.
      let promptSteps = 1;
      steps.forEach((lines, s) => {
        if ((lines[0]?.experts.length ?? 0) > 1) promptSteps = Math.max(promptSteps, s + 1);
      });
      const promptLines = steps.slice(0, promptSteps).flat();
      const promptExperts = new Set<ExpertId>();
      for (const line of promptLines) for (const token of line.experts) for (const expert of token) promptExperts.add(ids.id({ layer: line.layer, expert }));
      return {
        request,
        promptTokens: steps.flat().find((l) => l.prompt_tokens !== undefined)?.prompt_tokens,
        promptExperts: [...promptExperts].sort((a, b) => a - b),
        promptLines,
        steps,
        promptSteps,
        generatedTokens: steps.length - promptSteps + 1,
      };
    });
}

interface Queued {
  /** The study's request number, in order of sending. */
  readonly id: number;
  readonly source: TraceRequest;
  readonly arrivedTick: number;
}

interface Running extends Queued {
  /** Its next step. */
  step: number;
}

interface Replica {
  readonly index: number;
  readonly cache: ReplayCache;
  readonly waiting: Queued[];
  running: Running[];
  requests: number;
  passes: number;
}

export function simulateRoutes(trace: Trace, o: RouteStudyOptions): RouteStudyResult {
  const requests = traceRequests(trace);
  if (requests.length === 0) throw new RangeError(`${trace.source}: the trace has no requests`);
  for (const [name, value] of [['replicas', o.replicas], ['clients', o.clients], ['requests', o.requests], ['maxSeqs', o.maxSeqs], ['prefixBlockTokens', o.prefixBlockTokens]] as const) {
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
  }
  const router = createRouter(o.rule, { header: trace.header, loadGuard: o.loadGuard, prefixBlockTokens: o.prefixBlockTokens });
  let accessesOf = accessBuilders.get(trace);
  if (!accessesOf) accessBuilders.set(trace, (accessesOf = passAccesses(trace.header)));
  const replicas: Replica[] = Array.from({ length: o.replicas }, (_, index) => ({
    index,
    // 'static' keeps the trace's most used experts, as simulate() gives it (an optimistic static).
    cache: new ReplayCache(trace.header, { ...o, profile: o.policy === 'static' ? usageProfile(traceAccesses(trace)) : undefined }),
    waiting: [],
    running: [],
    requests: 0,
    passes: 0,
  }));
  const views: ReplicaView[] = replicas.map((r) => ({
    index: r.index,
    get queue() {
      return r.running.length + r.waiting.length;
    },
    isResident: (id) => r.cache.has(id),
  }));

  let sent = 0;
  let finished = 0;
  let generatedTokens = 0;
  let waitTicks = 0;
  const order = requestOrder(requests, o.shuffleSeed);
  const send = (): TraceRequest | undefined => (sent < o.requests ? order(sent++) : undefined);
  // Requests sent and not yet routed: the clients' first, then each finished request's successor.
  let arriving: { id: number; source: TraceRequest }[] = [];
  for (let c = 0; c < o.clients; c++) {
    const id = sent;
    const source = send();
    if (source) arriving.push({ id, source });
  }

  let tick = 0;
  for (; finished < o.requests; tick++) {
    for (const { id, source } of arriving) {
      const replica = replicas[router.route(source, views)] as Replica;
      replica.waiting.push({ id, source, arrivedTick: tick });
      replica.requests++;
    }
    arriving = [];
    for (const replica of replicas) {
      while (replica.running.length < o.maxSeqs && replica.waiting.length > 0) {
        const next = replica.waiting.shift() as Queued;
        waitTicks += tick - next.arrivedTick;
        replica.running.push({ ...next, step: 0 });
      }
      if (replica.running.length === 0) continue;
      runPass(replica, accessesOf, o.onPass);
      replica.running = replica.running.filter((r) => {
        r.step++;
        if (r.step === r.source.promptSteps) router.onPromptComputed?.(r.source);
        if (r.step < r.source.steps.length) return true;
        finished++;
        generatedTokens += r.source.generatedTokens;
        const id = sent;
        const source = send();
        if (source) arriving.push({ id, source });
        return false;
      });
    }
  }

  const outcomes = replicas.map((r) => ({ requests: r.requests, passes: r.passes, cache: r.cache.counts() }));
  const cache = sumCounts(outcomes.map((r) => r.cache));
  const meanRequests = o.requests / o.replicas;
  return {
    cache,
    replicas: outcomes,
    generatedTokens,
    bytesMovedPerToken: generatedTokens === 0 ? 0 : ((cache.misses + cache.prefetchIssued) * trace.header.expert_bytes) / generatedTokens,
    requestImbalance: Math.max(...outcomes.map((r) => r.requests)) / meanRequests,
    meanWaitTicks: waitTicks / o.requests,
    ticks: tick,
  };
}

/** The k-th request sent: the trace's in order, or shuffled anew each time round the trace. */
function requestOrder(requests: readonly TraceRequest[], shuffleSeed: number | undefined): (k: number) => TraceRequest {
  if (shuffleSeed === undefined) return (k) => requests[k % requests.length] as TraceRequest;
  const rng = createRng(shuffleSeed);
  let round: TraceRequest[] = [];
  return (k) => {
    const i = k % requests.length;
    if (i === 0) {
      // Fisher-Yates: the rounds' orders are drawn one after another from the one generator.
      round = [...requests];
      for (let j = round.length - 1; j > 0; j--) {
        const r = Math.floor(rng.next() * (j + 1));
        [round[j], round[r]] = [round[r] as TraceRequest, round[j] as TraceRequest];
      }
    }
    return round[i] as TraceRequest;
  };
}

/** One forward pass of `replica` over its running requests: their current steps' lines, by sparse layer. */
function runPass(replica: Replica, accessesOf: ReturnType<typeof passAccesses>, onPass: RouteStudyOptions['onPass']): void {
  const byLayer = new Map<number, TraceLine[]>();
  for (const r of replica.running) {
    for (const line of r.source.steps[r.step] ?? []) {
      const lines = byLayer.get(line.layer);
      if (lines) lines.push(line);
      else byLayer.set(line.layer, [line]);
    }
  }
  const pass = [...byLayer.entries()].sort(([a], [b]) => a - b).map(([, lines]) => lines);
  for (const layer of accessesOf(pass)) replica.cache.use(layer);
  if (onPass) {
    const number = replica.passes;
    onPass(
      replica.index,
      replica.running.flatMap((r) => (r.source.steps[r.step] ?? []).map((line) => ({ ...line, request: r.id, pass: number }))),
    );
  }
  replica.passes++;
}

function sumCounts(all: readonly ReplayCounts[]): ReplayCounts {
  const sum = (f: (c: ReplayCounts) => number) => all.reduce((s, c) => s + f(c), 0);
  const accesses = sum((c) => c.accesses);
  const hits = sum((c) => c.hits);
  return {
    accesses,
    hits,
    misses: sum((c) => c.misses),
    hitRatio: accesses === 0 ? 0 : hits / accesses,
    evictions: sum((c) => c.evictions),
    preloaded: sum((c) => c.preloaded),
    prefetchIssued: sum((c) => c.prefetchIssued),
    prefetchUsed: sum((c) => c.prefetchUsed),
    prefetchWasted: sum((c) => c.prefetchWasted),
    estimatedPrefetches: sum((c) => c.estimatedPrefetches),
  };
}
