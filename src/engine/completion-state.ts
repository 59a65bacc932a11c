// What happens to each sampled token of one sequence: end-of-sequence, UTF-8-safe detokenization and stop
// strings. The token limit is the scheduler's (it ends the request with 'length').
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { Token } from '../tokenizer/token.js';
import type { RoutingObserver } from './forward.js';
import type { Penalties, TokenLogprob } from './logit-processing.js';
import type { SamplingParams } from './sampler.js';
import { StopStringMatcher } from './stop-strings.js';
import type { ConstraintSource } from './token-constraint.js';

export type FinishReason = 'stop' | 'length' | 'abort';

/** One completion to generate: the prompt, how to sample, and when to stop. */
export interface CompletionRequest {
  readonly promptIds: readonly Token[];
  /** Tokens to generate at most (0: compute the prompt only, to score it with promptLogprobs). */
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  /** Seed of this request's own random stream: the same seed gives the same tokens, whatever else runs. */
  readonly seed?: number;
  /** OpenAI's presence and frequency penalties, each in [-2, 2], counted over the generated tokens only. */
  readonly penalties?: Penalties;
  /** When set (0..20), every token carries its logprob and this many top alternatives. */
  readonly logprobs?: number;
  /** When set (0..20), the result carries every prompt token's logprob (the first null) with this many alternatives. */
  readonly promptLogprobs?: number;
  /** Added to a token's logit before penalties and sampling (OpenAI's logit_bias, each in [-100, 100]). */
  readonly logitBias?: ReadonlyMap<number, number>;
  /** A grammar the sampled tokens must follow (response_format); each sequence gets its own state. */
  readonly constraint?: ConstraintSource;
  readonly stop?: readonly string[];
  /** Generate past end-of-sequence tokens (benchmarks: every run decodes exactly maxTokens). */
  readonly ignoreEos?: boolean;
  /** Aborting removes the request at the next step and frees its KV cache. */
  readonly signal?: AbortSignal;
  readonly observer?: RoutingObserver;
  /** Who sent it (a peer address, say), for the scheduler's per-client limits. */
  readonly client?: string;
}

export interface GeneratedChunk {
  /** The sampled token; null for text released when the sequence ends, and for promptLogprobs. */
  readonly tokenId: Token | null;
  /** Text finalized by this token (may be empty). */
  readonly text: string;
  /** With the token, when the request asked for logprobs. */
  readonly logprob?: TokenLogprob;
  /** Once the prompt is computed, when the request asked for promptLogprobs: one per prompt token, the first null. */
  readonly promptLogprobs?: readonly (TokenLogprob | null)[];
}

/** What a finished sequence produced; the results of generate() and of the batch engine build on it. */
export interface CompletionOutput {
  readonly promptIds: readonly Token[];
  /** Every sampled token, an end-of-sequence token that ended generation included. */
  readonly completionIds: readonly Token[];
  /** Aligned with completionIds; present only when the request asked for logprobs. */
  readonly logprobs?: readonly TokenLogprob[];
  readonly text: string;
  readonly finishReason: FinishReason;
}

export class CompletionState {
  readonly completionIds: Token[] = [];
  /** Aligned with completionIds when the request asked for logprobs; empty otherwise. */
  readonly logprobs: TokenLogprob[] = [];
  private textSoFar = '';
  private finished: FinishReason | null = null;
  private stoppedByString = false;
  private readonly detok;
  private readonly stops: StopStringMatcher;

  constructor(
    tokenizer: TextTokenizer,
    private readonly eos: ReadonlySet<number>,
    stop: readonly string[],
  ) {
    this.detok = tokenizer.createStreamDecoder({ skipSpecialTokens: true });
    this.stops = new StopStringMatcher(stop);
  }

  get text(): string {
    return this.textSoFar;
  }

  /** Why the sequence ended, or null while it goes on. */
  get finishReason(): FinishReason | null {
    return this.finished;
  }

  /** Takes a sampled token; returns the text it finalizes. Call finish() once finishReason is set. */
  accept(token: Token, logprob?: TokenLogprob): GeneratedChunk {
    if (this.finished) throw new Error('token accepted after the sequence finished');
    this.completionIds.push(token);
    if (logprob) this.logprobs.push(logprob);
    const withLogprob = logprob ? { logprob } : {};
    if (this.eos.has(token)) {
      this.finished = 'stop';
      return { tokenId: token, text: '', ...withLogprob };
    }
    const matched = this.stops.push(this.detok.push(token));
    this.textSoFar += matched.emit;
    if (matched.stopped) {
      this.finished = 'stop';
      this.stoppedByString = true;
    }
    return { tokenId: token, text: matched.emit, ...withLogprob };
  }

  /** The finished sequence's output; call after finish(). */
  output(promptIds: readonly Token[], withLogprobs: boolean): CompletionOutput {
    if (this.finished === null) throw new Error('output() before finish()');
    return { promptIds, completionIds: this.completionIds, ...(withLogprobs && { logprobs: this.logprobs }), text: this.textSoFar, finishReason: this.finished };
  }

  /** Ends the sequence (for `reason` if it has not ended by itself) and releases held-back text. */
  finish(reason: FinishReason): GeneratedChunk | null {
    this.finished ??= reason;
    if (this.stoppedByString) return null;
    const tail = this.stops.push(this.detok.flush());
    const rest = tail.stopped ? tail.emit : tail.emit + this.stops.flush();
    if (tail.stopped) this.finished = 'stop';
    this.stoppedByString = true; // nothing more to release
    this.textSoFar += rest;
    return rest ? { tokenId: null, text: rest } : null;
  }
}
