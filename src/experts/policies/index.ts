import type { CachePolicy, PolicyOptions } from './cache-policy.js';
import { AllPolicy } from './all-policy.js';
import { LfuPolicy } from './lfu-policy.js';
import { LruPolicy } from './lru-policy.js';
import { NonePolicy } from './none-policy.js';
import { StaticPolicy } from './static-policy.js';
import { PolicyConfigError } from './policy-config-error.js';
import { LfuDecayPolicy } from './lfu-decay-policy.js';
import { NextUsePolicy } from './next-use-policy.js';

export type { CachePolicy, ExpertLayout, PolicyOptions } from './cache-policy.js';
export { PolicyConfigError } from './policy-config-error.js';

export const POLICY_NAMES = ['lru', 'lfu', 'lfu-decay', 'next-use', 'static', 'none', 'all'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/**
 * The policy of a budgeted cache unless one is named: next-use beats lru at every budget and concurrency
 * measured, with prefetching or without (README, "Batch-aware caching").
 */
export const DEFAULT_POLICY: PolicyName = 'next-use';

const POLICY_FACTORIES: Record<PolicyName, (o: PolicyOptions) => CachePolicy> = {
  lru: () => new LruPolicy(),
  lfu: () => new LfuPolicy(),
  'lfu-decay': (o) => new LfuDecayPolicy(o.layout),
  'next-use': (o) => new NextUsePolicy(o.layout, o.capacityExperts),
  static: (o) => {
    if (!o.profile) throw new PolicyConfigError("the 'static' policy needs a routing profile (--expert-profile FILE: a routing trace or training_report.json)");
    return new StaticPolicy(o.profile, o.capacityExperts);
  },
  none: () => new NonePolicy(),
  all: () => new AllPolicy(),
};

/** Policies that read the router lookahead (onPredicted), so the model computes it even without prefetching. */
export function usesLookahead(name: PolicyName): boolean {
  return name === 'next-use';
}

export function createPolicy(name: PolicyName, options: PolicyOptions): CachePolicy {
  return POLICY_FACTORIES[name](options);
}
