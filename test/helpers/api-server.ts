// The API app on a real loopback port with the batching engine, for tests that talk to it as clients do.
import type { AddressInfo } from 'node:net';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { buildApp, type AppDeps } from '../../src/api/build-app.js';
import { BatchEngine } from '../../src/engine/batch-engine.js';
import type { MoeModel } from '../../src/engine/moe-model.js';
import { PrefixCache } from '../../src/engine/prefix-cache.js';

export const MODEL_NAME = 'tiny-moe';

export interface TestServer {
  client: OpenAI;
  engine: BatchEngine;
  /** http://127.0.0.1:PORT */
  origin: string;
  /** origin + /v1 */
  baseURL: string;
  close(): Promise<void>;
}

export interface TestServerOptions extends Partial<Omit<AppDeps, 'serving' | 'modelName'>> {
  maxSeqs?: number;
  maxQueue?: number;
  /** Prefix-cache budget; default none. */
  prefixCacheBytes?: number;
}

export async function startServer(model: MoeModel, opts: TestServerOptions = {}): Promise<TestServer> {
  const { maxSeqs, maxQueue, prefixCacheBytes, ...deps } = opts;
  const prefixCache = prefixCacheBytes ? new PrefixCache(prefixCacheBytes) : undefined;
  const engine = new BatchEngine(model, { maxBatchTokens: 256, maxSeqs: maxSeqs ?? 8, maxQueue: maxQueue ?? 32 }, { prefixCache });
  const app = buildApp({ ...deps, serving: () => ({ model, engine }), modelName: MODEL_NAME });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const origin = `http://127.0.0.1:${port}`;
  return {
    client: new OpenAI({ baseURL: `${origin}/v1`, apiKey: opts.apiKey ?? 'unused', maxRetries: 0 }),
    engine,
    origin,
    baseURL: `${origin}/v1`,
    close: async () => {
      await app.close();
      await engine[Symbol.asyncDispose]();
    },
  };
}

/** Polls until the engine has nothing running or waiting (a cancelled request leaves at the next step). */
export async function engineIdle(engine: BatchEngine, timeoutMs = 5000): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (engine.stats.running + engine.stats.waiting > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  return engine.stats.running + engine.stats.waiting === 0;
}

/** The API error a client call fails with; fails the test if the call succeeds or fails otherwise. */
export async function apiErrorOf(p: Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  try {
    await p;
  } catch (err) {
    if (err instanceof OpenAI.APIError) return err;
    throw err;
  }
  assert.fail('the request succeeded');
}
