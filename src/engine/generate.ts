// One request on its own, for the CLI, the benchmarks and tests: it runs through the same batching engine
// as the server (one sequence, its whole prompt in one step), so what they measure is what the server runs.
import { BatchEngine, type CompletionResult } from './batch-engine.js';
import type { CompletionRequest, GeneratedChunk } from './completion-state.js';
import type { MoeModel } from './moe-model.js';

export type GenerateRequest = CompletionRequest;
export type GenerateResult = CompletionResult;
export type { FinishReason, GeneratedChunk } from './completion-state.js';
export type { SequenceTimings as GenerationTimings } from './batch-engine.js';

/** Yields the request's chunks as they are produced and returns its result; stopping early cancels it. */
export async function* generate(model: MoeModel, req: GenerateRequest): AsyncGenerator<GeneratedChunk, GenerateResult> {
  await using engine = new BatchEngine(model, { maxBatchTokens: model.spec.maxPositions, maxSeqs: 1, maxQueue: 1 });
  const stream = engine.submit(req);
  for await (const chunk of stream) yield chunk;
  return await stream.result;
}
