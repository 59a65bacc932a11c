// The loadtest command line: node:util parseArgs for the syntax, zod for the values, a typed error that
// names the flag and says what was expected.
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { POLICY_NAMES, type PolicyName } from '../src/experts/policies/index.js';
import { UsageError } from '../src/cli/cli-error.js';
import { deviceKind, parseFlag } from '../src/cli/model-options.js';
import { DEVICE_KINDS, type DeviceKind } from '../src/runtime/onnx-runtime.js';
import type { ArrivalMode } from './arrivals.js';

export const CLIENT_KINDS = ['http', 'sse', 'ws'] as const;
export type ClientKind = (typeof CLIENT_KINDS)[number];

export const LOADTEST_HELP = `Usage: npm run loadtest -- [options]

Starts one moe-serve server per (policy, budget) on a free 127.0.0.1 port, runs the same workload
against each (every concurrency x every client), stops it, and writes report.md, report.html and
results.json.

  --policies LIST     expert-cache policies: ${POLICY_NAMES.join(', ')} (default: all of them)
  --budgets LIST      expert-cache budgets, percentages of all expert bytes (default 10%,25%,50%)
  --concurrency LIST  closed loop: requests in flight; poisson: most in flight (default 1,8,32)
  --duration TIME     each run's time bound, e.g. 500ms, 30s, 2m; at most 10m (default 30s)
  --requests N        each run's request-count bound (default 1000)
  --max-tokens N      max_tokens of every request (default 32)
  --client LIST       http (autocannon, non-streaming), sse, ws (default http,sse)
  --mode MODE         closed | poisson: how the streaming clients send (default closed)
  --rate R            poisson only: mean requests per second
  --seed N            Poisson arrival seed and request seeds (default 0)
  --model DIR         model directory (default: the embedded tiny-moe)
  --device NAME       the server's execution provider: ${DEVICE_KINDS.join(' | ')} (default cpu)
  --max-seqs N        the server's --max-seqs (default: the server's)
  --max-queue N       the server's --max-queue (default: the server's)
  --out DIR           where to write the report (default load-tests/results/<timestamp>)
  --keep-traces       keep the servers' routing traces beside the report (default: deleted after use)
  --smoke             a few seconds: lru, 25%, concurrency 2, 3s, http and sse (other flags still apply)
`;

export interface LoadtestOptions {
  readonly policies: readonly PolicyName[];
  /** Percentages of all expert bytes, 0 < b <= 100. */
  readonly budgetsPercent: readonly number[];
  readonly concurrency: readonly number[];
  readonly durationMs: number;
  readonly maxRequests: number;
  readonly maxTokens: number;
  readonly clients: readonly ClientKind[];
  readonly mode: ArrivalMode;
  readonly ratePerSecond?: number;
  readonly seed: number;
  readonly modelDir?: string;
  readonly device: DeviceKind;
  readonly maxSeqs?: number;
  readonly maxQueue?: number;
  readonly outDir?: string;
  readonly keepTraces: boolean;
  readonly smoke: boolean;
  readonly help: boolean;
}

const MAX_DURATION_MS = 10 * 60_000;
const SMOKE = { policies: 'lru', budgets: '25%', concurrency: '2', duration: '3s', requests: '200', 'max-tokens': '16', client: 'http,sse' } as const;
const DEFAULTS = { policies: POLICY_NAMES.join(','), budgets: '10%,25%,50%', concurrency: '1,8,32', duration: '30s', requests: '1000', 'max-tokens': '32', client: 'http,sse' } as const;

const budget = z
  .string()
  .regex(/^\d+(\.\d+)?%$/, 'expected a percentage of all expert bytes, like 25%')
  .transform((s) => Number.parseFloat(s))
  .refine((p) => p > 0 && p <= 100, 'a budget must be more than 0% and at most 100%');
const positiveInt = z.coerce.number().int().min(1);
const duration = z
  .string()
  .regex(/^\d+(\.\d+)?(ms|s|m)$/, 'expected a time like 500ms, 30s or 2m')
  .transform((s) => Number.parseFloat(s) * (s.endsWith('ms') ? 1 : s.endsWith('m') ? 60_000 : 1000))
  .refine((ms) => ms >= 100 && ms <= MAX_DURATION_MS, 'a run must last from 100ms to 10m');
const policy = z.enum(POLICY_NAMES, { message: `expected one of ${POLICY_NAMES.join(', ')}` });
const client = z.enum(CLIENT_KINDS, { message: `expected one of ${CLIENT_KINDS.join(', ')}` });

function parseList<T>(flag: string, schema: z.ZodType<T>, value: string): T[] {
  const items = value.split(',').map((s) => s.trim());
  if (items.some((s) => s === '')) throw new UsageError(`--${flag}: expected a comma-separated list without empty items (got ${JSON.stringify(value)})`);
  const parsed = items.map((s) => parseFlag(flag, schema, s));
  if (new Set(items).size !== items.length) throw new UsageError(`--${flag}: an item is repeated (got ${JSON.stringify(value)})`);
  return parsed;
}

export function parseLoadtestArgs(argv: readonly string[]): LoadtestOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        policies: { type: 'string' },
        budgets: { type: 'string' },
        concurrency: { type: 'string' },
        duration: { type: 'string' },
        requests: { type: 'string' },
        'max-tokens': { type: 'string' },
        client: { type: 'string' },
        mode: { type: 'string', default: 'closed' },
        rate: { type: 'string' },
        seed: { type: 'string', default: '0' },
        model: { type: 'string' },
        device: { type: 'string', default: 'cpu' },
        'max-seqs': { type: 'string' },
        'max-queue': { type: 'string' },
        out: { type: 'string' },
        'keep-traces': { type: 'boolean', default: false },
        smoke: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const base = values.smoke ? SMOKE : DEFAULTS;
  const flag = <K extends keyof typeof DEFAULTS>(k: K): string => values[k] ?? base[k];
  const mode = parseFlag('mode', z.enum(['closed', 'poisson'], { message: 'expected closed or poisson' }), values.mode);
  const rate = values.rate === undefined ? undefined : parseFlag('rate', z.coerce.number().positive().max(10_000), values.rate);
  if (mode === 'poisson' && rate === undefined) throw new UsageError('--mode poisson needs --rate R (mean requests per second)');
  if (mode === 'closed' && rate !== undefined) throw new UsageError('--rate applies to --mode poisson only');
  const optionalInt = (name: 'max-seqs' | 'max-queue') => (values[name] === undefined ? undefined : parseFlag(name, positiveInt, values[name]));
  return {
    policies: parseList('policies', policy, flag('policies')),
    budgetsPercent: parseList('budgets', budget, flag('budgets')),
    concurrency: parseList('concurrency', positiveInt.max(1024), flag('concurrency')),
    durationMs: parseFlag('duration', duration, flag('duration')),
    maxRequests: parseFlag('requests', positiveInt, flag('requests')),
    maxTokens: parseFlag('max-tokens', positiveInt.max(4096), flag('max-tokens')),
    clients: parseList('client', client, flag('client')),
    mode,
    ratePerSecond: rate,
    seed: parseFlag('seed', z.coerce.number().int().min(0), values.seed),
    modelDir: values.model,
    device: parseFlag('device', deviceKind, values.device),
    maxSeqs: optionalInt('max-seqs'),
    maxQueue: optionalInt('max-queue'),
    outDir: values.out,
    keepTraces: values['keep-traces'],
    smoke: values.smoke,
    help: values.help,
  };
}
