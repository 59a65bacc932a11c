// Before measuring: the id the server serves its model under, and one streamed request so that first-use
// costs land in no measurement.
import { z } from 'zod';
import { assertLoopback } from './loopback.js';
import { LOAD_PROMPTS } from './prompts.js';
import { OK } from './request-record.js';
import { sseCompletion } from './stream-client.js';

const modelList = z.object({ data: z.array(z.object({ id: z.string() })).min(1) });

export async function modelId(baseUrl: string): Promise<string> {
  const res = await fetch(new URL('/v1/models', assertLoopback(baseUrl)));
  return modelList.parse(await res.json()).data[0]!.id;
}

/**
 * One streamed request before measuring, so that neither the server's first-use costs nor the client's
 * (the first fetch of a process loads undici and compiles its stream code) land in the first run.
 */
export async function warmUp(baseUrl: string, model: string, maxTokens: number): Promise<void> {
  const r = await sseCompletion(baseUrl, { model, prompt: LOAD_PROMPTS[0]!.text, maxTokens, temperature: 0, seed: 0 }, AbortSignal.timeout(120_000));
  if (r.outcome !== OK) throw new Error(`the warm-up request to ${baseUrl} failed: ${r.outcome}`);
}
