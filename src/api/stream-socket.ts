// WebSocket GET /v1/stream: completion and chat requests as JSON messages, tokens streamed back as they
// are generated. Several requests share a socket, told apart by the client's `id`; `cancel` or closing
// the socket stops them at the next engine step. Every failure is an `error` message in the OpenAI error
// shape and leaves the socket open, but for a client that stops reading (output-watch.ts): its socket is
// closed with 1008 and its requests cancelled.
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { FinishReason } from '../engine/completion-state.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { ApiError, badRequest } from './api-errors.js';
import type { RouteContext } from './build-app.js';
import { clientOf, parseBody, usage } from './completion-routes.js';
import { prepareChat, prepareCompletion, type PreparedRequest } from './completion-request.js';
import { chatLogprobs } from './logprob-format.js';
import { OutputWatch, stallReason } from './output-watch.js';
import { socketMessage, type SocketMessage } from './request-schemas.js';
import { startGenerations } from './start-generation.js';

const ROUTE = '/v1/stream';

type ServerMessage =
  | { type: 'token'; id: string; text: string; token_ids: number[]; logprobs?: unknown }
  | { type: 'done'; id: string; finish_reason: 'stop' | 'length' | 'cancelled'; usage: ReturnType<typeof usage> }
  | { type: 'error'; id: string | null; error: ReturnType<ApiError['body']>['error'] };

export function registerStreamSocket(app: FastifyInstance, ctx: RouteContext): void {
  app.get(ROUTE, { websocket: true }, (socket, req) => {
    const running = new Map<string, AbortController>();
    const limits = ctx.clientLimits;
    const watch = new OutputWatch(limits, () => socket.bufferedAmount, () => {
      req.log.warn({ reqId: req.id }, stallReason(limits));
      for (const abort of running.values()) abort.abort();
      socket.close(1008, 'client not reading');
      // The close frame waits behind the unread output; a client that reads nothing never gets it.
      setTimeout(() => socket.terminate(), 1000).unref();
    });
    const send = (m: ServerMessage) => {
      if (socket.readyState !== socket.OPEN) return;
      socket.send(JSON.stringify(m));
      watch.wrote();
    };
    const fail = (id: string | null, err: unknown) => {
      // Each message is its own request: its own id in the log, tied to the socket's.
      const e = ctx.errorFor(err, `${req.id}/${randomUUID()}`);
      ctx.metrics.countRequest(ROUTE, e.status);
      send({ type: 'error', id, error: e.body().error });
    };

    socket.on('message', (data, isBinary) => {
      let id: string | null = null;
      try {
        if (isBinary) throw badRequest('send requests as text messages holding JSON', null, 'invalid_message');
        const json = parseJson(data.toString());
        id = typeof json === 'object' && json !== null && typeof (json as { id?: unknown }).id === 'string' ? (json as { id: string }).id : null;
        const msg = parseBody(socketMessage, json);
        if (msg.type === 'cancel') {
          const abort = running.get(msg.id);
          if (!abort) throw new ApiError(404, 'not_found_error', `no running request with id '${msg.id}'`, 'id', 'unknown_id');
          abort.abort();
          return;
        }
        if (running.has(msg.id)) throw badRequest(`a request with id '${msg.id}' is already running on this socket`, 'id', 'duplicate_id');
        if (running.size >= limits.maxSocketRequests) {
          throw new ApiError(429, 'rate_limit_error', `this socket already has ${running.size} requests running, its most; wait for one to finish`, 'id', 'too_many_socket_requests');
        }
        void ctx.inFlight.track(start(msg));
      } catch (err) {
        fail(id, err);
      }
    });

    /** Prepares (a response_format compiles asynchronously) and streams one request message. */
    async function start(msg: Exclude<SocketMessage, { type: 'cancel' }>): Promise<void> {
      // Taken now, so that a second message with this id is refused while this one is prepared.
      const abort = new AbortController();
      running.set(msg.id, abort);
      try {
        const { model } = ctx.ready();
        const prepared = msg.type === 'chat' ? await prepareChat(model, ctx.deps.modelName, msg, ctx.formats) : await prepareCompletion(model, ctx.deps.modelName, msg, ctx.formats);
        // A socket message streams one sequence: its messages carry no choice index.
        if (prepared.n > 1 || prepared.prompts.length > 1 || prepared.echo) {
          throw badRequest('n > 1, prompt lists and echo are served on POST /v1/completions and /v1/chat/completions; a socket request streams one sequence', prepared.n > 1 ? 'n' : prepared.echo ? 'echo' : 'prompt', 'unsupported_on_socket');
        }
        await stream(msg.id, prepared, model.tokenizer, abort);
      } catch (err) {
        fail(msg.id, err);
      } finally {
        running.delete(msg.id);
      }
    }
    socket.on('close', () => {
      watch[Symbol.dispose]();
      for (const abort of running.values()) abort.abort();
    });

    async function stream(id: string, prepared: PreparedRequest, tokenizer: TextTokenizer, abort: AbortController): Promise<void> {
      const [gen] = startGenerations(ctx, prepared, clientOf(req), abort.signal);
      if (!gen) return;
      for await (const c of gen.chunks) {
        if (c.tokenId === null && !c.text) continue;
        const token_ids = c.tokenId === null ? [] : [c.tokenId];
        send(c.logprob ? { type: 'token', id, text: c.text, token_ids, logprobs: chatLogprobs(tokenizer, [c.logprob]).content } : { type: 'token', id, text: c.text, token_ids });
      }
      const result = await gen.result;
      ctx.metrics.countRequest(ROUTE, 200);
      send({ type: 'done', id, finish_reason: socketFinish(result.finishReason), usage: usage([{ g: gen, r: result }]) });
    }
  });
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw badRequest(`the message is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
  }
}

function socketFinish(r: FinishReason): 'stop' | 'length' | 'cancelled' {
  return r === 'abort' ? 'cancelled' : r;
}
