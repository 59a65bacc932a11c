// When requests are sent: closed-loop (C workers, each sending its next request when its last one
// ends) or open-loop Poisson arrivals at a given rate (exponential gaps from a seeded RNG), with at most
// C in flight as vLLM's benchmark does with --max-concurrency. Every run stops at a deadline and at a
// request count, whichever comes first; requests already sent are awaited (each is bounded by its
// max_tokens and by the abort signal the caller gives it).
import { setTimeout as sleep } from 'node:timers/promises';
import { createRng, type Rng } from '../src/engine/sampler.js';

export type ArrivalMode = 'closed' | 'poisson';

export interface ArrivalPlan {
  readonly mode: ArrivalMode;
  /** Closed loop: the number of workers. Poisson: the most requests in flight at once. */
  readonly concurrency: number;
  /** Poisson only: mean arrivals per second. */
  readonly ratePerSecond?: number;
  /** No request is sent after this many milliseconds from the start. */
  readonly durationMs: number;
  /** No more than this many requests in all. */
  readonly maxRequests: number;
  /** Seed of the Poisson gaps, so a run's arrival times can be repeated. */
  readonly seed?: number;
}

/** Sends request number `index`; resolves when it has ended, whatever its outcome. */
export type SendRequest = (index: number) => Promise<void>;

export interface DriveResult {
  readonly sent: number;
  /** From the first send until the last request ended. */
  readonly wallMs: number;
}

/** Inter-arrival gaps of a Poisson process with `ratePerSecond`, in milliseconds: -ln(1 - U) / rate. */
export function* poissonGapsMs(ratePerSecond: number, rng: Rng): Generator<number, never> {
  if (!(ratePerSecond > 0) || !Number.isFinite(ratePerSecond)) throw new RangeError(`a Poisson rate must be a positive number of requests per second, got ${ratePerSecond}`);
  for (;;) yield (-Math.log(1 - rng.next()) / ratePerSecond) * 1000;
}

export async function drive(plan: ArrivalPlan, send: SendRequest): Promise<DriveResult> {
  const start = performance.now();
  const deadline = start + plan.durationMs;
  const sent = plan.mode === 'closed' ? await closedLoop(plan, deadline, send) : await poissonArrivals(plan, deadline, send);
  return { sent, wallMs: performance.now() - start };
}

async function closedLoop(plan: ArrivalPlan, deadline: number, send: SendRequest): Promise<number> {
  let next = 0;
  const worker = async () => {
    while (next < plan.maxRequests && performance.now() < deadline) await send(next++);
  };
  await Promise.all(Array.from({ length: plan.concurrency }, worker));
  return next;
}

async function poissonArrivals(plan: ArrivalPlan, deadline: number, send: SendRequest): Promise<number> {
  if (plan.ratePerSecond === undefined) throw new RangeError('Poisson arrivals need a rate (requests per second)');
  const gaps = poissonGapsMs(plan.ratePerSecond, createRng(plan.seed ?? 0));
  const inFlight = new Set<Promise<void>>();
  let arrival = performance.now();
  let sent = 0;
  while (sent < plan.maxRequests) {
    arrival += gaps.next().value;
    if (arrival >= deadline) break;
    const wait = arrival - performance.now();
    if (wait > 0) await sleep(wait);
    // Past the concurrency cap an arrival waits for a slot (vLLM's semaphore); its latency starts when sent.
    while (inFlight.size >= plan.concurrency) await Promise.race(inFlight);
    if (performance.now() >= deadline) break;
    const p = send(sent++).finally(() => inFlight.delete(p));
    inFlight.add(p);
  }
  await Promise.all(inFlight);
  return sent;
}
