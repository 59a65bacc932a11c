// An expert-cache policy decides what stays resident. It is pure bookkeeping (no tensors, no I/O), so the
// server's device cache and the replay tool's simulator run the very same code.
//
// To add a policy: write one file in this folder exporting a class that implements CachePolicy, and add
// it to POLICY_FACTORIES in ./index.ts.
import type { ExpertId } from '../expert-id.js';

export interface CachePolicy {
  readonly name: string;
  /** Every use of an expert, resident or not, in the order the forward pass makes them. */
  onAccess(id: ExpertId): void;
  /** `id` became resident (after a miss or a prefetch). */
  onInsert(id: ExpertId): void;
  /** `id` stopped being resident. */
  onEvict(id: ExpertId): void;
  /** Whether an expert just loaded should stay resident after its use ('none' keeps nothing). */
  admit(id: ExpertId): boolean;
  /**
   * The resident expert to evict to make room for `incoming`, chosen among `candidates` (resident and
   * not in use). Undefined when the policy would rather not keep the newcomer than evict any of them;
   * when `forced` (the newcomer is needed now and must fit), the best victim regardless.
   */
  victim(candidates: ReadonlySet<ExpertId>, incoming: ExpertId, forced: boolean): ExpertId | undefined;
  /**
   * The router lookahead of the forward pass in progress, over all its sequences: experts predicted for
   * the coming sparse layers (most voted first), made while the pass computes the layer before them.
   * Called whether or not they are prefetched.
   */
  onPredicted?(ids: readonly ExpertId[]): void;
}

/** Which experts exist: ids are layer * numExperts + expert, for the layers in sparseLayers. */
export interface ExpertLayout {
  readonly numExperts: number;
  /** Model layers with routed experts, ascending: the order a forward pass visits them in. */
  readonly sparseLayers: readonly number[];
}

export interface PolicyOptions {
  /**
   * Experts ordered from most to least used (a routing profile), for 'static'; the prefix that fits the
   * budget is its hot set.
   */
  readonly profile?: readonly ExpertId[];
  /** How many experts fit the budget. */
  readonly capacityExperts: number;
  /** For the policies that reason about when a layer comes round again ('lfu-decay', 'next-use'). */
  readonly layout?: ExpertLayout;
}
