// How a trace line turns into expert-cache accesses and prefetches. The one place these decisions live,
// so the simulator and Belady's optimum replay exactly the access sequence the device cache sees.
import { ExpertIds, type ExpertId } from '../expert-id.js';
import type { TraceHeader, TraceLine } from '../trace-format.js';
import type { Trace } from './read-trace.js';

export interface LineAccesses {
  /** Distinct experts the line's tokens use, ascending: the order the device cache accesses them in. */
  readonly used: readonly ExpertId[];
  /**
   * predicted[d - 1]: the experts the line's lookahead names for the d-th sparse layer after this one.
   * We count sparse layers, not model layers: a dense layer has no router, so nothing can be predicted
   * for it (for all-sparse models, e.g. Mixtral, this is the trace format's "layer + d").
   */
  readonly predicted: readonly (readonly ExpertId[])[];
  /** (request, step, position among the sparse layers): which line a prediction is for. */
  readonly slot: string;
  /** Slots of the lines predicted[d - 1] is for; undefined past the last sparse layer. */
  readonly predictedSlots: readonly (string | undefined)[];
}

// Remembered per trace: the replay command simulates one trace under dozens of configurations.
const cache = new WeakMap<Trace, readonly LineAccesses[]>();

export function traceAccesses(trace: Trace): readonly LineAccesses[] {
  let accesses = cache.get(trace);
  if (!accesses) cache.set(trace, (accesses = computeAccesses(trace)));
  return accesses;
}

function computeAccesses(trace: Trace): LineAccesses[] {
  const { header } = trace;
  const ids = new ExpertIds(header.num_layers, header.num_experts);
  const sparseIndex = new Map(header.sparse_layers.map((layer, i) => [layer, i]));
  return trace.lines.map((line) => {
    const here = sparseIndex.get(line.layer) ?? 0; // read-trace has checked that the layer is sparse
    const targets = line.lookahead.map((_, d) => header.sparse_layers[here + d + 1]);
    return {
      used: usedExperts(line, ids),
      predicted: line.lookahead.map((experts, d) => {
        const target = targets[d];
        return target === undefined ? [] : experts.map((expert) => ids.id({ layer: target, expert }));
      }),
      slot: slotKey(line, here),
      predictedSlots: targets.map((t, d) => (t === undefined ? undefined : slotKey(line, here + d + 1))),
    };
  });
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
 * The groups in which a line's experts are held for use: at most `capacityExperts` at a time, since
 * experts in use count against the budget (the server leases a layer's experts in such groups; in decode
 * one group holds them all). Each group's experts are busy while it is held.
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
 * Experts ordered from most to least accessed in these lines (ties: lower id first). Used as the
 * 'static' policy's profile when none is given: an optimistic static, since it knows the future.
 */
export function usageProfile(accesses: readonly LineAccesses[]): ExpertId[] {
  const uses = new Map<ExpertId, number>();
  for (const line of accesses) for (const id of line.used) uses.set(id, (uses.get(id) ?? 0) + 1);
  return [...uses.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map(([id]) => id);
}
