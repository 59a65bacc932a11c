// The OpenAI-compatible HTTP API. buildApp makes the fastify app and does not listen, so tests can use
// it over real loopback sockets with any engine; src/cli/serve-command.ts listens.
import { randomUUID } from 'node:crypto';
import { Template } from '@huggingface/jinja';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { z } from 'zod';
import type { BatchEngine, CompletionResult } from '../engine/batch-engine.js';
import type { FinishReason } from '../engine/completion-state.js';
import type { MoeModel } from '../engine/moe-model.js';
import type { Token } from '../tokenizer/token.js';
import { ApiError, badRequest, toApiError } from './api-errors.js';
import { chatCompletionRequest, completionRequest } from './request-schemas.js';

/** What the routes serve with, once the model is loaded. */
export interface Serving {
  readonly model: MoeModel;
  readonly engine: BatchEngine;
}

export interface AppDeps {
  /** The loaded model and its engine; undefined while loading (routes answer 503, /health too). */
  readonly serving: () => Serving | undefined;
  /** The name clients use in `model` (GET /v1/models lists it). */
  readonly modelName: string;
  /** When set, every route but /health needs `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  readonly logger?: boolean;
  /** Largest accepted request body, bytes. */
  readonly bodyLimit?: number;
}

interface Generation {
  readonly promptIds: readonly Token[];
  readonly maxTokens: number;
  readonly stream: boolean;
  readonly includeUsage: boolean;
}

type Body<T extends z.ZodType> = z.infer<T>;

export function buildApp(deps: AppDeps): FastifyInstance {
  const app = Fastify({ logger: deps.logger ?? false, bodyLimit: deps.bodyLimit ?? 1 << 20 });
  const created = () => Math.floor(Date.now() / 1000);

  app.setErrorHandler((err, _req, reply) => {
    const e = toApiError(err);
    void reply.code(e.status).headers(e.headers).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new ApiError(404, 'not_found_error', `no route ${req.method} ${req.url}`).body());
  });
  if (deps.apiKey) {
    const expected = `Bearer ${deps.apiKey}`;
    app.addHook('onRequest', async (req) => {
      if (req.url === '/health') return;
      if (req.headers.authorization !== expected) {
        throw new ApiError(401, 'authentication_error', 'missing or wrong API key: send Authorization: Bearer <key>', null, 'invalid_api_key');
      }
    });
  }

  /** The model and engine, or a 503 while the model loads. */
  const ready = (): Serving => {
    const s = deps.serving();
    if (!s) throw new ApiError(503, 'server_error', 'the model is still loading; retry shortly', null, 'model_loading', { 'retry-after': '1' });
    return s;
  };

  app.get('/health', async (_req, reply) => (deps.serving() ? { status: 'ok' } : reply.code(503).send({ status: 'loading' })));

  app.get('/v1/experts', async () => ready().model.experts.stats());

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: deps.modelName, object: 'model', created: 0, owned_by: 'moe-serve' }],
  }));

  app.post('/v1/completions', async (req, reply) => {
    const { model } = ready();
    const body = parse(completionRequest, req.body);
    checkModel(body.model);
    const prompt = Array.isArray(body.prompt) ? (body.prompt[0] ?? '') : body.prompt;
    const gen = generation(model.tokenizer.encode(prompt), body.max_tokens ?? 16, body);
    const id = `cmpl-${randomUUID()}`;
    const frame = (text: string, finish: FinishReason | null) => ({
      id,
      object: 'text_completion',
      created: created(),
      model: deps.modelName,
      choices: [{ text, index: 0, logprobs: null, finish_reason: finish === null ? null : finishReason(finish) }],
    });
    return run(reply, body, gen, {
      chunk: (text) => frame(text, null),
      last: (r) => frame('', r.finishReason),
      whole: (r) => ({ ...frame(r.text, r.finishReason), usage: usage(r) }),
      usage: (r) => ({ id, object: 'text_completion', created: created(), model: deps.modelName, choices: [], usage: usage(r) }),
    });
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const { model } = ready();
    const body = parse(chatCompletionRequest, req.body);
    checkModel(body.model);
    const template = model.tokenizer.chatTemplate;
    if (!template) throw badRequest(`model '${deps.modelName}' has no chat_template in tokenizer_config.json; use /v1/completions`, 'messages', 'no_chat_template');
    let text: string;
    try {
      text = new Template(template).render({ messages: body.messages, add_generation_prompt: true, bos_token: '', eos_token: '' });
    } catch (err) {
      throw badRequest(`the chat template failed on these messages: ${(err as Error).message}`, 'messages', 'chat_template_error');
    }
    const promptIds = model.tokenizer.encode(text);
    const room = model.spec.maxPositions - promptIds.length;
    const gen = generation(promptIds, body.max_completion_tokens ?? body.max_tokens ?? Math.max(1, room), body);
    const id = `chatcmpl-${randomUUID()}`;
    const frame = (delta: object, finish: FinishReason | null) => ({
      id,
      object: 'chat.completion.chunk',
      created: created(),
      model: deps.modelName,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish === null ? null : finishReason(finish) }],
    });
    let first = true;
    return run(reply, body, gen, {
      chunk: (t) => {
        const delta = first ? { role: 'assistant', content: t } : { content: t };
        first = false;
        return frame(delta, null);
      },
      last: (r) => frame({}, r.finishReason),
      whole: (r) => ({
        id,
        object: 'chat.completion',
        created: created(),
        model: deps.modelName,
        choices: [{ index: 0, message: { role: 'assistant', content: r.text }, logprobs: null, finish_reason: finishReason(r.finishReason) }],
        usage: usage(r),
      }),
      usage: (r) => ({ id, object: 'chat.completion.chunk', created: created(), model: deps.modelName, choices: [], usage: usage(r) }),
    });
  });

  function checkModel(name: string): void {
    if (name !== deps.modelName) throw new ApiError(404, 'not_found_error', `model '${name}' does not exist; this server serves '${deps.modelName}'`, 'model', 'model_not_found');
  }

  function generation(promptIds: readonly Token[], maxTokens: number, body: { stream?: boolean | null; stream_options?: { include_usage?: boolean } | null }): Generation {
    const maxPositions = ready().model.spec.maxPositions;
    if (promptIds.length === 0) throw badRequest('the prompt encodes to zero tokens', 'prompt', 'empty_prompt');
    if (promptIds.length >= maxPositions) {
      throw badRequest(`the prompt has ${promptIds.length} tokens; this model's context is ${maxPositions}`, 'prompt', 'context_length_exceeded');
    }
    return { promptIds, maxTokens, stream: body.stream === true, includeUsage: body.stream_options?.include_usage === true };
  }

  interface Frames {
    chunk(text: string): object;
    last(r: CompletionResult): object;
    whole(r: CompletionResult): object;
    usage(r: CompletionResult): object;
  }

  /** Submits to the engine and answers with one JSON body or an SSE stream; a client that leaves cancels. */
  async function run(
    reply: FastifyReply,
    body: Body<typeof completionRequest> | Body<typeof chatCompletionRequest>,
    gen: Generation,
    frames: Frames,
  ): Promise<unknown> {
    const abort = new AbortController();
    const stop = body.stop == null ? [] : Array.isArray(body.stop) ? body.stop : [body.stop];
    const stream = ready().engine.submit({
      promptIds: gen.promptIds,
      maxTokens: gen.maxTokens,
      sampling: { temperature: body.temperature ?? 1, topP: body.top_p ?? 1, topK: 0 },
      seed: body.seed ?? undefined,
      stop,
      signal: abort.signal,
    });
    // A client that closes its connection before the answer is complete cancels the generation.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    if (!gen.stream) return frames.whole(await stream.result);
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const send = (data: object | string) => reply.raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    try {
      for await (const chunk of stream) if (chunk.text) send(frames.chunk(chunk.text));
      const result = await stream.result;
      send(frames.last(result));
      if (gen.includeUsage) send(frames.usage(result));
      send('[DONE]');
    } catch (err) {
      send(toApiError(err).body());
    }
    reply.raw.end();
    return reply;
  }

  return app;
}

function parse<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
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

function usage(r: CompletionResult) {
  return { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens };
}
