// Chooses each token of one sequence from its logits: logit bias, penalties, the grammar's mask, then the
// sampler, then the logprobs to report. The one place a logits row becomes a token.
import type { Token } from '../tokenizer/token.js';
import type { CompletionRequest } from './completion-state.js';
import { applyPenalties, tokenLogprob, validatePenalties, validateTopLogprobs, type Penalties, type TokenLogprob } from './logit-processing.js';
import { createRng, randomSeed, sampleToken, type Rng, type SamplingParams } from './sampler.js';
import type { TokenConstraint } from './token-constraint.js';

export interface ChosenToken {
  readonly token: Token;
  /** Present when the request asked for logprobs. */
  readonly logprob?: TokenLogprob;
}

export class SequenceSampler {
  private readonly sampling: SamplingParams;
  private readonly penalties: Penalties | undefined;
  private readonly logitBias: ReadonlyMap<number, number> | undefined;
  /** How many top logprobs to report, or undefined for none at all. */
  readonly topLogprobs: number | undefined;
  private readonly rng: Rng;
  /** How often each token occurs among those generated so far, for the penalties. */
  private readonly counts = new Map<number, number>();

  /** Throws RangeError for penalties outside [-2, 2] or logprobs not an integer in 0..20. */
  constructor(
    req: Pick<CompletionRequest, 'sampling' | 'seed' | 'penalties' | 'logprobs' | 'logitBias'>,
    /** This sequence's grammar state, if its tokens are constrained; the sampler disposes of it. */
    private readonly constraint?: TokenConstraint,
  ) {
    if (req.penalties) validatePenalties(req.penalties);
    if (req.logprobs !== undefined) validateTopLogprobs(req.logprobs);
    this.sampling = req.sampling;
    this.penalties = req.penalties;
    this.logitBias = req.logitBias?.size ? req.logitBias : undefined;
    this.topLogprobs = req.logprobs;
    this.rng = createRng(req.seed ?? randomSeed());
  }

  /** The next token from this step's logits; the row is not modified. */
  next(logits: Float32Array): ChosenToken {
    let processed = logits;
    if (this.logitBias) {
      // OpenAI adds the bias before anything else: penalties and the grammar act on the biased logits.
      processed = logits.slice();
      for (const [t, bias] of this.logitBias) processed[t]! += bias;
    }
    if (this.penalties) processed = applyPenalties(processed, this.counts, this.penalties);
    if (this.constraint) {
      if (processed === logits) processed = logits.slice();
      this.constraint.maskLogits(processed);
    }
    const token = sampleToken(processed, this.sampling, this.rng);
    this.constraint?.accept(token);
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    if (this.topLogprobs === undefined) return { token };
    return { token, logprob: tokenLogprob(processed, token, this.topLogprobs) };
  }

  dispose(): void {
    this.constraint?.dispose();
  }
}
