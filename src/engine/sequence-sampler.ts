// Chooses each token of one request from its logits: penalties, then the sampler, then the logprobs to report.
// The one place both the single-sequence loop and the batching engine turn a logits row into a token, so the two
// give the same tokens and logprobs.
import type { Token } from '../tokenizer/token.js';
import type { CompletionRequest } from './completion-state.js';
import { applyPenalties, tokenLogprob, validatePenalties, validateTopLogprobs, type Penalties, type TokenLogprob } from './logit-processing.js';
import { createRng, randomSeed, sampleToken, type Rng, type SamplingParams } from './sampler.js';

export interface ChosenToken {
  readonly token: Token;
  /** Present when the request asked for logprobs. */
  readonly logprob?: TokenLogprob;
}

export class SequenceSampler {
  private readonly sampling: SamplingParams;
  private readonly penalties: Penalties | undefined;
  /** How many top logprobs to report, or undefined for none at all. */
  readonly topLogprobs: number | undefined;
  private readonly rng: Rng;
  /** How often each token occurs among those generated so far, for the penalties. */
  private readonly counts = new Map<number, number>();

  /** Throws RangeError for penalties outside [-2, 2] or logprobs not an integer in 0..20. */
  constructor(req: Pick<CompletionRequest, 'sampling' | 'seed' | 'penalties' | 'logprobs'>) {
    if (req.penalties) validatePenalties(req.penalties);
    if (req.logprobs !== undefined) validateTopLogprobs(req.logprobs);
    this.sampling = req.sampling;
    this.penalties = req.penalties;
    this.topLogprobs = req.logprobs;
    this.rng = createRng(req.seed ?? randomSeed());
  }

  /** The next token from this step's logits; the row is not modified. */
  next(logits: Float32Array): ChosenToken {
    const processed = this.penalties ? applyPenalties(logits, this.counts, this.penalties) : logits;
    const token = sampleToken(processed, this.sampling, this.rng);
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    if (this.topLogprobs === undefined) return { token };
    return { token, logprob: tokenLogprob(processed, token, this.topLogprobs) };
  }
}
