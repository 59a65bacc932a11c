// `moe-serve bench <suite>`: speed measurements that print one JSON line per configuration and a table.
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { generate } from '../engine/generate.js';
import { MoeModel } from '../engine/moe-model.js';
import { UsageError } from './cli-error.js';
import { benchBatch } from './bench-batch.js';
import { BENCH_PROMPTS } from './bench-prompts.js';
import { benchOffload } from './bench-offload.js';
import { intFlag, MODEL_OPTIONS, MODEL_OPTIONS_HELP, modelOptions, numberFlag, parseFlag, SCHEDULER_OPTIONS, schedulerOptions } from './model-options.js';
import { round } from './bench-format.js';

export const BENCH_HELP = `Usage: moe-serve bench decode|offload|batch [options]

decode: batch-1 prompt and decode tokens/s. Greedy, end-of-sequence ignored so every run decodes
the same number of tokens; one warm-up run, then --runs measured runs per prompt.

offload: the expert cache at a budget (--budget, default 25% of expert bytes): decode tokens/s, hit
ratio, prefetch recall and waste for lru, lfu and static with prefetch off and on, and the 'none' and
'all' bounds; Belady's offline optimum at the same budget from the routing trace of the run.
  --budget F         budget as a fraction of all expert bytes (default 0.25)

batch: continuous batching: output tokens/s with C requests in flight against the same C requests one
after another (both with the expert cache at --budget), distinct experts per layer per step, and the
event-loop delay while the engine runs.
  --concurrency LIST comma-separated request counts (default 1,4,16,64)
  --max-batch-tokens N  most tokens per engine step (default 512)

  --tokens N         tokens to generate per run (default 128)
  --runs N           measured runs per prompt (default 3)
  --threads LIST     comma-separated CPU thread counts to compare, 0 = automatic (default 0)
${MODEL_OPTIONS_HELP.split('\n').filter((l) => !l.includes('--threads')).join('\n')}
`;


interface DecodeRow {
  readonly bench: 'decode';
  readonly device: string;
  readonly threads: number;
  readonly prompt_tokens: number;
  readonly prompt_tokens_per_s: number;
  readonly decode_tokens: number;
  readonly decode_tokens_per_s: number;
  readonly ms_per_token: number;
}

export async function benchCommand(argv: readonly string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: [...argv],
    options: {
      ...MODEL_OPTIONS,
      threads: { type: 'string', default: '0' },
      tokens: { type: 'string', default: '128' },
      runs: { type: 'string', default: '3' },
      budget: { type: 'string', default: '0.25' },
      concurrency: { type: 'string', default: '1,4,16,64' },
      'max-batch-tokens': SCHEDULER_OPTIONS['max-batch-tokens'],
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(BENCH_HELP);
    return;
  }
  const suite = positionals[0];
  if (suite === 'offload') {
    const opts = modelOptions(values);
    const budget = parseFlag('budget', numberFlag(0, 1).refine((f) => f > 0, 'must be greater than 0'), values.budget);
    await benchOffload(opts.modelDir, opts.device, opts.cpuThreads, budget, parseFlag('tokens', intFlag(1), values.tokens));
    return;
  }
  if (suite === 'batch') {
    const opts = modelOptions(values);
    await benchBatch({
      modelDir: opts.modelDir,
      device: opts.device,
      cpuThreads: opts.cpuThreads,
      budgetFraction: parseFlag('budget', numberFlag(0, 1).refine((f) => f > 0, 'must be greater than 0'), values.budget),
      tokens: parseFlag('tokens', intFlag(1), values.tokens),
      concurrency: parseFlag('concurrency', z.array(intFlag(1)).min(1), values.concurrency.split(',')),
      maxBatchTokens: schedulerOptions(values).maxBatchTokens,
    });
    return;
  }
  if (suite !== 'decode') throw new UsageError(`unknown bench suite '${suite ?? ''}' (available: decode, offload, batch)`);
  const tokens = parseFlag('tokens', intFlag(1), values.tokens);
  const runs = parseFlag('runs', intFlag(1), values.runs);
  const threadList = parseFlag('threads', z.array(intFlag(0)).min(1), values.threads.split(','));
  const rows: DecodeRow[] = [];
  for (const threads of threadList) {
    const opts = modelOptions({ ...values, threads: String(threads) });
    rows.push(await benchDecode(opts.modelDir, opts.device, threads, tokens, runs));
    process.stdout.write(`${JSON.stringify(rows[rows.length - 1])}\n`);
  }
  process.stdout.write(`\n${table(rows)}\n`);
}

async function benchDecode(modelDir: string, device: 'cpu' | 'webgpu' | 'cuda', threads: number, tokens: number, runs: number): Promise<DecodeRow> {
  await using model = await MoeModel.load(modelDir, { device, cpuThreads: threads });
  // No end-of-sequence: every run decodes exactly `tokens` tokens.
  const noEos = Object.create(model, { eosTokenIds: { value: [] } }) as MoeModel;
  let promptTokens = 0;
  let promptMs = 0;
  let decodeSteps = 0;
  let decodeMs = 0;
  for (const prompt of BENCH_PROMPTS.slice(0, 4)) {
    const promptIds = model.tokenizer.encode(prompt);
    for (let run = 0; run <= runs; run++) {
      const stream = generate(noEos, { promptIds, maxTokens: tokens, sampling: { temperature: 0, topP: 1, topK: 0 } });
      let step = await stream.next();
      while (!step.done) step = await stream.next();
      if (run === 0) continue; // warm-up: first-run allocations and session caches
      const t = step.value.timings;
      promptTokens += t.promptTokens;
      promptMs += t.promptMs;
      decodeSteps += t.decodeSteps;
      decodeMs += t.decodeMs;
    }
  }
  return {
    bench: 'decode',
    device,
    threads,
    prompt_tokens: promptTokens,
    prompt_tokens_per_s: round((promptTokens * 1000) / promptMs),
    decode_tokens: decodeSteps,
    decode_tokens_per_s: round((decodeSteps * 1000) / decodeMs),
    ms_per_token: round(decodeMs / decodeSteps, 3),
  };
}

function table(rows: readonly DecodeRow[]): string {
  const head = '| device | threads | prompt tokens/s | decode tokens/s | ms/token |\n|---|---|---|---|---|';
  return [head, ...rows.map((r) => `| ${r.device} | ${r.threads} | ${r.prompt_tokens_per_s} | ${r.decode_tokens_per_s} | ${r.ms_per_token} |`)].join('\n');
}
