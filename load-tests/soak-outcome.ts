// How a soak request ended, decided from what its client observed and nothing else: every request sent
// ends in exactly one outcome, and one that cannot be shown to have ended is LOST. A pure function of
// the client's event log, so the rules are tested on hand-written logs.

/** What a soak client saw of one request, in order. Token messages are counted apart, not logged. */
export type SoakEvent =
  /** The HTTP status line (non-streaming and SSE requests; a WebSocket upgrade refused with a status). */
  | { readonly type: 'status'; readonly status: number }
  /** A finish_reason: the SSE chunk that has one, a WebSocket `done`'s, a non-streamed body's. */
  | { readonly type: 'finish'; readonly reason: string }
  /** The answer's end: SSE `data: [DONE]`, the WebSocket `done` message, the whole non-streamed body. */
  | { readonly type: 'done' }
  /** An OpenAI error body: an SSE error event, a WebSocket `error` message, or what could not be read. */
  | { readonly type: 'error'; readonly errorType: string | null; readonly code: string | null }
  /** We cancelled it: aborted the SSE fetch (nothing after that is observable), or sent `cancel` on the socket. */
  | { readonly type: 'cancel' }
  /** The connection ended with the request open: EOF or reset (no code), or a WebSocket close and its code. */
  | { readonly type: 'closed'; readonly code?: number }
  /** Still open when its deadline passed (the soak's end plus the grace period); we gave up on it. */
  | { readonly type: 'timeout' };

export const SOAK_OUTCOMES = ['complete', 'rate-limited', 'cancelled', 'cut-slow', 'server-error', 'other-error', 'lost'] as const;
export type SoakOutcome = (typeof SOAK_OUTCOMES)[number];

/** How the client read its answer: only a client that stopped reading may be cut by the server. */
export type ReaderKind = 'reading' | 'stopped';

/**
 * The one outcome of a request, from its events; the first terminal event decides:
 * - a non-200 status or an error body: 429 (status, rate_limit_error or queue_full) is rate-limited,
 *   5xx (status or server_error) is server-error, anything else other-error;
 * - `done` after a `finish` is complete, unless the finish says 'cancelled' (the WebSocket's answer to
 *   our cancel): cancelled if we asked for it, other-error if we did not; `done` without a finish is a
 *   broken protocol (other-error);
 * - `closed` is cut-slow for a client that stopped reading (the server closing a connection that does not
 *   read is the expected end), LOST for one that was reading: the answer never arrived;
 * - `timeout` is LOST;
 * - no terminal event at all: cancelled after our `cancel` (an aborted SSE fetch hears nothing more),
 *   otherwise LOST.
 */
export function soakOutcome(events: readonly SoakEvent[], reader: ReaderKind): SoakOutcome {
  let finish: string | null = null;
  let cancelled = false;
  for (const e of events) {
    switch (e.type) {
      case 'status':
        if (e.status === 200) continue;
        return e.status === 429 ? 'rate-limited' : e.status >= 500 ? 'server-error' : 'other-error';
      case 'error':
        if (e.errorType === 'rate_limit_error' || e.code === 'queue_full') return 'rate-limited';
        return e.errorType === 'server_error' ? 'server-error' : 'other-error';
      case 'finish':
        finish = e.reason;
        continue;
      case 'cancel':
        cancelled = true;
        continue;
      case 'done':
        if (finish === null) return 'other-error';
        if (finish === 'cancelled') return cancelled ? 'cancelled' : 'other-error';
        return 'complete';
      case 'closed':
        return reader === 'stopped' ? 'cut-slow' : 'lost';
      case 'timeout':
        return 'lost';
    }
  }
  return cancelled ? 'cancelled' : 'lost';
}

/** Requests per outcome, every outcome present (zeros included), in SOAK_OUTCOMES order. */
export type OutcomeCounts = Record<SoakOutcome, number>;

export function emptyCounts(): OutcomeCounts {
  return Object.fromEntries(SOAK_OUTCOMES.map((o) => [o, 0])) as OutcomeCounts;
}
