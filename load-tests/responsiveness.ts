// How responsive the server stays while a run loads it: GET /health latency probed from the client every
// 20 ms, and the server's own event-loop delay (prom-client's histogram in GET /metrics, which restarts
// at each scrape: the scrape just before the run starts it, the one right after the run reads it).
import { setTimeout as sleep } from 'node:timers/promises';
import { parseExposition, sumOf, type Sample } from './metric-samples.js';
import { assertLoopback } from './loopback.js';
import { summarize, type Summary } from './percentiles.js';

export interface Responsiveness {
  /** GET /health round trips during the run, ms. */
  readonly healthMs: Summary;
  /** The server's event-loop delay during the run, ms (sampled every 1 ms); null without /metrics. */
  readonly eventLoopDelayMs: { readonly p50: number; readonly p99: number; readonly max: number } | null;
}

const PROBE_INTERVAL_MS = 20;

export function probeHealth(baseUrl: string): { stop(): Promise<Summary> } {
  const url = new URL('/health', assertLoopback(baseUrl));
  const times: number[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const t0 = performance.now();
      const ok = await fetch(url).then((r) => r.text().then(() => true), () => false);
      if (ok) times.push(performance.now() - t0);
      await sleep(PROBE_INTERVAL_MS);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return summarize(times);
    },
  };
}

/** The event-loop delay since the previous scrape of GET /metrics; null when the server has none. */
export async function eventLoopDelaySinceLastScrape(baseUrl: string): Promise<Responsiveness['eventLoopDelayMs']> {
  const res = await fetch(new URL('/metrics', assertLoopback(baseUrl)));
  if (res.status !== 200) {
    await res.body?.cancel();
    return null;
  }
  return eventLoopDelayOf(parseExposition(await res.text()));
}

/** The event-loop delay in one scrape of GET /metrics: since the scrape before it, ms. */
export function eventLoopDelayOf(samples: readonly Sample[]): NonNullable<Responsiveness['eventLoopDelayMs']> {
  const ms = (name: string) => sumOf(samples, name) * 1000;
  return { p50: ms('nodejs_eventloop_lag_p50_seconds'), p99: ms('nodejs_eventloop_lag_p99_seconds'), max: ms('nodejs_eventloop_lag_max_seconds') };
}
