// Options shared by every command that loads a model, validated with zod.
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { ComputeOptions } from '../engine/compute-options.js';
import type { ExpertCacheOptions, ModelLoadOptions } from '../engine/moe-model.js';
import { DEFAULT_MISS_PLACEMENT, MISS_PLACEMENTS, type MissPlacementMode } from '../engine/miss-placement.js';
import { COMPUTE_DTYPES, computeDType } from '../model/compute-form.js';
import { checkScheme } from '../model/quantization.js';
import { DEFAULT_POLICY, POLICY_NAMES } from '../experts/policies/index.js';
import { DEFAULT_PASS_OVER_LIMIT, type SchedulerConfig } from '../scheduler/scheduler.js';
import { DEVICE_KINDS, type DeviceKind } from '../runtime/onnx-runtime.js';
import { UsageError } from './cli-error.js';

/** The embedded default model, found relative to this file (compiled to dist/src/cli/) so it works from any working directory. */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../../models/tiny-moe', import.meta.url));

export const MODEL_OPTIONS = {
  model: { type: 'string' },
  device: { type: 'string', default: 'cpu' },
  threads: { type: 'string', default: '0' },
  'expert-cache-mb': { type: 'string' },
  'expert-cache-fraction': { type: 'string' },
  'expert-policy': { type: 'string', default: DEFAULT_POLICY },
  'prefetch-depth': { type: 'string', default: '1' },
  'host-cache-mb': { type: 'string' },
  'cpu-expert-cache-mb': { type: 'string' },
  'expert-profile': { type: 'string' },
  'weight-dtype': { type: 'string' },
  'expert-dtype': { type: 'string' },
  'attention-dtype': { type: 'string' },
  'block-size': { type: 'string' },
  'zero-points': { type: 'boolean' },
  'miss-placement': { type: 'string', default: DEFAULT_MISS_PLACEMENT },
} as const;

export const MODEL_OPTIONS_HELP = `  --model DIR        Hugging Face model directory (default: the embedded tiny-moe)
  --device NAME      execution provider: ${DEVICE_KINDS.join(' | ')} (default cpu)
  --threads N        CPU provider threads; 0 = automatic: 1 for small models, else one per core (default 0)

Compute forms (README "Compute forms"):
  --weight-dtype T   ${COMPUTE_DTYPES.join(' | ')}: LM head, dense and shared-expert MLPs, and attention
                     (default: a quantized checkpoint's own form, else the provider's)
  --attention-dtype T  the attention projections alone (default: --weight-dtype when given)
  --expert-dtype T   ${COMPUTE_DTYPES.join(' | ')}: routed experts (default as for --weight-dtype)
  --block-size N     elements per scale when quantizing float weights (default 32)
  --zero-points      quantize with a zero point per block (asymmetric; default symmetric)

Expert cache:
  --expert-cache-mb N          device budget for routed experts, MiB (default: all experts fit)
  --expert-cache-fraction F    the same as a fraction of all expert bytes, 0 < F <= 1
  --expert-policy NAME         ${POLICY_NAMES.join(' | ')} (default ${DEFAULT_POLICY})
  --prefetch-depth N           router lookahead over the next N sparse layers, 0 = off (default 1)
  --host-cache-mb N            host-memory budget for experts in stored form (default: keep all read)
  --expert-profile FILE        routing profile for 'static': a --trace file or training_report.json
                               (default: the model's training_report.json)
  --miss-placement MODE        GPU providers: where an expert that misses the cache is computed:
                               ${MISS_PLACEMENTS.join(' | ')}: load it into the cache, run it on the CPU from host
                               memory, or choose per miss by measured cost (default ${DEFAULT_MISS_PLACEMENT})
  --cpu-expert-cache-mb N      GPU providers: host memory for misses computed on the CPU kept in its form,
                               so that the next use is not made ready again; 0 = keep none (default:
                               what half of the free memory leaves after the host tier)`;

export interface ModelOptions {
  readonly modelDir: string;
  readonly device: DeviceKind;
  readonly cpuThreads: number;
  readonly experts: ExpertCacheOptions;
  readonly compute: ComputeOptions;
  readonly missPlacement: MissPlacementMode;
}

/** What MoeModel.load takes from these options. */
export function loadOptions(o: ModelOptions): ModelLoadOptions {
  return { device: o.device, cpuThreads: o.cpuThreads, experts: o.experts, compute: o.compute, missPlacement: o.missPlacement };
}

type ModelFlagValues = { [K in keyof typeof MODEL_OPTIONS]?: (typeof MODEL_OPTIONS)[K]['type'] extends 'boolean' ? boolean | undefined : string | undefined };

/** Parses a flag's string value with a zod schema, naming the flag when it is wrong. */
export function parseFlag<T>(flag: string, schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new UsageError(`--${flag}: ${r.error.issues[0]?.message ?? 'invalid value'} (got ${JSON.stringify(value)})`);
  return r.data;
}

export const intFlag = (min: number) => z.coerce.number().int().min(min);
export const numberFlag = (min: number, max: number) => z.coerce.number().min(min).max(max);

function optionalFlag<T>(flag: string, schema: z.ZodType<T>, value: string | undefined): T | undefined {
  return value === undefined ? undefined : parseFlag(flag, schema, value);
}

const positiveMb = z.coerce.number().positive();

/** An execution provider's name (--device). */
export const deviceKind = z.enum(DEVICE_KINDS as [DeviceKind, ...DeviceKind[]], { message: `expected one of ${DEVICE_KINDS.join(', ')}` });

export function modelOptions(values: ModelFlagValues): ModelOptions {
  if (values['expert-cache-mb'] !== undefined && values['expert-cache-fraction'] !== undefined) {
    throw new UsageError('give --expert-cache-mb or --expert-cache-fraction, not both');
  }
  return {
    modelDir: values.model ?? DEFAULT_MODEL_DIR,
    device: parseFlag('device', deviceKind, values.device),
    cpuThreads: parseFlag('threads', intFlag(0), values.threads ?? '0'),
    experts: {
      policy: parseFlag('expert-policy', z.enum(POLICY_NAMES, { message: `expected one of ${POLICY_NAMES.join(', ')}` }), values['expert-policy'] ?? DEFAULT_POLICY),
      budgetMb: optionalFlag('expert-cache-mb', positiveMb, values['expert-cache-mb']),
      budgetFraction: optionalFlag('expert-cache-fraction', numberFlag(0, 1).refine((f) => f > 0, 'must be greater than 0'), values['expert-cache-fraction']),
      prefetchDepth: parseFlag('prefetch-depth', intFlag(0).max(8), values['prefetch-depth'] ?? '1'),
      hostCacheMb: optionalFlag('host-cache-mb', positiveMb, values['host-cache-mb']),
      cpuCacheMb: optionalFlag('cpu-expert-cache-mb', z.coerce.number().min(0), values['cpu-expert-cache-mb']),
      profilePath: values['expert-profile'],
    },
    compute: computeOptions(values),
    missPlacement: parseFlag('miss-placement', z.enum(MISS_PLACEMENTS, { message: `expected one of ${MISS_PLACEMENTS.join(', ')}` }), values['miss-placement'] ?? DEFAULT_MISS_PLACEMENT),
  };
}

/** The compute-form flags; shared by every command that loads a model and by `quantize`. */
export function computeOptions(values: Pick<ModelFlagValues, 'weight-dtype' | 'expert-dtype' | 'attention-dtype' | 'block-size' | 'zero-points'>): ComputeOptions {
  const blockSize = optionalFlag('block-size', intFlag(16), values['block-size']);
  if (blockSize !== undefined) {
    try {
      checkScheme({ bits: 4, blockSize, zeroPoints: false });
    } catch (err) {
      throw new UsageError(`--block-size: ${(err as Error).message}`);
    }
  }
  return {
    weightDtype: optionalFlag('weight-dtype', computeDType, values['weight-dtype']),
    expertDtype: optionalFlag('expert-dtype', computeDType, values['expert-dtype']),
    attentionDtype: optionalFlag('attention-dtype', computeDType, values['attention-dtype']),
    ...(blockSize !== undefined && { blockSize }),
    ...(values['zero-points'] && { zeroPoints: true }),
  };
}

/** Continuous-batching limits, for the commands that run the batching engine. */
export const SCHEDULER_OPTIONS = {
  'max-batch-tokens': { type: 'string', default: '512' },
  'max-seqs': { type: 'string', default: '16' },
  'max-queue': { type: 'string', default: '64' },
  'expert-aware-scheduling': { type: 'boolean', default: false },
  'pass-over-limit': { type: 'string' },
} as const;

export const SCHEDULER_OPTIONS_HELP = `Batching:
  --max-batch-tokens N         most tokens per engine step: prompt chunks plus one per decoding sequence (default 512)
  --max-seqs N                 most sequences running at once (default 16)
  --max-queue N                most requests waiting; beyond it requests are refused at once (default 64)
  --expert-aware-scheduling    admit first the waiting request whose experts (predicted from its prompt's
                               token ids) are most resident in the expert cache, within the per-client rule
                               (default off: oldest first)
  --pass-over-limit N          with --expert-aware-scheduling: times a request may be passed over by younger
                               ones before it goes first; 0 = oldest first (default ${DEFAULT_PASS_OVER_LIMIT})`;

type SchedulerFlagValues = { [K in keyof typeof SCHEDULER_OPTIONS]?: (typeof SCHEDULER_OPTIONS)[K]['type'] extends 'boolean' ? boolean | undefined : string | undefined };

export function schedulerOptions(values: SchedulerFlagValues): SchedulerConfig {
  if (values['pass-over-limit'] !== undefined && !values['expert-aware-scheduling']) {
    throw new UsageError('--pass-over-limit applies with --expert-aware-scheduling only');
  }
  return {
    maxBatchTokens: parseFlag('max-batch-tokens', intFlag(1), values['max-batch-tokens'] ?? SCHEDULER_OPTIONS['max-batch-tokens'].default),
    maxSeqs: parseFlag('max-seqs', intFlag(1), values['max-seqs'] ?? SCHEDULER_OPTIONS['max-seqs'].default),
    maxQueue: parseFlag('max-queue', intFlag(1), values['max-queue'] ?? SCHEDULER_OPTIONS['max-queue'].default),
    ...(values['expert-aware-scheduling'] && { expertAware: { passOverLimit: parseFlag('pass-over-limit', intFlag(0), values['pass-over-limit'] ?? String(DEFAULT_PASS_OVER_LIMIT)) } }),
  };
}
