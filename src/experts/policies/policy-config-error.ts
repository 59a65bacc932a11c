/** Thrown when a policy cannot be built from what it was given (e.g. static without a profile). */
export class PolicyConfigError extends Error {
  readonly code = 'policy_config';

  constructor(message: string) {
    super(message);
    this.name = 'PolicyConfigError';
  }
}
