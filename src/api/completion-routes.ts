// POST /v1/completions and POST /v1/chat/completions: one JSON body, or Server-Sent Events exactly as
// OpenAI streams them (chunks sharing one id, finish_reason on the last choice chunk, an optional usage
// chunk with no choices, then [DONE]).
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { CompletionResult } from '../engine/batch-engine.js';
import type { FinishReason, GeneratedChunk } from '../engine/completion-state.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { badRequest } from './api-errors.js';
import type { RouteContext } from './build-app.js';
import { prepareChat, prepareCompletion, type PreparedRequest } from './completion-request.js';
import { chatLogprobs, legacyLogprobs } from './logprob-format.js';
import { OutputWatch, stallReason } from './output-watch.js';
import { chatCompletionRequest, completionRequest } from './request-schemas.js';
import { startGeneration } from './start-generation.js';

/** How one route shapes its answers: the chunks of a stream, and the whole answer. */
interface Frames {
  chunk(c: GeneratedChunk): object;
  last(r: CompletionResult): object;
  whole(r: CompletionResult): object;
  usage(r: CompletionResult): object;
}

export function registerCompletionRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const modelName = ctx.deps.modelName;
  const created = () => Math.floor(Date.now() / 1000);

  app.post('/v1/completions', async (req, reply) => {
    const { model } = ctx.ready();
    const body = parseBody(completionRequest, req.body);
    const prepared = prepareCompletion(model, modelName, body);
    const tokenizer = model.tokenizer;
    const id = `cmpl-${randomUUID()}`;
    const frame = (text: string, logprobs: object | null, finish: FinishReason | null) => ({
      id,
      object: 'text_completion',
      created: created(),
      model: modelName,
      choices: [{ text, index: 0, logprobs, finish_reason: finish === null ? null : finishReason(finish) }],
    });
    let offset = 0;
    return respond(reply, body, prepared, {
      chunk: (c) => {
        const lp = c.logprob ? legacyLogprobs(tokenizer, [c.logprob], offset) : null;
        offset += c.text.length;
        return frame(c.text, lp, null);
      },
      last: (r) => frame('', null, r.finishReason),
      whole: (r) => ({ ...frame(r.text, r.logprobs ? legacyLogprobs(tokenizer, r.logprobs, 0) : null, r.finishReason), usage: usage(r) }),
      usage: (r) => ({ id, object: 'text_completion', created: created(), model: modelName, choices: [], usage: usage(r) }),
    });
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const { model } = ctx.ready();
    const body = parseBody(chatCompletionRequest, req.body);
    const prepared = prepareChat(model, modelName, body);
    const tokenizer: TextTokenizer = model.tokenizer;
    const id = `chatcmpl-${randomUUID()}`;
    const frame = (delta: object, logprobs: object | null, finish: FinishReason | null) => ({
      id,
      object: 'chat.completion.chunk',
      created: created(),
      model: modelName,
      choices: [{ index: 0, delta, logprobs, finish_reason: finish === null ? null : finishReason(finish) }],
    });
    let first = true;
    return respond(reply, body, prepared, {
      chunk: (c) => {
        const delta = first ? { role: 'assistant', content: c.text } : { content: c.text };
        first = false;
        return frame(delta, c.logprob ? chatLogprobs(tokenizer, [c.logprob]) : null, null);
      },
      last: (r) => frame({}, null, r.finishReason),
      whole: (r) => ({
        id,
        object: 'chat.completion',
        created: created(),
        model: modelName,
        choices: [{ index: 0, message: { role: 'assistant', content: r.text }, logprobs: r.logprobs ? chatLogprobs(tokenizer, r.logprobs) : null, finish_reason: finishReason(r.finishReason) }],
        usage: usage(r),
      }),
      usage: (r) => ({ id, object: 'chat.completion.chunk', created: created(), model: modelName, choices: [], usage: usage(r) }),
    });
  });

  /** answer(), tracked so that a graceful shutdown waits for it to finish writing. */
  const respond = (...args: Parameters<typeof answer>) => ctx.inFlight.track(answer(...args));

  /** Submits to the engine and answers with one JSON body or an SSE stream; a client that leaves cancels. */
  async function answer(
    reply: FastifyReply,
    body: { stream?: boolean | null; stream_options?: { include_usage?: boolean } | null },
    prepared: PreparedRequest,
    frames: Frames,
  ): Promise<unknown> {
    const abort = new AbortController();
    const gen = startGeneration(ctx, { ...prepared, client: clientOf(reply.request) }, abort.signal);
    // A client that closes its connection before the answer is complete cancels the generation.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    if (body.stream !== true) {
      for await (const c of gen.chunks) void c;
      return frames.whole(await gen.result);
    }
    reply.hijack();
    reply.raw.writeHead(200, { ...sseCorsHeaders(reply), 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const limits = ctx.clientLimits;
    using watch = new OutputWatch(limits, () => reply.raw.writableLength, () => {
      reply.log.warn({ reqId: reply.request.id }, stallReason(limits));
      abort.abort();
      reply.raw.destroy();
    });
    const send = (data: object | string) => {
      if (reply.raw.destroyed) return;
      reply.raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
      watch.wrote();
    };
    try {
      // A token whose text is held back (an incomplete UTF-8 sequence, a possible stop string) sends
      // nothing, unless logprobs were asked for: then every token gets its chunk.
      for await (const c of gen.chunks) if (c.text || c.logprob) send(frames.chunk(c));
      const result = await gen.result;
      send(frames.last(result));
      if (body.stream_options?.include_usage === true) send(frames.usage(result));
      send('[DONE]');
    } catch (err) {
      // The status line has gone; the error travels as an event, as OpenAI sends it.
      send(ctx.errorFor(err, reply.request.id).body());
    }
    reply.raw.end();
    return reply;
  }
}

/**
 * The client a request counts against for the per-client limits: its peer address (the server has one API
 * key, so the key tells no one apart). Behind a reverse proxy every request has the proxy's address: set
 * --client-max-running and --client-max-queued to the server-wide limits there.
 */
export function clientOf(req: FastifyRequest): string {
  return req.ip;
}

/** A hijacked reply skips fastify's onSend hooks, where @fastify/cors adds its headers: carry them over. */
function sseCorsHeaders(reply: FastifyReply): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(reply.getHeaders())) if (k.startsWith('access-control-') && v !== undefined) out[k] = String(v);
  return out;
}

export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  const r = schema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0];
    const param = issue?.path.length ? issue.path.join('.') : null;
    const message = issue?.code === 'unrecognized_keys' ? `unsupported field(s): ${issue.keys.join(', ')}` : `${param ?? 'body'}: ${issue?.message ?? 'invalid'}`;
    throw badRequest(message, param ?? (issue?.code === 'unrecognized_keys' ? (issue.keys[0] ?? null) : null), 'invalid_request');
  }
  return r.data;
}

/** OpenAI knows 'stop' and 'length'; a cancelled request has no reader left, so 'stop' is as good. */
function finishReason(r: FinishReason): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

export function usage(r: CompletionResult) {
  return { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens };
}
