// What happens to a row of logits before the sampler draws from it (OpenAI's presence and frequency penalties)
// and what is reported about it afterwards (log-probabilities). Pure functions of the row and the tokens generated.
import type { Token } from '../tokenizer/token.js';
import { NonFiniteLogitsError, topTokens } from './sampler.js';

/** OpenAI's presence_penalty and frequency_penalty, each in [-2, 2]. */
export interface Penalties {
  readonly presence: number;
  readonly frequency: number;
}

export interface TokenLogprob {
  readonly token: Token;
  readonly logprob: number;
  /** The most likely tokens, best first; as many as the request's `logprobs`. */
  readonly top: readonly { readonly token: Token; readonly logprob: number }[];
}

export const MAX_PENALTY = 2;
export const MAX_TOP_LOGPROBS = 20;

export function validatePenalties(p: Penalties): void {
  for (const [name, value] of [['presence', p.presence], ['frequency', p.frequency]] as const) {
    if (!(Math.abs(value) <= MAX_PENALTY)) {
      throw new RangeError(`The ${name} penalty must be a number in [-${MAX_PENALTY}, ${MAX_PENALTY}], got ${value}.`);
    }
  }
}

export function validateTopLogprobs(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > MAX_TOP_LOGPROBS) {
    throw new RangeError(`logprobs must be an integer from 0 to ${MAX_TOP_LOGPROBS}, got ${n}.`);
  }
}

/**
 * logit[t] -= frequency * count[t] + presence * (count[t] > 0), as OpenAI documents it, where `counts` holds how
 * often each token occurs among the tokens this request has generated (not the prompt, as in OpenAI and vLLM).
 * Returns `logits` itself when nothing changes; otherwise a copy, since the forward pass may reuse its buffer.
 * Costs O(distinct generated tokens), not O(vocab), beyond the copy.
 */
export function applyPenalties(logits: Float32Array, counts: ReadonlyMap<number, number>, p: Penalties): Float32Array {
  if ((p.presence === 0 && p.frequency === 0) || counts.size === 0) return logits;
  const penalized = logits.slice();
  for (const [token, count] of counts) penalized[token]! -= p.frequency * count + p.presence;
  return penalized;
}

/**
 * The log-probability of `token` and of the `topN` most likely tokens under softmax(logits), in float64.
 * We report the distribution the model gives after penalties, before temperature, top-k and top-p: what the
 * model thinks of the text, whatever the sampling settings. vLLM's default "raw" logprobs are before penalties
 * too, and its "processed" ones after temperature and truncation; neither equals this.
 */
export function tokenLogprob(logits: Float32Array, token: Token, topN: number): TokenLogprob {
  const logSumExp = logSumExpOf(logits);
  const logprobOf = (t: number): number => logits[t]! - logSumExp;
  return {
    token,
    logprob: logprobOf(token),
    top: topTokens(logits, topN).map((t) => ({ token: t, logprob: logprobOf(t) })),
  };
}

// log(sum(exp(x))) with the max subtracted first, so large logits do not overflow and a row far below zero does
// not underflow to log(0).
function logSumExpOf(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const logSumExp = max + Math.log(sum);
  if (!Number.isFinite(logSumExp)) throw new NonFiniteLogitsError();
  return logSumExp;
}
