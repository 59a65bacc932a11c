// The soak's clients: one kind per way a real client uses the server (non-streaming, SSE, WebSocket;
// cancelling mid-stream; reading slowly; stopping reading), each sending one request after another and
// logging what it saw (soak-outcome.ts turns the log into the request's outcome). No client throws:
// every ending is an event, and every request is given up at the soak's deadline (`timeout`).
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import type { Rng } from '../src/engine/sampler.js';
import { assertLoopback } from './loopback.js';
import { LOAD_PROMPTS } from './prompts.js';
import { soakOutcome, type ReaderKind, type SoakEvent, type SoakOutcome } from './soak-outcome.js';
import { completionBody, sseChunk, sseData, WsStreamConnection, WsUpgradeRefusedError, type CompletionParams } from './stream-client.js';

export const SOAK_CLIENT_KINDS = ['http', 'sse', 'ws', 'sse-cancel', 'ws-cancel', 'sse-slow', 'ws-slow', 'sse-stopped', 'ws-stopped'] as const;
export type SoakClientKind = (typeof SOAK_CLIENT_KINDS)[number];

/**
 * What each kind does, for the report, and its share of the soak's clients beyond one of each. Readers
 * that stop have no share (one client each): each holds slots for whole-context answers, and more of
 * them would leave the others little of the server.
 */
export const SOAK_MIX: Readonly<Record<SoakClientKind, { readonly share: number; readonly does: string }>> = {
  http: { share: 0.22, does: 'non-streaming POST /v1/completions' },
  sse: { share: 0.22, does: 'SSE stream, read as it comes' },
  ws: { share: 0.22, does: 'WebSocket /v1/stream, one long-lived socket per client, one request at a time' },
  'sse-cancel': { share: 0.08, does: 'SSE stream aborted after k tokens (k = 0, before any token, for a quarter of them)' },
  'ws-cancel': { share: 0.08, does: 'WebSocket `cancel` after k tokens (k as for sse-cancel); the server must answer `done` with finish_reason cancelled' },
  'sse-slow': { share: 0.08, does: 'SSE stream read with a 20-200 ms pause before every read: slow, but keeps up on average' },
  'ws-slow': { share: 0.06, does: 'WebSocket paused for 20-200 ms, then read for 20 ms, in turn' },
  'sse-stopped': { share: 0, does: 'SSE stream with top-20 logprobs up to the context length, not read at all for 90 s (or until the soak ends), then read to its end' },
  'ws-stopped': { share: 0, does: `a fresh WebSocket with 6 such requests at once, not read for 90 s (or until the soak ends), then read to its end` },
};

/**
 * How long a stopped reader reads nothing (or until the soak stops sending, if that comes first): long
 * enough, at the few tokens a second each sequence gets under saturation, for a stopped WebSocket's output
 * to fill the kernel's buffers (~4 MiB on Linux) and then the server's, and for the server to cut it.
 */
export const STOPPED_READER_PAUSE_MS = 90_000;
/** Requests a stopped WebSocket reader has open on its socket (the server allows 8 by default). */
const STOPPED_SOCKET_REQUESTS = 6;
/** Top log-probabilities per token asked by stopped readers: ~4x (SSE) to ~8x (WebSocket) the bytes per token. */
const STOPPED_READER_LOGPROBS = 20;
const SLOW_PAUSE_MS = [20, 200] as const;
const WS_SLOW_READ_MS = 20;
/**
 * A client whose request ended at once (a 429, a refused connection, a cancel before the first token)
 * waits out the rest of this before its next, so that a failing server is not hammered in a tight loop.
 */
const MIN_REQUEST_GAP_MS = 100;
/** Share of cancelling requests that cancel before their first token (while queued, most of them). */
const CANCEL_AT_ONCE = 0.25;

export interface SoakRequestRecord {
  readonly kind: SoakClientKind;
  /** Since the soak's start. */
  readonly sentAtMs: number;
  readonly e2eMs: number;
  /** Token messages received (SSE chunks with text, WebSocket `token`s); a non-streamed answer's usage. */
  readonly tokens: number;
  readonly events: readonly SoakEvent[];
  readonly outcome: SoakOutcome;
}

export interface SoakClientContext {
  readonly baseUrl: string;
  readonly model: string;
  /** performance.now() of the soak's start, for sentAtMs. */
  readonly startedAt: number;
  /** performance.now() after which no request is sent. */
  readonly sendUntil: number;
  /** performance.now() after which a request still open is given up (`timeout`). */
  readonly deadline: number;
  /** Largest max_tokens of an ordinary request; each draws its own from 1 to this. */
  readonly maxTokens: number;
  /** The model's context length: a stopped reader asks for all of it (the server caps max_tokens to the room left). */
  readonly contextTokens: number;
  /** Called with every finished request. */
  readonly record: (r: SoakRequestRecord) => void;
}

/** One client of `kind`: sends until ctx.sendUntil, one request (a stopped WebSocket: six) at a time. */
export async function runSoakClient(kind: SoakClientKind, ctx: SoakClientContext, rng: Rng): Promise<void> {
  let socket: WsStreamConnection | null = null;
  try {
    while (performance.now() < ctx.sendUntil) {
      const started = performance.now();
      switch (kind) {
        case 'http':
          await plainRequest(ctx, kind, ordinaryParams(ctx, rng));
          break;
        case 'sse':
          await sseRequest(ctx, kind, ordinaryParams(ctx, rng), {});
          break;
        case 'sse-cancel':
          await sseRequest(ctx, kind, { ...ordinaryParams(ctx, rng), maxTokens: ctx.maxTokens }, { cancelAfter: cancelPoint(ctx, rng) });
          break;
        case 'sse-slow':
          await sseRequest(ctx, kind, ordinaryParams(ctx, rng), { pauseMs: () => between(rng, SLOW_PAUSE_MS) });
          break;
        case 'sse-stopped':
          await sseRequest(ctx, kind, stoppedParams(ctx, rng), { stopped: true });
          break;
        case 'ws':
        case 'ws-cancel': {
          socket = await reusable(ctx, kind, socket);
          if (!socket) break;
          const cancelAfter = kind === 'ws-cancel' ? cancelPoint(ctx, rng) : undefined;
          await wsRequest(ctx, kind, socket, { ...ordinaryParams(ctx, rng), ...(cancelAfter !== undefined && { maxTokens: ctx.maxTokens }) }, cancelAfter);
          break;
        }
        case 'ws-slow':
        case 'ws-stopped':
          await onFreshSocket(ctx, kind, rng);
          break;
      }
      await sleep(Math.max(0, started + MIN_REQUEST_GAP_MS - performance.now()));
    }
  } finally {
    if (socket) await socket[Symbol.asyncDispose]();
  }
}

function ordinaryParams(ctx: SoakClientContext, rng: Rng): CompletionParams {
  return {
    model: ctx.model,
    prompt: LOAD_PROMPTS[Math.floor(rng.next() * LOAD_PROMPTS.length)]!.text,
    maxTokens: 1 + Math.floor(rng.next() * ctx.maxTokens),
    // Sampled (not greedy) so that answers vary, with a seed so that a soak can be repeated.
    temperature: 0.8,
    seed: Math.floor(rng.next() * 2 ** 31),
  };
}

function stoppedParams(ctx: SoakClientContext, rng: Rng): CompletionParams {
  return { ...ordinaryParams(ctx, rng), maxTokens: ctx.contextTokens, logprobs: STOPPED_READER_LOGPROBS };
}

function cancelPoint(ctx: SoakClientContext, rng: Rng): number {
  return rng.next() < CANCEL_AT_ONCE ? 0 : 1 + Math.floor(rng.next() * Math.max(1, ctx.maxTokens / 2));
}

function between(rng: Rng, [lo, hi]: readonly [number, number]): number {
  return lo + rng.next() * (hi - lo);
}

/** Collects one request's events and ends it exactly once, as a record. */
class RequestLog {
  readonly events: SoakEvent[] = [];
  tokens = 0;
  private readonly sentAt = performance.now();
  private ended = false;

  constructor(
    private readonly ctx: SoakClientContext,
    private readonly kind: SoakClientKind,
    private readonly reader: ReaderKind,
  ) {}

  add(e: SoakEvent): void {
    if (!this.ended) this.events.push(e);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.ctx.record({
      kind: this.kind,
      sentAtMs: this.sentAt - this.ctx.startedAt,
      e2eMs: performance.now() - this.sentAt,
      tokens: this.tokens,
      events: this.events,
      outcome: soakOutcome(this.events, this.reader),
    });
  }

  /** Calls `onTimeout` after logging `timeout`, when the request is still open at the soak's deadline. */
  deadline(onTimeout: () => void): { [Symbol.dispose](): void } {
    const timer = setTimeout(() => {
      this.add({ type: 'timeout' });
      onTimeout();
    }, Math.max(0, this.ctx.deadline - performance.now()));
    return { [Symbol.dispose]: () => clearTimeout(timer) };
  }
}

const completionAnswer = z.object({
  choices: z.array(z.object({ finish_reason: z.string().nullable() })).min(1),
  usage: z.object({ completion_tokens: z.number() }),
});

async function plainRequest(ctx: SoakClientContext, kind: SoakClientKind, p: CompletionParams): Promise<void> {
  const log = new RequestLog(ctx, kind, 'reading');
  const abort = new AbortController();
  using _deadline = log.deadline(() => abort.abort());
  try {
    const res = await fetch(new URL('/v1/completions', assertLoopback(ctx.baseUrl)), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(completionBody(p)),
      signal: abort.signal,
    });
    log.add({ type: 'status', status: res.status });
    const text = await res.text();
    if (res.status === 200) {
      const answer = completionAnswer.safeParse(parseJson(text));
      if (answer.success) {
        log.tokens = answer.data.usage.completion_tokens;
        log.add({ type: 'finish', reason: answer.data.choices[0]!.finish_reason ?? 'null' });
        log.add({ type: 'done' });
      } else log.add({ type: 'error', errorType: 'unreadable_answer', code: null });
    }
  } catch {
    if (!abort.signal.aborted) log.add({ type: 'closed' });
  }
  log.end();
}

interface SseReading {
  /** Cancel (abort the fetch) once this many token chunks have arrived; 0: as soon as the status line has. */
  readonly cancelAfter?: number;
  /** Wait this long before every read of the body. */
  readonly pauseMs?: () => number;
  /** Read nothing for STOPPED_READER_PAUSE_MS (or until sending stops), then everything. */
  readonly stopped?: boolean;
}

async function sseRequest(ctx: SoakClientContext, kind: SoakClientKind, p: CompletionParams, how: SseReading): Promise<void> {
  const log = new RequestLog(ctx, kind, how.stopped ? 'stopped' : 'reading');
  const abort = new AbortController();
  let cancelled = false;
  const cancel = () => {
    log.add({ type: 'cancel' });
    cancelled = true;
    abort.abort();
  };
  using _deadline = log.deadline(() => abort.abort());
  try {
    const res = await fetch(new URL('/v1/completions', assertLoopback(ctx.baseUrl)), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...completionBody(p), stream: true }),
      signal: abort.signal,
    });
    log.add({ type: 'status', status: res.status });
    if (res.status !== 200 || !res.body) {
      await res.body?.cancel();
      return log.end();
    }
    if (how.cancelAfter === 0) {
      cancel();
      return log.end();
    }
    if (how.stopped) await stoppedReaderPause(ctx);
    const pauseMs = how.pauseMs;
    const body = pauseMs ? slowly(res.body, pauseMs) : res.body;
    for await (const data of sseData(body)) {
      if (data === '[DONE]') {
        log.add({ type: 'done' });
        return log.end();
      }
      const chunk = sseChunk.safeParse(parseJson(data));
      if (!chunk.success) {
        log.add({ type: 'error', errorType: 'unreadable_event', code: null });
        return log.end();
      }
      if (chunk.data.error) {
        log.add({ type: 'error', errorType: chunk.data.error.type ?? null, code: chunk.data.error.code ?? null });
        return log.end();
      }
      for (const c of chunk.data.choices ?? []) {
        if ((c.text ?? '') !== '') log.tokens++;
        if (c.finish_reason) log.add({ type: 'finish', reason: c.finish_reason });
      }
      if (how.cancelAfter !== undefined && log.tokens >= how.cancelAfter) {
        cancel();
        return log.end();
      }
    }
    // The body ended without [DONE].
    log.add({ type: 'closed' });
  } catch {
    // An abort we made (cancel, deadline) has its event already; anything else is the connection's end.
    if (!cancelled && !abort.signal.aborted) log.add({ type: 'closed' });
  }
  log.end();
}

/** The body's chunks, each read only after a pause: a reader slower than the stream, in bursts. */
async function* slowly(body: AsyncIterable<Uint8Array>, pauseMs: () => number): AsyncGenerator<Uint8Array> {
  const it = body[Symbol.asyncIterator]();
  try {
    for (;;) {
      await sleep(pauseMs());
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  } finally {
    await it.return?.();
  }
}

/** A stopped reader reads nothing until STOPPED_READER_PAUSE_MS has passed or the soak stops sending. */
async function stoppedReaderPause(ctx: SoakClientContext): Promise<void> {
  await sleep(Math.max(0, Math.min(STOPPED_READER_PAUSE_MS, ctx.sendUntil - performance.now())));
}

/** The client's long-lived socket, or a new one if it has closed; null (and a record) if none opens. */
async function reusable(ctx: SoakClientContext, kind: SoakClientKind, socket: WsStreamConnection | null): Promise<WsStreamConnection | null> {
  if (socket?.isOpen) return socket;
  return openSocket(ctx, kind, 'reading');
}

async function openSocket(ctx: SoakClientContext, kind: SoakClientKind, reader: ReaderKind): Promise<WsStreamConnection | null> {
  try {
    return await WsStreamConnection.open(ctx.baseUrl);
  } catch (err) {
    // The request that would have gone on it is lost, or answered by the upgrade's status (429, 503).
    const log = new RequestLog(ctx, kind, reader);
    log.add(err instanceof WsUpgradeRefusedError ? { type: 'status', status: err.status } : { type: 'closed' });
    log.end();
    return null;
  }
}

/**
 * One request on a shared socket; resolves when it has ended. `cancelAfter`: send `cancel` once that
 * many tokens have arrived (0: right after sending), then wait for the server's answer to it.
 */
function wsRequest(ctx: SoakClientContext, kind: SoakClientKind, socket: WsStreamConnection, p: CompletionParams, cancelAfter?: number, reader: ReaderKind = 'reading'): Promise<void> {
  const log = new RequestLog(ctx, kind, reader);
  return new Promise<void>((resolve) => {
    let id = '';
    let cancelSent = false;
    const cancel = () => {
      if (cancelSent) return;
      cancelSent = true;
      log.add({ type: 'cancel' });
      socket.cancel(id);
    };
    const deadline = log.deadline(() => {
      socket.forget(id);
      end();
    });
    const end = () => {
      deadline[Symbol.dispose]();
      log.end();
      resolve();
    };
    id = socket.send({ type: 'completion', ...completionBody(p) }, {
      message: (m) => {
        if (m.type === 'token') {
          if (m.text !== '' || (m.token_ids?.length ?? 0) > 0) log.tokens++;
          if (cancelAfter !== undefined && log.tokens >= cancelAfter) cancel();
          return;
        }
        if (m.type === 'done') {
          log.add({ type: 'finish', reason: m.finish_reason ?? 'null' });
          log.add({ type: 'done' });
        } else log.add({ type: 'error', errorType: m.error.type ?? null, code: m.error.code ?? null });
        end();
      },
      closed: (code) => {
        log.add({ type: 'closed', code });
        end();
      },
    });
    if (cancelAfter === 0) cancel();
  });
}

/**
 * A reader that gets its own socket because it stops reading it: ws-slow pauses and resumes it in turn
 * around one request; ws-stopped sends six long requests and reads nothing for a while.
 */
async function onFreshSocket(ctx: SoakClientContext, kind: 'ws-slow' | 'ws-stopped', rng: Rng): Promise<void> {
  const reader: ReaderKind = kind === 'ws-stopped' ? 'stopped' : 'reading';
  const socket = await openSocket(ctx, kind, reader);
  if (!socket) return;
  await using _socket = socket;
  if (kind === 'ws-stopped') {
    socket.pause();
    const requests = Array.from({ length: STOPPED_SOCKET_REQUESTS }, () => wsRequest(ctx, kind, socket, stoppedParams(ctx, rng), undefined, reader));
    await stoppedReaderPause(ctx);
    socket.resume();
    await Promise.all(requests);
    return;
  }
  let open = true;
  const request = wsRequest(ctx, kind, socket, ordinaryParams(ctx, rng)).finally(() => (open = false));
  while (open) {
    socket.pause();
    await sleep(between(rng, SLOW_PAUSE_MS));
    socket.resume();
    await sleep(WS_SLOW_READ_MS);
  }
  await request;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
