// How a cache starts, for a policy and a budget: its effective budget, its policy object, and the
// experts loaded before serving. The server (createExpertStore) and the replay simulator both start
// from here, so they cannot drift apart.
import type { ExpertId } from './expert-id.js';
import { createPolicy, type CachePolicy, type PolicyName } from './policies/index.js';

export interface CachePlanInput {
  readonly policy: PolicyName;
  readonly budgetBytes: number;
  readonly expertBytes: number;
  readonly topK: number;
  /** Every routed expert of the model (of its sparse layers). */
  readonly allExperts: readonly ExpertId[];
  /** Experts most used first ('static' only). */
  readonly profile?: readonly ExpertId[];
}

export interface CachePlan {
  readonly budgetBytes: number;
  readonly policy: CachePolicy;
  /** Loaded before serving, in order, while they fit. */
  readonly preload: readonly ExpertId[];
}

export function planCache(i: CachePlanInput): CachePlan {
  // 'all' is the upper bound: whatever budget was asked for, every expert is resident.
  const budgetBytes = i.policy === 'all' ? i.allExperts.length * i.expertBytes : i.budgetBytes;
  // 'static' keeps room beside its hot set for one step's experts, which pass through the budget too.
  const hotCapacity = Math.max(0, Math.floor(budgetBytes / i.expertBytes) - i.topK);
  const policy = createPolicy(i.policy, { profile: i.profile, capacityExperts: hotCapacity });
  const preload = i.policy === 'all' ? i.allExperts : i.policy === 'static' ? (i.profile ?? []).slice(0, hotCapacity) : [];
  return { budgetBytes, policy, preload };
}

/**
 * How many of a layer's predicted experts a prefetch loads, most-voted first: that layer's share of the
 * budget. Prefetching more (a batch of sequences predicts many experts per layer) evicts experts other
 * layers need before the predicted ones are used; measured on tiny-moe at 25% with 16 sequences, about
 * a quarter of unlimited prefetches were wasted. A single sequence predicts top-k experts, usually
 * within the share.
 */
export function prefetchLimit(capacityExperts: number, sparseLayers: number): number {
  return Math.max(1, Math.floor(capacityExperts / Math.max(1, sparseLayers)));
}
