// Hands a prepared request to the engine, with the request's routing observer and its latency metrics.
import type { CompletionResult } from '../engine/batch-engine.js';
import type { GeneratedChunk } from '../engine/completion-state.js';
import type { RouteContext } from './build-app.js';
import type { PreparedRequest } from './completion-request.js';

export interface Generation {
  /** The tokens as they come; must be drained (the latency metrics are observed as it is read). */
  readonly chunks: AsyncIterable<GeneratedChunk>;
  readonly result: Promise<CompletionResult>;
}

/** Throws at once when the engine refuses the request (QueueFullError -> 429 and the like). */
export function startGeneration(ctx: RouteContext, prepared: PreparedRequest, signal: AbortSignal): Generation {
  const receivedAt = performance.now();
  const serving = ctx.ready();
  const stream = serving.engine.submit({ ...prepared, signal, observer: serving.observer?.() });
  return { chunks: ctx.metrics.timed(stream, receivedAt, prepared.promptIds.length), result: stream.result };
}
