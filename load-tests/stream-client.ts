// Streaming completions as a user's client sees them, timing every token message: SSE (POST
// /v1/completions with stream: true) and WebSocket (GET /v1/stream, several requests per socket by id).
import WebSocket from 'ws';
import { z } from 'zod';
import { assertLoopback } from './loopback.js';
import { CANCELLED, OVERLOADED, type RequestRecord } from './request-record.js';

export interface CompletionParams {
  readonly model: string;
  readonly prompt: string;
  readonly maxTokens: number;
  readonly temperature: number;
  readonly seed: number;
  /** The legacy API's top-k log-probabilities per token; they make every token message ~4-8x larger. */
  readonly logprobs?: number;
}

/** The JSON body of POST /v1/completions (and of a WebSocket `completion` message, with type and id). */
export function completionBody(p: CompletionParams): Record<string, unknown> {
  return { model: p.model, prompt: p.prompt, max_tokens: p.maxTokens, temperature: p.temperature, seed: p.seed, ...(p.logprobs !== undefined && { logprobs: p.logprobs }) };
}

/** Records token message times and turns them into a RequestRecord. */
class TokenClock {
  private readonly start = performance.now();
  private first: number | null = null;
  private last: number | null = null;
  private readonly gaps: number[] = [];

  token(): void {
    const now = performance.now();
    if (this.first === null) this.first = now;
    else this.gaps.push(now - this.last!);
    this.last = now;
  }

  record(outcome: string, outputTokens: number): RequestRecord {
    return { outcome, ttftMs: this.first === null ? null : this.first - this.start, e2eMs: performance.now() - this.start, outputTokens, itlMs: this.gaps };
  }
}

export const sseChunk = z.object({
  choices: z.array(z.object({ text: z.string().optional(), finish_reason: z.string().nullish() })).optional(),
  usage: z.object({ completion_tokens: z.number() }).nullish(),
  error: z.object({ code: z.string().nullish(), type: z.string().nullish() }).optional(),
});

/** The data fields of a Server-Sent Events body, one per event, as they arrive ('[DONE]' included). */
export async function* sseData(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith('data: ')) yield event.slice(6);
    }
  }
}

/** One streamed completion over SSE. Every ending becomes an outcome; only a non-loopback target throws. */
export async function sseCompletion(baseUrl: string, p: CompletionParams, signal: AbortSignal): Promise<RequestRecord> {
  const url = new URL('/v1/completions', assertLoopback(baseUrl));
  const clock = new TokenClock();
  let outputTokens = 0;
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...completionBody(p), stream: true, stream_options: { include_usage: true } }),
      signal,
    });
    if (res.status !== 200 || !res.body) {
      await res.body?.cancel();
      return clock.record(String(res.status), 0);
    }
    let done = false;
    for await (const data of sseData(res.body)) {
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const chunk = sseChunk.parse(JSON.parse(data));
      if (chunk.error) return clock.record(chunk.error.code === 'queue_full' ? OVERLOADED : `sse:${chunk.error.code ?? chunk.error.type ?? 'error'}`, outputTokens);
      if (chunk.choices?.some((c) => (c.text ?? '') !== '')) clock.token();
      if (chunk.usage) outputTokens = chunk.usage.completion_tokens;
    }
    return clock.record(done ? '200' : 'sse:truncated', outputTokens);
  } catch (err) {
    return clock.record(signal.aborted ? CANCELLED : 'network', outputTokens);
  }
}

const wsMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('token'), id: z.string(), text: z.string(), token_ids: z.array(z.number()).optional() }),
  z.object({ type: z.literal('done'), id: z.string(), finish_reason: z.string().optional(), usage: z.object({ completion_tokens: z.number() }) }),
  z.object({ type: z.literal('error'), id: z.string().nullish(), error: z.object({ code: z.string().nullish(), type: z.string().nullish(), message: z.string().optional() }) }),
]);

export type WsServerMessage = z.infer<typeof wsMessage>;

/** What one request on a shared socket hears: its own messages, or the socket's close. */
export interface WsRequestListener {
  /** Each message with this request's id; after its `done` or `error` the listener is dropped. */
  message(m: WsServerMessage): void;
  /** The socket closed while the request was open (1006: closed without a close frame). */
  closed(code: number): void;
}

/** The server answered the WebSocket upgrade with an HTTP status instead (429, 503, ...). */
export class WsUpgradeRefusedError extends Error {
  readonly code = 'ws_upgrade_refused';

  constructor(
    readonly url: string,
    readonly status: number,
  ) {
    super(`GET ${url}: HTTP ${status} instead of a WebSocket upgrade`);
    this.name = 'WsUpgradeRefusedError';
  }
}

/** ws's code for a socket that ended without a close frame. */
const ABNORMAL_CLOSURE = 1006;

/** One WebSocket to GET /v1/stream carrying any number of concurrent requests, told apart by id. */
export class WsStreamConnection implements AsyncDisposable {
  private readonly listeners = new Map<string, WsRequestListener>();
  private nextId = 0;
  private closeCode: number | null = null;

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data) => this.onMessage(String(data)));
    socket.on('close', (code) => this.closeAll(code));
    socket.on('error', () => this.closeAll(ABNORMAL_CLOSURE));
  }

  static async open(baseUrl: string): Promise<WsStreamConnection> {
    const url = new URL('/v1/stream', assertLoopback(baseUrl));
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('unexpected-response', (_req, res) => {
        // Read the refusal to its end, so its connection is closed or reused like any other response.
        res.resume();
        reject(new WsUpgradeRefusedError(url.href, res.statusCode ?? 0));
      });
      socket.once('error', reject);
    });
    return new WsStreamConnection(socket);
  }

  get isOpen(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  /**
   * Sends one request (`body` without id; see completionBody) and returns its id. Its messages go to
   * `listener`; on a socket that has closed, `listener.closed` is called at once.
   */
  send(body: Readonly<Record<string, unknown>>, listener: WsRequestListener): string {
    const id = `lt-${this.nextId++}`;
    if (!this.isOpen) {
      listener.closed(this.closeCode ?? ABNORMAL_CLOSURE);
      return id;
    }
    this.listeners.set(id, listener);
    this.socket.send(JSON.stringify({ ...body, id }));
    return id;
  }

  /** Asks the server to stop request `id`; its listener still hears the answer (a `done` saying 'cancelled'). */
  cancel(id: string): void {
    if (this.isOpen) this.socket.send(JSON.stringify({ type: 'cancel', id }));
  }

  /** Stops listening for request `id` (its caller has given up on it). */
  forget(id: string): void {
    this.listeners.delete(id);
  }

  /** Stops reading the socket: the kernel's buffers fill, then the server's (a client that stopped reading). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /** One streamed completion; never throws: every ending becomes an outcome. */
  complete(p: CompletionParams, signal: AbortSignal): Promise<RequestRecord> {
    const clock = new TokenClock();
    return new Promise<RequestRecord>((resolve) => {
      if (!this.isOpen) return resolve(clock.record('network', 0));
      const end = (r: RequestRecord) => {
        signal.removeEventListener('abort', onAbort);
        resolve(r);
      };
      const id = this.send({ type: 'completion', ...completionBody(p) }, {
        message: (m) => {
          if (m.type === 'token') {
            if (m.text !== '' || (m.token_ids?.length ?? 0) > 0) clock.token();
          } else if (m.type === 'done') end(clock.record('200', m.usage.completion_tokens));
          else end(clock.record(m.error.code === 'queue_full' || m.error.type === 'rate_limit_error' ? OVERLOADED : `ws:${m.error.code ?? m.error.type ?? 'error'}`, 0));
        },
        closed: () => end(clock.record('network', 0)),
      });
      const onAbort = () => {
        if (!this.listeners.delete(id)) return;
        this.cancel(id);
        end(clock.record(CANCELLED, 0));
      };
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  private onMessage(text: string): void {
    const parsed = wsMessage.safeParse(JSON.parse(text));
    if (!parsed.success) return;
    const m = parsed.data;
    const listener = m.id == null ? undefined : this.listeners.get(m.id);
    if (!listener) return;
    if (m.type !== 'token') this.listeners.delete(m.id!);
    listener.message(m);
  }

  private closeAll(code: number): void {
    this.closeCode ??= code;
    for (const [id, listener] of this.listeners) {
      this.listeners.delete(id);
      listener.closed(code);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    // A paused socket would never read the server's closing handshake.
    this.socket.resume();
    this.socket.close();
    await closed;
  }
}
