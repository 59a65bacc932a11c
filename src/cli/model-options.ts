// Options shared by every command that loads a model, validated with zod.
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { DEVICE_KINDS, type DeviceKind } from '../runtime/onnx-runtime.js';
import { UsageError } from './cli-error.js';

/** The embedded default model, found relative to this file (compiled to dist/src/cli/) so it works from any working directory. */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../../models/tiny-moe', import.meta.url));

export const MODEL_OPTIONS = {
  model: { type: 'string' },
  device: { type: 'string', default: 'cpu' },
  threads: { type: 'string', default: '0' },
} as const;

export const MODEL_OPTIONS_HELP = `  --model DIR        Hugging Face model directory (default: the embedded tiny-moe)
  --device NAME      execution provider: ${DEVICE_KINDS.join(' | ')} (default cpu)
  --threads N        CPU provider threads; 0 = automatic: 1 for small models, else one per core (default 0)`;

export interface ModelOptions {
  readonly modelDir: string;
  readonly device: DeviceKind;
  readonly cpuThreads: number;
}

/** Parses a flag's string value with a zod schema, naming the flag when it is wrong. */
export function parseFlag<T>(flag: string, schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new UsageError(`--${flag}: ${r.error.issues[0]?.message ?? 'invalid value'} (got ${JSON.stringify(value)})`);
  return r.data;
}

export const intFlag = (min: number) => z.coerce.number().int().min(min);
export const numberFlag = (min: number, max: number) => z.coerce.number().min(min).max(max);

export function modelOptions(values: { model?: string | undefined; device?: string | undefined; threads?: string | undefined }): ModelOptions {
  return {
    modelDir: values.model ?? DEFAULT_MODEL_DIR,
    device: parseFlag('device', z.enum(DEVICE_KINDS as [DeviceKind, ...DeviceKind[]], { message: `expected one of ${DEVICE_KINDS.join(', ')}` }), values.device),
    cpuThreads: parseFlag('threads', intFlag(0), values.threads ?? '0'),
  };
}
