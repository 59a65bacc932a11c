// How trace lines turn into expert-cache accesses and prefetches. The one place these decisions live,
// so the simulator and Belady's optimum replay exactly the access sequence the device cache sees.
//
// The device cache is used once per sparse layer of a forward pass, and a pass computes a batch of
// requests (continuous batching): forward.ts routes the whole batch, acquires the union of the
// requests' experts (ascending, in groups that fit the budget) and prefetches the batch's lookahead,
// voted over every token of the batch. The trace has one line per request, so its lines are first
// grouped back into passes (forwardPasses); replaying them line by line counts an expert two requests
// share twice, and prefetches each request's lookahead instead of the batch's. A trace that records
// each line's pass and lookahead votes (trace-format.ts) gives both the passes and their prefetch order
// exactly; for older traces the passes are inferred and some orders estimated (predictedExact).
import { ExpertIds, type ExpertId } from '../expert-id.js';
import { sumVotes } from '../lookahead-votes.js';
import type { TraceHeader, TraceLine } from '../trace-format.js';
import type { Trace } from './read-trace.js';

/** One sparse layer of one forward pass: one acquire of the device cache, then its prefetches. */
export interface PassLayerAccesses {
  /** Distinct experts the pass's tokens use, ascending: the order the device cache acquires them in. */
  readonly used: readonly ExpertId[];
  /**
   * predicted[d - 1]: what the pass prefetches for the d-th sparse layer after this one, most-voted
   * first (ties: lower id): the batch's votes, its requests' summed, as forward.ts ranks them (batchPrediction).
   */
  readonly predicted: readonly (readonly ExpertId[])[];
  /**
   * predictedExact[d - 1]: whether the trace determines predicted[d - 1]'s order. Always, when the lines
   * record their lookahead votes. Older traces rank each request's lookahead without vote counts; the
   * counts are known when the line has one token (one vote each), when its experts number top-k (every
   * token voted for all of them) or tokens x top-k (one vote each), and a pass of one request needs
   * none. Otherwise the batch's order is estimated.
   */
  readonly predictedExact: readonly boolean[];
  /** The pass's trace lines at this layer, one per request (for prefetch recall). */
  readonly lines: readonly LineAccesses[];
}

export interface LineAccesses {
  /** Distinct experts the line's tokens use, ascending. */
  readonly used: readonly ExpertId[];
  /**
   * predicted[d - 1]: the experts the line's lookahead names for the d-th sparse layer after this one.
   * We count sparse layers, not model layers: a dense layer has no router, so nothing can be predicted
   * for it (for all-sparse models, e.g. Mixtral, this is the trace format's "layer + d").
   */
  readonly predicted: readonly (readonly ExpertId[])[];
  /** predictedVotes[d - 1][i]: the votes for predicted[d - 1][i]; undefined in traces without lookahead_votes. */
  readonly predictedVotes: readonly (readonly number[])[] | undefined;
  /** Tokens of the line's request in this step. */
  readonly tokens: number;
  /** (request, step, position among the sparse layers): which line a prediction is for. */
  readonly slot: string;
  /** Slots of the lines predicted[d - 1] is for; undefined past the last sparse layer. */
  readonly predictedSlots: readonly (string | undefined)[];
}

// Remembered per trace: the replay command simulates one trace under dozens of configurations.
const cache = new WeakMap<Trace, readonly PassLayerAccesses[]>();

/** The device cache's uses, in order: each sparse layer of each forward pass. */
export function traceAccesses(trace: Trace): readonly PassLayerAccesses[] {
  let accesses = cache.get(trace);
  if (!accesses) cache.set(trace, (accesses = computeAccesses(trace)));
  return accesses;
}

function computeAccesses(trace: Trace): PassLayerAccesses[] {
  const accessesOf = passAccesses(trace.header);
  return forwardPasses(trace.lines).flatMap(accessesOf);
}

/**
 * Turns one forward pass's trace lines, grouped by sparse layer in ascending order (as forwardPasses gives
 * them), into its uses of the device cache. The route study (route-study.ts) builds its re-batched passes
 * with it, so they are replayed exactly as the trace's own.
 */
export function passAccesses(header: TraceHeader): (pass: readonly (readonly TraceLine[])[]) => PassLayerAccesses[] {
  const ids = new ExpertIds(header.num_layers, header.num_experts);
  const sparseIndex = new Map(header.sparse_layers.map((layer, i) => [layer, i]));
  // A line's accesses depend on the line alone; the route study replays each line many times.
  const known = new WeakMap<TraceLine, LineAccesses>();
  const lineAccesses = (line: TraceLine): LineAccesses => {
    let accesses = known.get(line);
    if (!accesses) known.set(line, (accesses = computeLineAccesses(line)));
    return accesses;
  };
  const computeLineAccesses = (line: TraceLine): LineAccesses => {
    const here = sparseIndex.get(line.layer) ?? 0; // read-trace has checked that the layer is sparse
    const targets = line.lookahead.map((_, d) => header.sparse_layers[here + d + 1]);
    return {
      used: usedExperts(line, ids),
      predicted: line.lookahead.map((experts, d) => {
        const target = targets[d];
        return target === undefined ? [] : experts.map((expert) => ids.id({ layer: target, expert }));
      }),
      predictedVotes: line.lookahead_votes,
      tokens: line.experts.length,
      slot: slotKey(line, here),
      predictedSlots: targets.map((t, d) => (t === undefined ? undefined : slotKey(line, here + d + 1))),
    };
  };
  return (pass) =>
    pass.map((layerLines) => {
      const lines = layerLines.map(lineAccesses);
      const used = new Set(lines.flatMap((l) => l.used));
      const depths = Math.max(0, ...lines.map((l) => l.predicted.length));
      const predictions = Array.from({ length: depths }, (_, d) =>
        batchPrediction(lines.map((l) => ({ tokens: l.tokens, ranked: l.predicted[d] ?? [], votes: l.predictedVotes?.[d] })), header.top_k),
      );
      return {
        used: [...used].sort((a, b) => a - b),
        predicted: predictions.map((p) => p.ids),
        predictedExact: predictions.map((p) => p.exact),
        lines,
      };
    });
}

/**
 * The trace's lines grouped by forward pass, in the order the passes ran, and each pass's lines by
 * sparse layer (ascending, as the pass uses the cache). Lines that carry their pass number are grouped by
 * it, exactly; a trace where any line lacks one (written before passes were numbered) has its passes
 * inferred (inferredPasses).
 */
export function forwardPasses(lines: readonly TraceLine[]): TraceLine[][][] {
  if (!lines.every((l) => l.pass !== undefined)) return inferredPasses(lines);
  const passes = new Map<number, Map<number, TraceLine[]>>();
  for (const line of lines) {
    const pass = line.pass as number;
    let layers = passes.get(pass);
    if (!layers) passes.set(pass, (layers = new Map()));
    const layerLines = layers.get(line.layer);
    if (layerLines) layerLines.push(line);
    else layers.set(line.layer, [line]);
  }
  return [...passes.entries()].sort(([a], [b]) => a - b).map(([, layers]) => [...layers.entries()].sort(([a], [b]) => a - b).map(([, l]) => l));
}

/**
 * Passes of a trace without pass numbers: the writer gets a pass's routing when the pass commits, layer
 * by layer and request by request within a layer (forward.ts), and passes run one after another. So a
 * new pass starts where the layer goes down, or where a request appears again at the same layer. With
 * two or more sparse layers (every real MoE) that is exact; with one, requests that ran in consecutive
 * passes look batched.
 */
function inferredPasses(lines: readonly TraceLine[]): TraceLine[][][] {
  const passes: TraceLine[][][] = [];
  let pass: TraceLine[][] = [];
  for (const line of lines) {
    const layerLines = pass[pass.length - 1];
    const layer = layerLines?.[0]?.layer;
    if (layerLines && line.layer === layer && !layerLines.some((l) => l.request === line.request)) layerLines.push(line);
    else if (layer !== undefined && line.layer > layer) pass.push([line]);
    else passes.push((pass = [[line]]));
  }
  return passes;
}

/** One trace line's lookahead for one target layer, as batchPrediction reads it. */
export interface LinePrediction {
  /** Tokens of the line's request in this step: each voted for top-k experts. */
  readonly tokens: number;
  /** The experts it predicted, most voted first. */
  readonly ranked: readonly ExpertId[];
  /** The votes, aligned with `ranked`; undefined in traces without lookahead_votes. */
  readonly votes?: readonly number[] | undefined;
}

/**
 * A batch's lookahead for one target layer from its requests' lookaheads, as forward.ts ranks it: the
 * requests' votes summed (lookahead-votes.ts), most first, ties to the lower id. Where a line has no
 * votes recorded they are derived from its ranking when that determines them, and otherwise estimated,
 * decreasing linearly with rank (exact: false; see predictedExact).
 */
export function batchPrediction(lines: readonly LinePrediction[], topK: number): { ids: ExpertId[]; exact: boolean } {
  const only = lines.length === 1 ? lines[0] : undefined;
  if (only) return { ids: [...only.ranked], exact: true };
  let exact = true;
  const predictions = lines.map(({ tokens, ranked, votes }) => {
    if (votes) return { experts: ranked, votes };
    const n = ranked.length;
    const known = tokens === 1 || n === topK || n === tokens * topK;
    if (!known && n > 0) exact = false;
    // Known: each named expert has tokens x top-k / n votes. Estimated: the same total, spread 2(n - rank) / (n (n + 1)).
    return { experts: ranked, votes: ranked.map((_, rank) => (known ? (tokens * topK) / n : (tokens * topK * 2 * (n - rank)) / (n * (n + 1)))) };
  });
  return { ids: [...sumVotes(predictions).experts], exact };
}

function usedExperts(line: TraceLine, ids: ExpertIds): ExpertId[] {
  const used = new Set<ExpertId>();
  for (const token of line.experts) for (const expert of token) used.add(ids.id({ layer: line.layer, expert }));
  return [...used].sort((a, b) => a - b);
}

function slotKey(line: TraceLine, sparsePosition: number): string {
  return `${line.request}/${line.step}/${sparsePosition}`;
}

/**
 * The groups in which a pass's experts at one layer are held for use: at most `capacityExperts` at a
 * time, since experts in use count against the budget (the server leases a layer's experts in such
 * groups; in decode one group holds them all). Each group's experts are busy while it is held.
 */
export function useGroups(used: readonly ExpertId[], capacityExperts: number): (readonly ExpertId[])[] {
  const size = Math.max(1, capacityExperts);
  const groups: ExpertId[][] = [];
  for (let i = 0; i < used.length; i += size) groups.push(used.slice(i, i + size));
  return groups;
}

/** Bytes of every expert of every sparse layer: what "100%" of a budget means. */
export function allExpertBytes(header: TraceHeader): number {
  return header.sparse_layers.length * header.num_experts * header.expert_bytes;
}

/** Every expert of every sparse layer, ascending. */
export function allSparseExperts(header: TraceHeader): ExpertId[] {
  const ids = new ExpertIds(header.num_layers, header.num_experts);
  return [...header.sparse_layers].sort((a, b) => a - b).flatMap((layer) => Array.from({ length: header.num_experts }, (_, expert) => ids.id({ layer, expert })));
}

/**
 * Experts ordered from most to least accessed by the device cache in these passes (ties: lower id first).
 * Used as the 'static' policy's profile when none is given: an optimistic static, since it knows the future.
 */
export function usageProfile(accesses: readonly PassLayerAccesses[]): ExpertId[] {
  const uses = new Map<ExpertId, number>();
  for (const a of accesses) for (const id of a.used) uses.set(id, (uses.get(id) ?? 0) + 1);
  return [...uses.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map(([id]) => id);
}
