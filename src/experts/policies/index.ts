import type { CachePolicy, PolicyOptions } from './cache-policy.js';
import { AllPolicy } from './all-policy.js';
import { LfuPolicy } from './lfu-policy.js';
import { LruPolicy } from './lru-policy.js';
import { NonePolicy } from './none-policy.js';
import { StaticPolicy } from './static-policy.js';

export type { CachePolicy, PolicyOptions } from './cache-policy.js';

export const POLICY_NAMES = ['lru', 'lfu', 'static', 'none', 'all'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Thrown when a policy cannot be built from what it was given (e.g. static without a profile). */
export class PolicyConfigError extends Error {
  readonly code = 'policy_config';

  constructor(message: string) {
    super(message);
    this.name = 'PolicyConfigError';
  }
}

const POLICY_FACTORIES: Record<PolicyName, (o: PolicyOptions) => CachePolicy> = {
  lru: () => new LruPolicy(),
  lfu: () => new LfuPolicy(),
  static: (o) => {
    if (!o.profile) throw new PolicyConfigError("the 'static' policy needs a routing profile (--expert-profile FILE: a routing trace or training_report.json)");
    return new StaticPolicy(o.profile, o.capacityExperts);
  },
  none: () => new NonePolicy(),
  all: () => new AllPolicy(),
};

export function createPolicy(name: PolicyName, options: PolicyOptions): CachePolicy {
  return POLICY_FACTORIES[name](options);
}
