// Single-sequence generation: prefill, then decode token by token, sampling, stopping and streaming
// text that never splits a UTF-8 character or shows part of a stop string.
import { asToken } from '../tokenizer/token.js';
import type { MoeModel } from './moe-model.js';
import { CompletionState, EmptyPromptError, type CompletionOutput, type CompletionRequest, type GeneratedChunk } from './completion-state.js';
import { SequenceSampler } from './sequence-sampler.js';

/** A single-sequence request: the same fields as the batching engine's. */
export type GenerateRequest = CompletionRequest;

export type { FinishReason, GeneratedChunk } from './completion-state.js';

export interface GenerationTimings {
  readonly promptTokens: number;
  readonly promptMs: number;
  /** Forward steps after the prompt (one per generated token but the last). */
  readonly decodeSteps: number;
  readonly decodeMs: number;
  /** Of decodeMs' steps' tokens, the time spent choosing them (penalties, softmax, sampling) and accepting them (detokenizing, stop strings). */
  readonly samplingMs: number;
}

export interface GenerateResult extends CompletionOutput {
  readonly timings: GenerationTimings;
}


export async function* generate(model: MoeModel, req: GenerateRequest): AsyncGenerator<GeneratedChunk, GenerateResult> {
  if (req.promptIds.length === 0) throw new EmptyPromptError();
  if (!Number.isInteger(req.maxTokens) || req.maxTokens < 0) throw new RangeError(`maxTokens must be a non-negative integer, got ${req.maxTokens}`);
  const sampler = new SequenceSampler(req);
  // The whole completion must fit the context window; tokens past it end generation with 'length'.
  const room = Math.min(req.maxTokens, model.spec.maxPositions - req.promptIds.length);
  const state = new CompletionState(model.tokenizer, new Set(req.ignoreEos ? [] : model.eosTokenIds), req.stop ?? [], room);
  let decodeMs = 0;
  let decodeSteps = 0;
  let samplingMs = 0;
  using kv = model.newSequence();

  const t0 = performance.now();
  let logits = await model.forward.step(kv, req.promptIds, 'last', req.observer);
  const promptMs = performance.now() - t0;

  while (state.finishReason === null) {
    if (req.signal?.aborted) {
      state.finish('abort');
      break;
    }
    const ts = performance.now();
    const { token, logprob } = sampler.next(logits);
    const chunk = state.accept(token, logprob);
    samplingMs += performance.now() - ts;
    yield chunk;
    if (state.finishReason !== null) break;
    const t = performance.now();
    logits = await model.forward.step(kv, [asToken(token)], 'last', req.observer);
    decodeMs += performance.now() - t;
    decodeSteps++;
  }
  const tail = state.finish('length');
  if (tail) yield tail;
  return { ...state.output(req.promptIds, sampler.topLogprobs !== undefined), timings: { promptTokens: req.promptIds.length, promptMs, decodeSteps, decodeMs, samplingMs } };
}
