// `moe-serve bench <suite>`: speed measurements that print one JSON line per configuration and a table.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { UsageError } from './cli-error.js';
import { benchBatch } from './bench-batch.js';
import { benchDecodeRow, decodeTable, parseFormPairs, type DecodeRow, type FormPair } from './bench-decode.js';
import { benchKernelRoute, benchKernels, KERNEL_SHAPES } from './bench-kernels.js';
import { benchGpu, DEFAULT_PCIE_GBPS, GPU_SECTIONS } from './bench-gpu.js';
import { benchOffload } from './bench-offload.js';
import { benchPeaks, PEAK_OPTIONS, PEAK_OPTIONS_HELP, peakOptions } from './bench-peaks.js';
import { benchPrefix } from './bench-prefix.js';
import { BENCH_PROMPTS } from './bench-prompts.js';
import { benchQuant } from './bench-quant.js';
import { benchScale } from './bench-scale.js';
import { computeOptions, DEFAULT_MODEL_DIR, intFlag, loadOptions, MODEL_OPTIONS, MODEL_OPTIONS_HELP, modelOptions, numberFlag, parseFlag, SCHEDULER_OPTIONS, schedulerOptions } from './model-options.js';

export const BENCH_HELP = `Usage: moe-serve bench decode|offload|batch|quant|kernels|scale|prefix|peaks|gpu [options]

decode: batch-1 prompt and decode tokens/s, and where each token's time goes (session runs by kind,
sampling, the JavaScript between runs). Greedy, end-of-sequence ignored so every run decodes the same
number of tokens; one warm-up run, then --runs measured runs per prompt.
  --forms LIST       weights/experts[/attention] compute forms to compare, e.g. f32/f32,int8/int4/f32
                     (default: the --weight-dtype/--expert-dtype/--attention-dtype flags, else the provider's)

offload: the expert cache at a budget (--budget, default 25% of expert bytes): decode tokens/s, hit
ratio, prefetch recall and waste for lru, lfu, next-use and static with prefetch off and on, and the 'none' and
'all' bounds; Belady's offline optimum at the same budget from the routing trace of the run.
  --budget F         budget as a fraction of all expert bytes (default 0.25)

batch: continuous batching: output tokens/s with C requests in flight against the same C requests one
after another (both with the expert cache at --budget), distinct experts per layer per step, and the
event-loop delay while the engine runs.
  --concurrency LIST comma-separated request counts (default 1,4,16,64)
  --max-batch-tokens N  most tokens per engine step (default 512)

quant: per compute form (--forms, default f32/f32,f16/f16,int8/int8,int8/int4,f32/int4,int4/int4):
greedy agreement with the first form over --tokens tokens on 20 prompts, last-position logit error,
greedy agreement with transformers (the model's reference file, if any), perplexity on held-out text,
bytes of experts and of all weights, decode tokens/s at batch 1 and 16 with the cache at 100% and --budget.
  --tokens N         greedy tokens per prompt (default 64 here)
  --ppl-tokens N     held-out tokens for perplexity (default 4096)
  --reference FILE   transformers' greedy reference (default: test/fixtures/tiny-moe-reference.json for tiny-moe)

kernels: one routed expert per compute route (f32/f16 weights as inputs, f32 and int8/int4 prepacked
sessions at accuracy levels 4 and 0, int8/int4 as inputs): microseconds per expert at 1 and 16 rows,
GB/s of stored bytes, session creation time, resident memory per cached expert.
  --shapes LIST      expert shapes HxI (default ${KERNEL_SHAPES.join(',')}; add 4096x14336 for Mixtral)

scale: a real \`moe-serve serve\` child over HTTP on 127.0.0.1, as a user runs a model bigger than memory:
the disk's cold sequential read speed (dd iflag=direct), load time and time to first token after start,
greedy streamed decode tokens/s at each batch size (openai client), disk bytes per token, achieved disk
MB/s against the sequential speed, device and host hit ratios, peak RSS and peak cgroup memory.
Model and --peak-* flags given here and serve flags after -- go to the server, e.g.
  moe-serve bench scale --model DIR --memory-limit-mb 4096 -- --expert-dtype int4 --host-cache-mb 2048
  --model DIR          required here
  --memory-limit-mb N  run the server in a memory cgroup of N MiB, page cache included (root; cgroup v1 or v2)
  --batch LIST         requests in flight at once, one phase each (default 1,8)
  --rounds N           times each batch is sent (default 1)
  --tokens N           greedy tokens per request (default 32 here)
  --compare-unlimited  run the greedy prompts again on a server without the limit; fail unless identical.
                       Pin the compute forms (e.g. -- --expert-dtype f32): without a limit every expert
                       may fit, and the defaults then choose another form (serve's log says which)
  --resident-baseline  also run the batches on a server without the limit and with every expert loaded at
                       start (--expert-policy all), and report each batch's decode time against the bound
                       (disk bytes per token / sequential bandwidth + that all-resident time per token)

prefix: multi-turn chat sessions (the model's chat template, greedy) replayed on an engine with the
prefix cache and on one without, one request at a time, alternating which goes first each turn; each
engine's replies become its own history. Per turn: time to first token with and without, prompt tokens
computed, cached tokens, and the share of the prompt the previous turn's prompt and reply held. Fails
unless both engines generate the same tokens. End-of-sequence is ignored, so every reply is
--reply-tokens long and the history grows the same way on every run. Texts are built from a fixed pool of
documentation sentences; sessions share no prefix unless --shared-system.
  --sessions N         chat sessions (default 3)
  --turns N            user turns per session (default 4)
  --system-tokens N    system prompt length, about (default 300)
  --user-tokens N      each user message's length, about (default 40)
  --reply-tokens N     tokens generated per turn (max_tokens; default 32)
  --shared-system      every session starts from the same system prompt
  --prefix-cache-mb N  the prefix cache's budget (default 64)
  --max-batch-tokens N most tokens per engine step, so prompt chunk size (default 512)

peaks: this machine's peak memory bandwidth (worker threads copying 512 MiB arrays; onnxruntime fp32
MatMul of one row by a 1 GiB matrix) and fp32 FLOP rate (onnxruntime MatMul 2048 x 2048), with 1 thread
and every core, and the --peak-memory-gbps / --peak-tflops flags that pass the best figures on.

gpu: the GPU path (--device defaults to webgpu here; README "The GPU path"). upload: host -> device GB/s
by transfer size, pieces per transfer and runs. decode: batch 1 and --batch-size decode tokens/s with
every expert resident, session runs per token, greedy agreement with the CPU provider at f32. offload: at
--budget, every miss uploaded (lru + prefetch), hybrid (--miss-placement auto and cpu with prefetch, auto
without), 'none' and 'all': decode tokens/s, misses on the CPU / loaded, CPU misses kept and ms each,
session runs per token, MB to device per token, load GB/s, and the PCIe bound.
  --sections LIST    ${GPU_SECTIONS.join(',')} (default all)
  --batch-size N     the batched decode's requests in flight (default 16)
  --pcie-gbps X      host -> device link rate for the bound (default ${DEFAULT_PCIE_GBPS}: PyTorch's pinned copy on the
                     H100 machine, PLATFORM.md)

Every suite that runs engine steps also prints S-MBU and S-MFU (MoE-CAP's sparsity-aware bandwidth and
FLOP utilization; README "Utilization") against:
${PEAK_OPTIONS_HELP}

  --tokens N         tokens to generate per run (default 128)
  --runs N           measured runs per prompt (default 3)
  --threads LIST     comma-separated CPU thread counts to compare, 0 = automatic (default 0)
${MODEL_OPTIONS_HELP.split('\n').filter((l) => !l.includes('--threads')).join('\n')}
`;

export async function benchCommand(argv: readonly string[]): Promise<void> {
  // Flags after -- belong to the server that `bench scale` starts.
  const separator = argv.indexOf('--');
  const own = separator < 0 ? argv : argv.slice(0, separator);
  const serveFlags = separator < 0 ? [] : argv.slice(separator + 1);
  const { values, positionals, tokens: parsed } = parseArgs({
    args: [...own],
    tokens: true,
    options: {
      ...MODEL_OPTIONS,
      ...PEAK_OPTIONS,
      threads: { type: 'string', default: '0' },
      tokens: { type: 'string' },
      runs: { type: 'string', default: '3' },
      budget: { type: 'string', default: '0.25' },
      concurrency: { type: 'string', default: '1,4,16,64' },
      forms: { type: 'string' },
      'ppl-tokens': { type: 'string', default: '4096' },
      reference: { type: 'string' },
      shapes: { type: 'string', default: KERNEL_SHAPES.join(',') },
      'kernel-route': { type: 'string' },
      'max-batch-tokens': SCHEDULER_OPTIONS['max-batch-tokens'],
      'memory-limit-mb': { type: 'string' },
      batch: { type: 'string', default: '1,8' },
      rounds: { type: 'string', default: '1' },
      'compare-unlimited': { type: 'boolean', default: false },
      'resident-baseline': { type: 'boolean', default: false },
      sessions: { type: 'string', default: '3' },
      turns: { type: 'string', default: '4' },
      'system-tokens': { type: 'string', default: '300' },
      'user-tokens': { type: 'string', default: '40' },
      'reply-tokens': { type: 'string', default: '32' },
      'shared-system': { type: 'boolean', default: false },
      'prefix-cache-mb': { type: 'string', default: '64' },
      sections: { type: 'string', default: GPU_SECTIONS.join(',') },
      'batch-size': { type: 'string', default: '16' },
      'pcie-gbps': { type: 'string', default: String(DEFAULT_PCIE_GBPS) },
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
  if (serveFlags.length > 0 && suite !== 'scale') throw new UsageError('flags after -- are serve flags, for bench scale only');
  const budget = () => parseFlag('budget', numberFlag(0, 1).refine((f) => f > 0, 'must be greater than 0'), values.budget);
  const tokens = (dflt: number) => parseFlag('tokens', intFlag(1), values.tokens ?? String(dflt));
  const opts = modelOptions(values);
  const peaks = peakOptions(values);
  switch (suite) {
    case 'offload':
      await benchOffload(opts.modelDir, loadOptions(opts), budget(), tokens(128), peaks);
      return;
    case 'batch':
      await benchBatch({
        modelDir: opts.modelDir,
        load: loadOptions(opts),
        budgetFraction: budget(),
        tokens: tokens(128),
        concurrency: parseFlag('concurrency', z.array(intFlag(1)).min(1), values.concurrency.split(',')),
        maxBatchTokens: schedulerOptions(values).maxBatchTokens,
        peaks,
      });
      return;
    case 'quant': {
      const defaultReference = join(DEFAULT_MODEL_DIR, '..', '..', 'test', 'fixtures', 'tiny-moe-reference.json');
      await benchQuant({
        modelDir: opts.modelDir,
        load: loadOptions(opts),
        forms: parseFormPairs(values.forms ?? 'f32/f32,f16/f16,int8/int8,int8/int4,f32/int4,int4/int4').map((form) => computeOptions({ ...values, ...formFlags(form, values) })),
        tokens: tokens(64),
        budget: budget(),
        pplTokens: parseFlag('ppl-tokens', intFlag(2), values['ppl-tokens']),
        referencePath: values.reference ?? (opts.modelDir === DEFAULT_MODEL_DIR && existsSync(defaultReference) ? defaultReference : null),
        peaks,
      });
      return;
    }
    case 'kernels':
      if (values['kernel-route'] !== undefined) {
        await benchKernelRoute(values.shapes ?? '', parseFlag('kernel-route', intFlag(0), values['kernel-route']), parseFlag('threads', intFlag(0), values.threads.split(',')[0]));
        return;
      }
      await benchKernels((values.shapes ?? KERNEL_SHAPES.join(",")).split(","), parseFlag('threads', intFlag(0), values.threads.split(',')[0]));
      return;
    case 'scale': {
      if (values.model === undefined) throw new UsageError('bench scale needs --model DIR (the model to serve)');
      // Model and peak flags given before -- are the server's too (everything but --model, which the bench passes).
      const forwarded = parsed.flatMap((t) =>
        t.kind === 'option' && t.name !== 'model' && (t.name in MODEL_OPTIONS || t.name in PEAK_OPTIONS || t.name === 'max-batch-tokens') ? [t.rawName, ...(t.value === undefined ? [] : [t.value])] : [],
      );
      await benchScale({
        modelDir: values.model,
        memoryLimitMb: values['memory-limit-mb'] === undefined ? null : parseFlag('memory-limit-mb', z.coerce.number({ message: 'expected a number of MiB' }).positive(), values['memory-limit-mb']),
        batches: parseFlag('batch', z.array(intFlag(1)).min(1), values.batch.split(',')),
        tokens: tokens(32),
        rounds: parseFlag('rounds', intFlag(1), values.rounds),
        compareUnlimited: values['compare-unlimited'],
        residentBaseline: values['resident-baseline'],
        serveArgs: [...forwarded, ...serveFlags],
      });
      return;
    }
    case 'prefix':
      await benchPrefix({
        modelDir: opts.modelDir,
        load: loadOptions(opts),
        sessions: parseFlag('sessions', intFlag(1), values.sessions),
        turns: parseFlag('turns', intFlag(1), values.turns),
        systemTokens: parseFlag('system-tokens', intFlag(1), values['system-tokens']),
        userTokens: parseFlag('user-tokens', intFlag(1), values['user-tokens']),
        replyTokens: parseFlag('reply-tokens', intFlag(1), values['reply-tokens']),
        sharedSystem: values['shared-system'],
        prefixCacheMb: parseFlag('prefix-cache-mb', z.coerce.number().positive('must be a positive number of MiB'), values['prefix-cache-mb']),
        maxBatchTokens: schedulerOptions(values).maxBatchTokens,
        peaks,
      });
      return;
    case 'peaks':
      await benchPeaks();
      return;
    case 'gpu': {
      const deviceGiven = parsed.some((t) => t.kind === 'option' && t.name === 'device');
      await benchGpu({
        modelDir: opts.modelDir,
        load: { ...loadOptions(opts), device: deviceGiven ? opts.device : 'webgpu' },
        sections: new Set(parseFlag('sections', z.array(z.enum(GPU_SECTIONS, { message: `expected some of ${GPU_SECTIONS.join(', ')}` })).min(1), values.sections.split(','))),
        budgetFraction: budget(),
        tokens: tokens(64),
        runs: parseFlag('runs', intFlag(1), values.runs),
        batch: parseFlag('batch-size', intFlag(1), values['batch-size']),
        pcieGbps: parseFlag('pcie-gbps', z.coerce.number().positive(), values['pcie-gbps']),
      });
      return;
    }
    case 'decode':
      break;
    default:
      throw new UsageError(`unknown bench suite '${suite ?? ''}' (available: decode, offload, batch, quant, kernels, scale, prefix, peaks, gpu)`);
  }
  const runs = parseFlag('runs', intFlag(1), values.runs);
  const threadList = parseFlag('threads', z.array(intFlag(0)).min(1), values.threads.split(','));
  const forms = values.forms === undefined ? [null] : parseFormPairs(values.forms);
  const rows: DecodeRow[] = [];
  for (const threads of threadList) {
    for (const form of forms) {
      const o = modelOptions({ ...values, threads: String(threads), ...(form && formFlags(form, values)) });
      rows.push(await benchDecodeRow(o.modelDir, loadOptions(o), threads, BENCH_PROMPTS.slice(0, 4), tokens(128), runs, peaks));
      process.stdout.write(`${JSON.stringify(rows[rows.length - 1])}\n`);
    }
  }
  process.stdout.write(`\n${decodeTable(rows)}\n`);
}

/** The dtype flags of a --forms entry, where 'default' leaves a class to its flag or the provider. */
function formFlags(form: FormPair, flags: { 'weight-dtype'?: string; 'expert-dtype'?: string; 'attention-dtype'?: string }) {
  const pick = (v: string | undefined, flag: string | undefined) => (v === undefined || v === 'default' ? flag : v);
  return {
    'weight-dtype': pick(form.weights, flags['weight-dtype']),
    'expert-dtype': pick(form.experts, flags['expert-dtype']),
    'attention-dtype': pick(form.attention, flags['attention-dtype']),
  };
}
