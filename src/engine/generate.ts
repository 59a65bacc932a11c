// Single-sequence generation: prefill, then decode token by token, sampling, stopping and streaming
// text that never splits a UTF-8 character or shows part of a stop string.
import { asToken, type Token } from '../tokenizer/token.js';
import type { RoutingObserver } from './forward.js';
import type { MoeModel } from './moe-model.js';
import { createRng, randomSeed, sampleToken, type SamplingParams } from './sampler.js';
import { StopStringMatcher } from './stop-strings.js';

export interface GenerateRequest {
  readonly promptIds: readonly Token[];
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  /** Seed of the sampler's random stream; the same seed and request give the same tokens. */
  readonly seed?: number;
  /** Strings that end generation; they are not part of the returned text. */
  readonly stop?: readonly string[];
  readonly signal?: AbortSignal;
  readonly observer?: RoutingObserver;
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GeneratedChunk {
  /** The sampled token; null for text released when the sequence ends. */
  readonly tokenId: Token | null;
  /** Text finalized by this token (may be empty). */
  readonly text: string;
}

export interface GenerationTimings {
  readonly promptTokens: number;
  readonly promptMs: number;
  /** Forward steps after the prompt (one per generated token but the last). */
  readonly decodeSteps: number;
  readonly decodeMs: number;
}

export interface GenerateResult {
  readonly promptIds: readonly Token[];
  /** Every sampled token, including an end-of-sequence token that ended generation. */
  readonly completionIds: readonly Token[];
  readonly text: string;
  readonly finishReason: FinishReason;
  readonly timings: GenerationTimings;
}

export class EmptyPromptError extends Error {
  readonly code = 'empty_prompt';

  constructor() {
    super('the prompt encodes to zero tokens; give at least one token of input');
    this.name = 'EmptyPromptError';
  }
}

export async function* generate(model: MoeModel, req: GenerateRequest): AsyncGenerator<GeneratedChunk, GenerateResult> {
  if (req.promptIds.length === 0) throw new EmptyPromptError();
  if (!Number.isInteger(req.maxTokens) || req.maxTokens < 0) throw new RangeError(`maxTokens must be a non-negative integer, got ${req.maxTokens}`);
  const rng = createRng(req.seed ?? randomSeed());
  const eos = new Set(model.eosTokenIds);
  const detok = model.tokenizer.createStreamDecoder({ skipSpecialTokens: true });
  const stops = new StopStringMatcher(req.stop ?? []);
  const completion: Token[] = [];
  let text = '';
  let finishReason: FinishReason = 'length';
  let stoppedByString = false;
  let decodeMs = 0;
  let decodeSteps = 0;
  using kv = model.newSequence();
  // The whole completion must fit the context window; tokens past it end generation with 'length'.
  const room = Math.min(req.maxTokens, model.spec.maxPositions - req.promptIds.length);

  const t0 = performance.now();
  let logits = await model.forward.step(kv, req.promptIds, 'last', req.observer);
  const promptMs = performance.now() - t0;

  while (completion.length < room) {
    if (req.signal?.aborted) {
      finishReason = 'abort';
      break;
    }
    const token = sampleToken(logits, req.sampling, rng);
    completion.push(token);
    if (eos.has(token)) {
      finishReason = 'stop';
      break;
    }
    const matched = stops.push(detok.push(token));
    text += matched.emit;
    if (matched.stopped) {
      finishReason = 'stop';
      stoppedByString = true;
      yield { tokenId: token, text: matched.emit };
      break;
    }
    yield { tokenId: token, text: matched.emit };
    if (completion.length >= room) break;
    const t = performance.now();
    logits = await model.forward.step(kv, [asToken(token)], 'last', req.observer);
    decodeMs += performance.now() - t;
    decodeSteps++;
  }
  if (!stoppedByString) {
    // The sequence ended: release what the detokenizer and stop matcher were holding back.
    const tail = stops.push(detok.flush());
    const rest = tail.stopped ? tail.emit : tail.emit + stops.flush();
    if (tail.stopped) finishReason = 'stop';
    text += rest;
    if (rest) yield { tokenId: null, text: rest };
  }
  return {
    promptIds: req.promptIds,
    completionIds: completion,
    text,
    finishReason,
    timings: { promptTokens: req.promptIds.length, promptMs, decodeSteps, decodeMs },
  };
}
