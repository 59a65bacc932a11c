// POST /v1/completions and POST /v1/chat/completions: one JSON body, or Server-Sent Events exactly as
// OpenAI streams them (chunks sharing one id, finish_reason on the last choice chunk, an optional usage
// chunk with no choices, then [DONE]).
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { CompletionResult } from '../engine/batch-engine.js';
import type { FinishReason, GeneratedChunk } from '../engine/completion-state.js';
import type { TokenLogprob } from '../engine/logit-processing.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { badRequest } from './api-errors.js';
import type { RouteContext } from './build-app.js';
import { prepareChat, prepareCompletion, type PreparedRequest } from './completion-request.js';
import { chatLogprobs, legacyLogprobs, promptTokenLogprobs } from './logprob-format.js';
import { OutputWatch, stallReason } from './output-watch.js';
import { chatCompletionRequest, completionRequest } from './request-schemas.js';
import { startGenerations, type Generation } from './start-generation.js';

/** A choice that finished, with the generation it came from. */
interface Done {
  readonly g: Generation;
  readonly r: CompletionResult;
}

/** The frames of one choice's stream: what opens it (an echoed prompt), each chunk (null: send nothing), its end. */
interface ChoiceFrames {
  open(): object | null;
  chunk(c: GeneratedChunk): object | null;
  last(r: CompletionResult): object;
}

/** How one route shapes its answers: each choice's stream, the whole answer, and the usage chunk. */
interface RouteShape {
  streamOf(g: Generation): ChoiceFrames;
  whole(done: readonly Done[]): object;
  usageFrame(done: readonly Done[]): object;
}

export function registerCompletionRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const modelName = ctx.deps.modelName;
  const created = () => Math.floor(Date.now() / 1000);

  app.post('/v1/completions', async (req, reply) => {
    const { model } = ctx.ready();
    const body = parseBody(completionRequest, req.body);
    const prepared = await prepareCompletion(model, modelName, body, ctx.formats);
    const tokenizer = model.tokenizer;
    const id = `cmpl-${randomUUID()}`;
    const head = () => ({ id, object: 'text_completion', created: created(), model: modelName });
    const frame = (index: number, text: string, logprobs: object | null, finish: FinishReason | null) => ({
      ...head(),
      choices: [{ text, index, logprobs, finish_reason: finish === null ? null : finishReason(finish) }],
    });
    const echoed = (g: Generation) => (prepared.echo ? g.prompt.text : '');
    /** The prompt's logprobs, when echoed with logprobs: its tokens' offsets count from 0. */
    const promptPart = (g: Generation, lps: readonly (TokenLogprob | null)[] | undefined) =>
      lps ? legacyLogprobs(tokenizer, promptTokenLogprobs(g.prompt.promptIds, lps), 0) : null;
    return respond(reply, body, prepared, {
      streamOf: (g) => {
        // Offsets count in the choice's text, which starts with the prompt when it is echoed.
        let offset = echoed(g).length;
        return {
          // Echo with logprobs waits for the prompt's logprobs, which come as a chunk once it is computed.
          open: () => (prepared.echo && prepared.request.promptLogprobs === undefined ? frame(g.index, g.prompt.text, null, null) : null),
          chunk: (c) => {
            if (c.promptLogprobs) return prepared.echo ? frame(g.index, g.prompt.text, promptPart(g, c.promptLogprobs), null) : null;
            // A token whose text is held back (an incomplete UTF-8 sequence, a possible stop string) sends
            // nothing, unless logprobs were asked for: then every token gets its chunk.
            if (!c.text && !c.logprob) return null;
            const lp = c.logprob ? legacyLogprobs(tokenizer, [c.logprob], offset) : null;
            offset += c.text.length;
            return frame(g.index, c.text, lp, null);
          },
          last: (r) => frame(g.index, '', null, r.finishReason),
        };
      },
      whole: (done) => ({
        ...head(),
        choices: done.map(({ g, r }) => {
          const completion = r.logprobs ? legacyLogprobs(tokenizer, r.logprobs, echoed(g).length) : null;
          const logprobs = joinLegacy(promptPart(g, prepared.echo ? r.promptLogprobs : undefined), completion);
          return { text: echoed(g) + r.text, index: g.index, logprobs, finish_reason: finishReason(r.finishReason) };
        }),
        usage: usage(done),
      }),
      usageFrame: (done) => ({ ...head(), choices: [], usage: usage(done) }),
    });
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const { model } = ctx.ready();
    const body = parseBody(chatCompletionRequest, req.body);
    const prepared = await prepareChat(model, modelName, body, ctx.formats);
    const tokenizer: TextTokenizer = model.tokenizer;
    const id = `chatcmpl-${randomUUID()}`;
    const head = (object: string) => ({ id, object, created: created(), model: modelName });
    const frame = (index: number, delta: object, logprobs: object | null, finish: FinishReason | null) => ({
      ...head('chat.completion.chunk'),
      choices: [{ index, delta, logprobs, finish_reason: finish === null ? null : finishReason(finish) }],
    });
    return respond(reply, body, prepared, {
      streamOf: (g) => {
        let first = true;
        return {
          open: () => null,
          chunk: (c) => {
            if (!c.text && !c.logprob) return null;
            const delta = first ? { role: 'assistant', content: c.text } : { content: c.text };
            first = false;
            return frame(g.index, delta, c.logprob ? chatLogprobs(tokenizer, [c.logprob]) : null, null);
          },
          last: (r) => frame(g.index, {}, null, r.finishReason),
        };
      },
      whole: (done) => ({
        ...head('chat.completion'),
        choices: done.map(({ g, r }) => ({
          index: g.index,
          message: { role: 'assistant', content: r.text },
          logprobs: r.logprobs ? chatLogprobs(tokenizer, r.logprobs) : null,
          finish_reason: finishReason(r.finishReason),
        })),
        usage: usage(done),
      }),
      usageFrame: (done) => ({ ...head('chat.completion.chunk'), choices: [], usage: usage(done) }),
    });
  });

  /** answer(), tracked so that a graceful shutdown waits for it to finish writing. */
  const respond = (...args: Parameters<typeof answer>) => ctx.inFlight.track(answer(...args));

  /** Submits to the engine and answers with one JSON body or an SSE stream; a client that leaves cancels. */
  async function answer(
    reply: FastifyReply,
    body: { stream?: boolean | null; stream_options?: { include_usage?: boolean } | null },
    prepared: PreparedRequest,
    shape: RouteShape,
  ): Promise<unknown> {
    const abort = new AbortController();
    const gens = startGenerations(ctx, prepared, clientOf(reply.request), abort.signal);
    // A client that closes its connection before the answer is complete cancels the generation.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    if (body.stream !== true) {
      try {
        return shape.whole(await Promise.all(gens.map(async (g) => {
          for await (const c of g.chunks) void c;
          return { g, r: await g.result };
        })));
      } catch (err) {
        // One choice failed: the answer is an error, and the other choices stop.
        abort.abort();
        throw err;
      }
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
      // The choices stream side by side, each chunk naming its choice's index, as OpenAI streams n > 1.
      const done = await Promise.all(gens.map(async (g) => {
        const frames = shape.streamOf(g);
        const open = frames.open();
        if (open) send(open);
        for await (const c of g.chunks) {
          const f = frames.chunk(c);
          if (f) send(f);
        }
        const r = await g.result;
        send(frames.last(r));
        return { g, r };
      }));
      if (body.stream_options?.include_usage === true) send(shape.usageFrame(done));
      send('[DONE]');
    } catch (err) {
      abort.abort();
      // The status line has gone; the error travels as an event, as OpenAI sends it.
      send(ctx.errorFor(err, reply.request.id).body());
    }
    reply.raw.end();
    return reply;
  }
}

/** Two legacy logprobs objects as one (an echoed prompt's, then the completion's). */
function joinLegacy<T extends ReturnType<typeof legacyLogprobs>>(a: T | null, b: T | null): T | null {
  if (!a || !b) return a ?? b;
  return {
    ...a,
    tokens: [...a.tokens, ...b.tokens],
    token_logprobs: [...a.token_logprobs, ...b.token_logprobs],
    top_logprobs: [...a.top_logprobs, ...b.top_logprobs],
    text_offset: [...a.text_offset, ...b.text_offset],
  };
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

/**
 * OpenAI's usage: each prompt counted once however many choices it has (with its tokens found in the
 * prefix cache as cached_tokens), every choice's completion tokens.
 */
export function usage(done: readonly { readonly g: { readonly first: boolean }; readonly r: CompletionResult }[]) {
  let prompt = 0;
  let cached = 0;
  let completion = 0;
  for (const { g, r } of done) {
    completion += r.completionTokens;
    if (!g.first) continue;
    prompt += r.promptTokens;
    cached += r.cachedTokens;
  }
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } };
}
