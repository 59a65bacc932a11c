// The client side of `bench scale`: streamed greedy completions through the official openai client, and
// the expert-cache counters of GET /v1/experts, read as any client would.
import type OpenAI from 'openai';
import { z } from 'zod';
import { ratio } from '../experts/expert-stats.js';
import { BENCH_PROMPTS } from './bench-prompts.js';

/** A request a slow disk may take long over; the server, not this timeout, should be what is measured. */
const REQUEST_TIMEOUT_MS = 30 * 60_000;

export type RequestResult =
  | { readonly ok: true; readonly prompt: string; readonly text: string; readonly tokens: number; readonly startMs: number; readonly firstTokenMs: number; readonly endMs: number }
  | { readonly ok: false; readonly prompt: string; readonly error: string };

export interface ScaleClient {
  readonly baseUrl: string;
  readonly modelName: string;
  complete(prompt: string, maxTokens: number): Promise<RequestResult>;
  expertTotals(): Promise<ExpertTotals | null>;
}

/** Loads the openai package lazily: it is a devDependency, absent from a production install. */
export async function connect(baseUrl: string, apiKey: string | undefined): Promise<ScaleClient> {
  let OpenAIClient: typeof OpenAI;
  try {
    OpenAIClient = (await import('openai')).default;
  } catch (err) {
    throw new Error(`bench scale drives the server with the 'openai' package, which is not installed (it is a devDependency: run npm install): ${(err as Error).message}`);
  }
  const client = new OpenAIClient({ baseURL: `${baseUrl}/v1`, apiKey: apiKey ?? 'unused', maxRetries: 0, timeout: REQUEST_TIMEOUT_MS });
  const modelName = (await client.models.list()).data[0]?.id;
  if (modelName === undefined) throw new Error(`${baseUrl}/v1/models lists no model`);
  const headers: Record<string, string> = apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` };
  return {
    baseUrl,
    modelName,
    complete: (prompt, maxTokens) => streamGreedy(client, modelName, prompt, maxTokens),
    expertTotals: () => readExpertTotals(baseUrl, headers),
  };
}

async function streamGreedy(client: OpenAI, model: string, prompt: string, maxTokens: number): Promise<RequestResult> {
  const startMs = performance.now();
  try {
    // ignore_eos (vLLM's extension, which the server takes): every request decodes exactly maxTokens.
    const body = { model, prompt, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true }, ignore_eos: true } as const;
    const stream = await client.completions.create(body as Omit<typeof body, 'ignore_eos'>);
    let text = '';
    let firstTokenMs: number | null = null;
    let tokens: number | null = null;
    for await (const chunk of stream) {
      const piece = chunk.choices[0]?.text ?? '';
      if (piece !== '' && firstTokenMs === null) firstTokenMs = performance.now();
      text += piece;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
    const endMs = performance.now();
    if (tokens === null) return { ok: false, prompt, error: 'the stream ended without a usage chunk' };
    return { ok: true, prompt, text, tokens, startMs, firstTokenMs: firstTokenMs ?? endMs, endMs };
  } catch (err) {
    return { ok: false, prompt, error: err instanceof Error ? err.message : String(err) };
  }
}

/** The prompt of request `k` of round `r` at batch `b`: consecutive bench prompts, wrapping around. */
export function promptFor(batch: number, round: number, k: number): string {
  return BENCH_PROMPTS[(round * batch + k) % BENCH_PROMPTS.length] ?? '';
}

export interface DecodePhase {
  readonly batch: number;
  readonly rounds: number;
  readonly results: readonly RequestResult[];
  readonly wallMs: number;
  /** Per round, from the first token of any request to the end of the last; summed over rounds. */
  readonly decodeWindowMs: number;
}

/** `batch` requests in flight at once, `rounds` times over. */
export async function runDecodePhase(client: ScaleClient, batch: number, rounds: number, tokens: number): Promise<DecodePhase> {
  const results: RequestResult[] = [];
  let wallMs = 0;
  let decodeWindowMs = 0;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const round = await Promise.all(Array.from({ length: batch }, (_, k) => client.complete(promptFor(batch, r, k), tokens)));
    wallMs += performance.now() - t0;
    const ok = round.filter((x) => x.ok);
    if (ok.length > 0) decodeWindowMs += Math.max(...ok.map((x) => x.endMs)) - Math.min(...ok.map((x) => x.firstTokenMs));
    results.push(...round);
  }
  return { batch, rounds, results, wallMs, decodeWindowMs };
}

/** The counters of ExpertCacheStats.total this bench uses; the host and disk ones are newer, so optional. */
const expertTotalsSchema = z.object({
  total: z.object({
    accesses: z.number(),
    hits: z.number(),
    bytesFromDisk: z.number(),
    hostHits: z.number().optional(),
    hostMisses: z.number().optional(),
    diskReads: z.number().optional(),
    diskBusyMs: z.number().optional(),
  }),
});

export interface ExpertTotals {
  readonly accesses: number;
  readonly hits: number;
  readonly bytesFromDisk: number;
  readonly hostHits: number | null;
  readonly hostMisses: number | null;
  readonly diskReads: number | null;
  readonly diskBusyMs: number | null;
}

async function readExpertTotals(baseUrl: string, headers: Record<string, string>): Promise<ExpertTotals | null> {
  try {
    const res = await fetch(`${baseUrl}/v1/experts`, { headers, signal: AbortSignal.timeout(30_000) });
    if (res.status !== 200) return null;
    const t = expertTotalsSchema.parse(await res.json()).total;
    return { ...t, hostHits: t.hostHits ?? null, hostMisses: t.hostMisses ?? null, diskReads: t.diskReads ?? null, diskBusyMs: t.diskBusyMs ?? null };
  } catch {
    return null;
  }
}

export interface ExpertDelta {
  readonly bytesFromDisk: number;
  readonly diskReads: number | null;
  /** Time with at least one expert read in flight; null where the server does not count it. */
  readonly diskBusyMs: number | null;
  readonly deviceHitRatio: number | null;
  readonly hostHitRatio: number | null;
  /** Bytes from disk over the time reads were in flight, MB/s (10^6). */
  readonly diskMbPerS: number | null;
}

/** What happened between two readings of the counters. */
export function expertDelta(before: ExpertTotals, after: ExpertTotals): ExpertDelta {
  const diff = (a: number | null, b: number | null) => (a === null || b === null ? null : a - b);
  const hostHits = diff(after.hostHits, before.hostHits);
  const hostMisses = diff(after.hostMisses, before.hostMisses);
  const busyMs = diff(after.diskBusyMs, before.diskBusyMs);
  const bytesFromDisk = after.bytesFromDisk - before.bytesFromDisk;
  return {
    bytesFromDisk,
    diskReads: diff(after.diskReads, before.diskReads),
    diskBusyMs: busyMs,
    deviceHitRatio: ratio(after.hits - before.hits, after.accesses - before.accesses),
    hostHitRatio: hostHits === null || hostMisses === null ? null : ratio(hostHits, hostHits + hostMisses),
    diskMbPerS: busyMs === null || busyMs <= 0 ? null : bytesFromDisk / 1e6 / (busyMs / 1000),
  };
}
