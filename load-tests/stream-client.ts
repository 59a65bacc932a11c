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

const sseChunk = z.object({
  choices: z.array(z.object({ text: z.string().optional() })).optional(),
  usage: z.object({ completion_tokens: z.number() }).nullish(),
  error: z.object({ code: z.string().nullish(), type: z.string().nullish() }).optional(),
});

/** One streamed completion over SSE. Every ending becomes an outcome; only a non-loopback target throws. */
export async function sseCompletion(baseUrl: string, p: CompletionParams, signal: AbortSignal): Promise<RequestRecord> {
  const url = new URL('/v1/completions', assertLoopback(baseUrl));
  const clock = new TokenClock();
  let outputTokens = 0;
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: p.model, prompt: p.prompt, max_tokens: p.maxTokens, temperature: p.temperature, seed: p.seed, stream: true, stream_options: { include_usage: true } }),
      signal,
    });
    if (res.status !== 200 || !res.body) {
      await res.body?.cancel();
      return clock.record(String(res.status), 0);
    }
    let buffer = '';
    let done = false;
    const decoder = new TextDecoder();
    for await (const bytes of res.body) {
      buffer += decoder.decode(bytes as Uint8Array, { stream: true });
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.startsWith('data: ') ? event.slice(6) : null;
        if (data === null) continue;
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        const chunk = sseChunk.parse(JSON.parse(data));
        if (chunk.error) return clock.record(chunk.error.code === 'queue_full' ? OVERLOADED : `sse:${chunk.error.code ?? chunk.error.type ?? 'error'}`, outputTokens);
        if (chunk.choices?.some((c) => (c.text ?? '') !== '')) clock.token();
        if (chunk.usage) outputTokens = chunk.usage.completion_tokens;
      }
    }
    return clock.record(done ? '200' : 'sse:truncated', outputTokens);
  } catch (err) {
    return clock.record(signal.aborted ? CANCELLED : 'network', outputTokens);
  }
}

const wsMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('token'), id: z.string(), text: z.string(), token_ids: z.array(z.number()).optional() }),
  z.object({ type: z.literal('done'), id: z.string(), usage: z.object({ completion_tokens: z.number() }) }),
  z.object({ type: z.literal('error'), id: z.string().nullish(), error: z.object({ code: z.string().nullish(), type: z.string().nullish(), message: z.string().optional() }) }),
]);

interface Pending {
  readonly clock: TokenClock;
  readonly resolve: (r: RequestRecord) => void;
}

/** One WebSocket to GET /v1/stream carrying any number of concurrent requests, told apart by id. */
export class WsStreamConnection implements AsyncDisposable {
  private readonly pending = new Map<string, Pending>();
  private nextId = 0;

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data) => this.onMessage(String(data)));
    socket.on('close', () => this.failAll('network'));
    socket.on('error', () => this.failAll('network'));
  }

  static async open(baseUrl: string): Promise<WsStreamConnection> {
    const url = new URL('/v1/stream', assertLoopback(baseUrl));
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('unexpected-response', (_req, res) => reject(new Error(`GET ${url.href}: HTTP ${res.statusCode} instead of a WebSocket upgrade`)));
      socket.once('error', reject);
    });
    return new WsStreamConnection(socket);
  }

  /** One streamed completion; never throws: every ending becomes an outcome. */
  complete(p: CompletionParams, signal: AbortSignal): Promise<RequestRecord> {
    const id = `lt-${this.nextId++}`;
    const clock = new TokenClock();
    return new Promise<RequestRecord>((resolve) => {
      if (this.socket.readyState !== WebSocket.OPEN) return resolve(clock.record('network', 0));
      const onAbort = () => {
        if (!this.pending.delete(id)) return;
        if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type: 'cancel', id }));
        resolve(clock.record(CANCELLED, 0));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, {
        clock,
        resolve: (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        },
      });
      this.socket.send(JSON.stringify({ type: 'completion', id, model: p.model, prompt: p.prompt, max_tokens: p.maxTokens, temperature: p.temperature, seed: p.seed }));
    });
  }

  private onMessage(text: string): void {
    const parsed = wsMessage.safeParse(JSON.parse(text));
    if (!parsed.success) return;
    const m = parsed.data;
    const pending = m.id == null ? undefined : this.pending.get(m.id);
    if (!pending) return;
    if (m.type === 'token') {
      if (m.text !== '' || (m.token_ids?.length ?? 0) > 0) pending.clock.token();
      return;
    }
    this.pending.delete(m.id!);
    if (m.type === 'done') pending.resolve(pending.clock.record('200', m.usage.completion_tokens));
    else pending.resolve(pending.clock.record(m.error.code === 'queue_full' || m.error.type === 'rate_limit_error' ? OVERLOADED : `ws:${m.error.code ?? m.error.type ?? 'error'}`, 0));
  }

  private failAll(outcome: string): void {
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.resolve(p.clock.record(outcome, 0));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.close();
    await closed;
  }
}
