// Runs a model through the engine over the benchmark prompts with a routing trace (router lookahead of
// one layer recorded, nothing prefetched) and computes the trace's routing statistics.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { greedyDecode } from '../src/cli/bench-decode.js';
import { BENCH_PROMPTS } from '../src/cli/bench-prompts.js';
import { MoeModel } from '../src/engine/moe-model.js';
import { readTrace } from '../src/experts/replay/read-trace.js';
import { routingStats, type RoutingStats } from '../src/experts/routing-stats.js';

export interface RoutingMeasurement {
  readonly stats: RoutingStats;
  /** The first prompt and its greedy continuation, to see what the model writes. */
  readonly sample: string;
  readonly seconds: number;
}

/**
 * Bounded memory whatever the model's size: at most this many MiB of experts in compute form and in
 * stored form (the cache policy does not change routing, only where experts live).
 */
const EXPERT_CACHE_MB = 1024;
const HOST_CACHE_MB = 512;

export async function measureRouting(modelDir: string, prompts: number, tokens: number): Promise<RoutingMeasurement> {
  const started = performance.now();
  const dir = await mkdtemp(join(tmpdir(), 'moe-serve-routing-'));
  try {
    const tracePath = join(dir, 'trace.jsonl');
    const texts = BENCH_PROMPTS.slice(0, prompts);
    let sample = '';
    {
      await using model = await MoeModel.load(modelDir, {
        device: 'cpu',
        experts: { policy: 'lru', budgetMb: EXPERT_CACHE_MB, hostCacheMb: HOST_CACHE_MB, prefetchDepth: 0, lookaheadDepth: 1 },
      });
      await using trace = await model.openTrace(tracePath);
      const run = await greedyDecode(model, texts, tokens, 0, () => trace.request());
      const traceError = await trace.close();
      if (traceError) throw traceError;
      sample = `${texts[0] ?? ''}${model.tokenizer.decode(run.outputs[0] ?? [])}`;
    }
    const trace = await readTrace(tracePath);
    return { stats: routingStats(trace.header, trace.lines), sample, seconds: (performance.now() - started) / 1000 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
