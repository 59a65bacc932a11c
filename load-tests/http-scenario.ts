// Non-streaming completions under autocannon: C keep-alive connections, each sending its next request
// as soon as its last one is answered (closed loop), cycling through the prompt set, bounded by a
// duration and a request count. Latency here is e2e only: a non-streamed answer has no token times.
import autocannon from 'autocannon';
import { z } from 'zod';
import { assertLoopback } from './loopback.js';
import type { RequestRecord } from './request-record.js';
import type { CompletionParams } from './stream-client.js';

export interface HttpScenario {
  readonly baseUrl: string;
  readonly connections: number;
  readonly durationMs: number;
  readonly maxRequests: number;
  /** Request number i sends params(i). */
  readonly params: (index: number) => CompletionParams;
  /** Seconds before an unanswered request counts as a timeout. */
  readonly timeoutSeconds: number;
}

export interface HttpScenarioResult {
  readonly records: readonly RequestRecord[];
  readonly wallMs: number;
}

const completionBody = z.object({ usage: z.object({ completion_tokens: z.number() }) });

export async function runHttpScenario(s: HttpScenario): Promise<HttpScenarioResult> {
  const url = new URL('/v1/completions', assertLoopback(s.baseUrl));
  let next = 0;
  // Each connection has its own context object and one request in flight: its send time lives there.
  const sentAt = new WeakMap<object, number>();
  const records: RequestRecord[] = [];
  const started = performance.now();
  const result = await autocannon({
    url: url.href,
    connections: s.connections,
    // autocannon ends at whichever comes first (it checks its clock once a second).
    duration: s.durationMs / 1000,
    maxOverallRequests: Math.max(s.maxRequests, s.connections),
    timeout: s.timeoutSeconds,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    requests: [
      {
        method: 'POST',
        setupRequest: (req, context) => {
          const p = s.params(next++);
          sentAt.set(context, performance.now());
          return { ...req, body: JSON.stringify({ model: p.model, prompt: p.prompt, max_tokens: p.maxTokens, temperature: p.temperature, seed: p.seed }) };
        },
        onResponse: (status, body, context) => {
          const parsed = status === 200 ? completionBody.safeParse(safeJson(body)) : undefined;
          records.push({
            outcome: String(status),
            ttftMs: null,
            e2eMs: performance.now() - (sentAt.get(context) ?? started),
            outputTokens: parsed?.success ? parsed.data.usage.completion_tokens : 0,
            itlMs: [],
          });
        },
      },
    ],
  });
  const wallMs = performance.now() - started;
  // Connection errors and timeouts have no response; in-flight requests cut when the run stops are
  // neither (autocannon does not count them).
  const failures: RequestRecord[] = Array.from({ length: result.errors }, () => ({ outcome: 'network', ttftMs: null, e2eMs: 0, outputTokens: 0, itlMs: [] }));
  return { records: [...records, ...failures], wallMs };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
