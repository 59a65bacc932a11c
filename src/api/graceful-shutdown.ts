// SIGTERM: stop taking requests, give the running ones a while to finish, then cancel the rest so that
// every stream still ends with its final event (SSE: a chunk with finish_reason, then [DONE]; WebSocket:
// `done` with finish_reason "cancelled"), and only then close the listener and the sockets.
import type { FastifyInstance } from 'fastify';
import type { BatchEngine } from '../engine/batch-engine.js';

/** The answers being written: a shutdown waits for them after cancelling, so no stream is cut short. */
export class InFlight {
  private readonly open = new Set<Promise<unknown>>();

  track<T>(work: Promise<T>): Promise<T> {
    this.open.add(work);
    void work.finally(() => this.open.delete(work)).catch(() => undefined);
    return work;
  }

  get size(): number {
    return this.open.size;
  }

  /** Resolves true once every answer has been written, false after timeoutMs. */
  async settled(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.open.size > 0) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await Promise.race([Promise.allSettled([...this.open]), sleep(left)]);
    }
    return true;
  }
}

export interface ShutdownParts {
  readonly app: FastifyInstance;
  readonly engine: BatchEngine;
  readonly inFlight: InFlight;
  /** Flips the app into draining: new requests get 503, /health says 'draining'. */
  readonly startDraining: () => void;
  readonly drainMs: number;
  /** Resolves to end the drain early (a second signal). */
  readonly hurry?: Promise<void>;
  readonly log: (line: string) => void;
}

/** How long cancelled streams get to write their last events before the sockets close regardless. */
const FINAL_EVENTS_MS = 5000;

export async function shutDown(p: ShutdownParts): Promise<{ readonly cancelled: number }> {
  p.startDraining();
  const busy = () => p.engine.stats.running + p.engine.stats.waiting;
  if (busy() > 0) {
    p.log(`shutting down: refusing new requests; ${busy()} running or waiting get up to ${p.drainMs / 1000} s to finish`);
    await Promise.race([until(() => busy() === 0, p.drainMs), p.hurry ?? new Promise<void>(() => undefined)]);
  } else {
    p.log('shutting down: refusing new requests; none running');
  }
  const cancelled = busy();
  if (cancelled > 0) p.log(`cancelling ${cancelled} unfinished requests`);
  // Aborts whatever is left; each stream then ends with its final event.
  await p.engine[Symbol.asyncDispose]();
  if (!(await p.inFlight.settled(FINAL_EVENTS_MS))) p.log(`${p.inFlight.size} answers did not finish writing; closing their connections`);
  await p.app.close();
  return { cancelled };
}

/** Polls `done` until it holds or timeoutMs have passed. */
async function until(done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done() && Date.now() < deadline) await sleep(Math.min(50, deadline - Date.now()));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)).unref());
}
