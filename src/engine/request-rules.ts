// The rules a request must meet before the engine takes it, in one place: the HTTP and WebSocket API,
// the CLI and the benchmarks all submit through BatchEngine, which checks them here.
import { validateTopLogprobs } from './logit-processing.js';
import { ContextLengthError } from './kv-cache.js';

/** Most sequences one request may ask for (OpenAI's `n`). */
export const MAX_CHOICES = 16;
/** OpenAI's bound on a logit_bias value: -100 bans a token, 100 all but forces it. */
export const MAX_LOGIT_BIAS = 100;

/** A request whose prompt has no tokens: there is nothing to condition the first token on. */
export class EmptyPromptError extends Error {
  readonly code = 'empty_prompt';

  constructor() {
    super('the prompt encodes to zero tokens; give at least one token of input');
    this.name = 'EmptyPromptError';
  }
}

/** A field of a request out of its range; `param` names the field as the OpenAI API spells it. */
export class RequestFieldError extends Error {
  readonly code = 'invalid_request';

  constructor(
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = 'RequestFieldError';
  }
}

export interface RequestShape {
  readonly promptIds: readonly number[];
  readonly maxTokens: number;
  readonly logitBias?: ReadonlyMap<number, number>;
  readonly promptLogprobs?: number;
}

/** The prompt can be computed: at least one token, and room in the context for one more. */
export function checkPrompt(promptIds: readonly number[], maxPositions: number): void {
  if (promptIds.length === 0) throw new EmptyPromptError();
  if (promptIds.length >= maxPositions) throw new ContextLengthError(promptIds.length + 1, maxPositions);
}

/** Throws EmptyPromptError, ContextLengthError or RequestFieldError for a request the model cannot run. */
export function checkRequest(req: RequestShape, n: number, model: { readonly maxPositions: number; readonly vocabSize: number }): void {
  checkPrompt(req.promptIds, model.maxPositions);
  for (const t of req.promptIds) {
    if (!Number.isInteger(t) || t < 0 || t >= model.vocabSize) throw new RequestFieldError('prompt', `token id ${t} is outside this model's vocabulary (0..${model.vocabSize - 1})`);
  }
  if (!Number.isSafeInteger(req.maxTokens) || req.maxTokens < 0) throw new RequestFieldError('max_tokens', `max_tokens must be a non-negative integer, got ${req.maxTokens}`);
  if (!Number.isInteger(n) || n < 1 || n > MAX_CHOICES) throw new RequestFieldError('n', `n must be an integer from 1 to ${MAX_CHOICES}, got ${n}`);
  for (const [token, bias] of req.logitBias ?? []) {
    if (!Number.isInteger(token) || token < 0 || token >= model.vocabSize) throw new RequestFieldError('logit_bias', `logit_bias names token ${token}, outside this model's vocabulary (0..${model.vocabSize - 1})`);
    if (!(Math.abs(bias) <= MAX_LOGIT_BIAS)) throw new RequestFieldError('logit_bias', `logit_bias for token ${token} is ${bias}; each bias must be in [-${MAX_LOGIT_BIAS}, ${MAX_LOGIT_BIAS}]`);
  }
  if (req.promptLogprobs !== undefined) validateTopLogprobs(req.promptLogprobs);
}

/** Tokens a completion may have: what it asked for, within the context window. */
export function completionLimit(promptTokens: number, maxTokens: number, maxPositions: number): number {
  return Math.min(maxTokens, maxPositions - promptTokens);
}
