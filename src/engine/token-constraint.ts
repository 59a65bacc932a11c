// What the engine needs of a grammar that constrains a sequence's tokens (OpenAI's response_format): a mask
// on each step's logits and the sampled token fed back. The grammar engine behind it is the API's concern
// (json-constraint.ts); the engine only applies it, per sequence, inside batching.

/** One sequence's grammar state. */
export interface TokenConstraint {
  /** Sets to -Infinity, in place, every logit of a token the grammar does not allow next. */
  maskLogits(logits: Float32Array): void;
  /** Advances the grammar by the sampled token; throws if the token was not allowed. */
  accept(token: number): void;
  /** The grammar is complete: only a stop token may follow. */
  readonly terminated: boolean;
  dispose(): void;
}

/** A compiled grammar: one constraint per sequence (n > 1 makes several from one compile). */
export interface ConstraintSource {
  newConstraint(): TokenConstraint;
}
