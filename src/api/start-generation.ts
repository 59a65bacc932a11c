// Hands a prepared request to the engine, each prompt with its n choices, with a routing observer per
// sequence and the request's latency metrics.
import type { CompletionResult } from '../engine/batch-engine.js';
import type { GeneratedChunk } from '../engine/completion-state.js';
import { badRequest } from './api-errors.js';
import type { RouteContext } from './build-app.js';
import type { PreparedPrompt, PreparedRequest } from './completion-request.js';

export interface Generation {
  /** The choice's index in the answer: prompt i's choice j is i * n + j, as OpenAI orders them. */
  readonly index: number;
  readonly prompt: PreparedPrompt;
  /** The first choice of its prompt (the one usage counts the prompt and its cached tokens for). */
  readonly first: boolean;
  /** The tokens as they come; must be drained (the latency metrics are observed as it is read). */
  readonly chunks: AsyncIterable<GeneratedChunk>;
  readonly result: Promise<CompletionResult>;
}

/**
 * Submits every sequence of the request, or none: throws at once when the engine refuses one (QueueFullError
 * -> 429 and the like), having cancelled those already queued.
 */
export function startGenerations(ctx: RouteContext, prepared: PreparedRequest, client: string, signal: AbortSignal): Generation[] {
  const receivedAt = performance.now();
  const serving = ctx.ready();
  const sequences = prepared.prompts.length * prepared.n;
  // A request that could never be queued whole is the client's to change, not to retry (429 would say retry).
  if (sequences > serving.engine.queueCapacity) {
    throw badRequest(`this request is ${prepared.prompts.length} prompt(s) x n = ${prepared.n}: ${sequences} sequences; this server queues at most ${serving.engine.queueCapacity} per client`, prepared.prompts.length > 1 ? 'prompt' : 'n', 'too_many_sequences');
  }
  const own = new AbortController();
  const cancel = () => own.abort();
  if (signal.aborted) cancel();
  signal.addEventListener('abort', cancel, { once: true });
  const out: Generation[] = [];
  try {
    prepared.prompts.forEach((prompt, p) => {
      const request = { ...prepared.request, promptIds: prompt.promptIds, client, signal: own.signal };
      const streams = serving.engine.submitChoices(request, prepared.n, () => serving.observer?.(prompt.promptIds));
      streams.forEach((stream, j) => {
        // Latency metrics are per request: its first sequence stands for it.
        const timed = p === 0 && j === 0 ? ctx.metrics.timed(stream, receivedAt, prompt.promptIds.length) : stream;
        out.push({ index: p * prepared.n + j, prompt, first: j === 0, chunks: timed, result: stream.result });
      });
    });
  } catch (err) {
    cancel();
    throw err;
  }
  return out;
}
