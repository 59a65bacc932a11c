// How a cache starts, for a policy and a budget: its effective budget, its policy object, and the
// experts loaded before serving. The server (createExpertStore) and the replay simulator both start
// from here, so they cannot drift apart.
import type { ExpertId } from './expert-id.js';
import { createPolicy, type CachePolicy, type ExpertLayout, type PolicyName } from './policies/index.js';

export interface CachePlanInput {
  readonly policy: PolicyName;
  readonly budgetBytes: number;
  readonly expertBytes: number;
  readonly topK: number;
  /** Every routed expert of the model (of its sparse layers). */
  readonly allExperts: readonly ExpertId[];
  /** Experts most used first ('static' only). */
  readonly profile?: readonly ExpertId[];
  /** Which layers have experts, for the policies that follow the forward pass's cycle. */
  readonly layout: ExpertLayout;
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
  const capacityExperts = i.policy === 'static' ? hotCapacity : Math.floor(budgetBytes / i.expertBytes);
  const policy = createPolicy(i.policy, { profile: i.profile, capacityExperts, layout: i.layout });
  const preload = i.policy === 'all' ? i.allExperts : i.policy === 'static' ? (i.profile ?? []).slice(0, hotCapacity) : [];
  return { budgetBytes, policy, preload };
}

/**
 * How many of a layer's predicted experts a prefetch loads, most-voted first: the layer's share of the
 * budget, but at least two tokens' top-k. A batch of sequences (or a prompt chunk) predicts many
 * experts per layer, and prefetching all of them evicts experts other layers need before the predicted
 * ones are used: tiny-moe, 25% budget, 16 sequences, lru: 1,167 of 4,480 prefetches wasted unlimited.
 * A single decoding sequence predicts top-k, which this leaves alone. Replayed on a tiny-moe trace
 * (lru @ depth 1, 10% / 25% budget): share only 15.8% / 60.5%; at least top-k 60.0% / 60.5%; at
 * least 2 top-k 60.0% / 61.0%; unlimited 59.9% / 61.1%.
 */
export function prefetchLimit(capacityExperts: number, sparseLayers: number, topK: number): number {
  return Math.max(2 * topK, Math.floor(capacityExperts / Math.max(1, sparseLayers)));
}
