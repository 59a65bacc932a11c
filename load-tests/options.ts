// The loadtest command line: node:util parseArgs for the syntax, zod for the values, a typed error that
// names the flag and says what was expected.
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { POLICY_NAMES, type PolicyName } from '../src/experts/policies/index.js';
import { UsageError } from '../src/cli/cli-error.js';
import { deviceKind, parseFlag } from '../src/cli/model-options.js';
import { DEVICE_KINDS, type DeviceKind } from '../src/runtime/onnx-runtime.js';
import type { ArrivalMode } from './arrivals.js';
import { SOAK_CLIENT_KINDS } from './soak-clients.js';

export const CLIENT_KINDS = ['http', 'sse', 'ws'] as const;
export type ClientKind = (typeof CLIENT_KINDS)[number];

/** How the server admits waiting requests: oldest first, or `serve --expert-aware-scheduling`. */
export const SCHEDULING_KINDS = ['fifo', 'expert'] as const;
export type SchedulingKind = (typeof SCHEDULING_KINDS)[number];

/** The soak's client count beyond the server's --max-seqs, so that some requests always wait. */
export const SOAK_EXTRA_CLIENTS = 8;
/** One client of each kind. */
export const SOAK_MIN_CLIENTS = SOAK_CLIENT_KINDS.length;
const SOAK_MAX_TOKENS = 256;

export const LOADTEST_HELP = `Usage: npm run loadtest -- [options]

Starts one moe-serve server per (policy, budget, scheduling) on a free 127.0.0.1 port, runs the same workload
against each (every concurrency x every client), stops it, and writes report.md, report.html and
results.json.

  --policies LIST     expert-cache policies: ${POLICY_NAMES.join(', ')} (default: all of them); NAME@N
                      also sets the server's --prefetch-depth N (default: the server's, 1)
  --budgets LIST      expert-cache budgets, percentages of all expert bytes (default 10%,25%,50%)
  --scheduling LIST   the server's admission order: fifo (oldest first), expert (serve
                      --expert-aware-scheduling); one server per (policy, budget, scheduling) (default fifo)
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

Soak test (one server, saturated for a long time; writes report.md, rss.svg and results.json):
  --soak TIME         run for TIME, e.g. 90s, 30m, 2h (5s to 24h), with a fixed mix of clients: http,
                      sse, ws, cancelling (sse and ws), slow readers (sse and ws) and readers that stop
                      reading (sse and ws). Exits 0 only if no request got a 5xx or another error
                      (429s are allowed), none was lost (every request ended complete, 429, cancelled
                      by us, or cut by the server for not reading), RSS grew less than 10% after the
                      warm-up (the first 10% of the run, at most 2 minutes), and the server had nothing
                      left running after the last answer. Default --out load-tests/results/soak-<time>.
  With --soak:        --concurrency N   clients at once, at least ${SOAK_MIN_CLIENTS} (default: the server's max-seqs + ${SOAK_EXTRA_CLIENTS})
                      --max-tokens N    largest max_tokens of a request; each draws 1..N (default ${SOAK_MAX_TOKENS})
                      --policies P, --budgets B   one each (default: the server's: next-use, every expert fits)
                      --seed, --model, --device, --max-seqs, --max-queue, --out as above
`;

/** Flags of the policy comparison that mean nothing to a soak. */
const NOT_WITH_SOAK = ['scheduling', 'duration', 'requests', 'client', 'mode', 'rate', 'smoke', 'keep-traces'] as const;

export interface SoakOptions {
  readonly durationMs: number;
  /** Clients at once; undefined: the server's --max-seqs plus SOAK_EXTRA_CLIENTS. */
  readonly clients?: number;
  /** The server's defaults when undefined. */
  readonly policy?: PolicyName;
  readonly budgetPercent?: number;
  /** Largest max_tokens of an ordinary request. */
  readonly maxTokens: number;
}

/** A policy with, optionally, its prefetch depth: `next-use@0`. */
export interface CacheConfig {
  readonly policy: PolicyName;
  /** The server's --prefetch-depth; its default when undefined. */
  readonly prefetchDepth?: number;
  /** As given (`next-use@0`): how runs and reports name it. */
  readonly label: string;
}

export interface LoadtestOptions {
  readonly policies: readonly CacheConfig[];
  /** Percentages of all expert bytes, 0 < b <= 100. */
  readonly budgetsPercent: readonly number[];
  readonly schedulings: readonly SchedulingKind[];
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
  /** Set by --soak: one server, saturated for a long time (the other run flags do not apply). */
  readonly soak: SoakOptions | null;
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
const TIME_SPAN = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const toMs = (s: string) => {
  const [, n, unit] = TIME_SPAN.exec(s)!;
  return Number.parseFloat(n!) * UNIT_MS[unit!]!;
};
const duration = z
  .string()
  .regex(TIME_SPAN, 'expected a time like 500ms, 30s or 2m')
  .transform(toMs)
  .refine((ms) => ms >= 100 && ms <= MAX_DURATION_MS, 'a run must last from 100ms to 10m');
const soakDuration = z
  .string()
  .regex(TIME_SPAN, 'expected a time like 90s, 30m or 2h')
  .transform(toMs)
  .refine((ms) => ms >= 5000 && ms <= 24 * 3_600_000, 'a soak must last from 5s to 24h');
const policy = z.enum(POLICY_NAMES, { message: `expected one of ${POLICY_NAMES.join(', ')}` });
const cacheConfig = z
  .string()
  .regex(/^[a-z-]+(@\d)?$/, 'expected a policy name, optionally with @ and a prefetch depth 0-8, like next-use@0')
  .transform((label, ctx): CacheConfig => {
    const [name, depth] = label.split('@');
    const parsed = policy.safeParse(name);
    if (!parsed.success) {
      ctx.addIssue({ code: 'custom', message: `expected one of ${POLICY_NAMES.join(', ')}` });
      return z.NEVER;
    }
    return { policy: parsed.data, label, ...(depth !== undefined && { prefetchDepth: Number(depth) }) };
  });
const scheduling = z.enum(SCHEDULING_KINDS, { message: `expected one of ${SCHEDULING_KINDS.join(', ')}` });
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
        scheduling: { type: 'string' },
        concurrency: { type: 'string' },
        duration: { type: 'string' },
        requests: { type: 'string' },
        'max-tokens': { type: 'string' },
        client: { type: 'string' },
        mode: { type: 'string' },
        rate: { type: 'string' },
        seed: { type: 'string', default: '0' },
        model: { type: 'string' },
        device: { type: 'string', default: 'cpu' },
        'max-seqs': { type: 'string' },
        'max-queue': { type: 'string' },
        out: { type: 'string' },
        'keep-traces': { type: 'boolean', default: false },
        smoke: { type: 'boolean', default: false },
        soak: { type: 'string' },
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
  const mode = parseFlag('mode', z.enum(['closed', 'poisson'], { message: 'expected closed or poisson' }), values.mode ?? 'closed');
  const rate = values.rate === undefined ? undefined : parseFlag('rate', z.coerce.number().positive().max(10_000), values.rate);
  if (mode === 'poisson' && rate === undefined) throw new UsageError('--mode poisson needs --rate R (mean requests per second)');
  if (mode === 'closed' && rate !== undefined) throw new UsageError('--rate applies to --mode poisson only');
  const optionalInt = (name: 'max-seqs' | 'max-queue') => (values[name] === undefined ? undefined : parseFlag(name, positiveInt, values[name]));
  return {
    policies: parseList('policies', cacheConfig, flag('policies')),
    budgetsPercent: parseList('budgets', budget, flag('budgets')),
    schedulings: parseList('scheduling', scheduling, values.scheduling ?? 'fifo'),
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
    soak: values.soak === undefined ? null : soakOptions(values.soak, values),
    help: values.help,
  };
}

function soakOptions(soak: string, values: Readonly<Record<string, string | boolean | undefined>>): SoakOptions {
  for (const name of NOT_WITH_SOAK) if (values[name] !== undefined && values[name] !== false) throw new UsageError(`--${name} does not apply to --soak`);
  const single = <T>(name: string, list: readonly T[]): T => {
    if (list.length !== 1) throw new UsageError(`--${name}: a soak runs one server; give one value (got ${list.length})`);
    return list[0]!;
  };
  const given = (name: string) => {
    const v = values[name];
    return typeof v === 'string' ? v : undefined;
  };
  const clients = given('concurrency');
  const policies = given('policies');
  const budgets = given('budgets');
  const maxTokens = given('max-tokens');
  return {
    durationMs: parseFlag('soak', soakDuration, soak),
    ...(clients !== undefined && { clients: single('concurrency', parseList('concurrency', positiveInt.min(SOAK_MIN_CLIENTS, `a soak needs at least ${SOAK_MIN_CLIENTS} clients, one of each kind`).max(1024), clients)) }),
    ...(policies !== undefined && { policy: single('policies', parseList('policies', policy, policies)) }),
    ...(budgets !== undefined && { budgetPercent: single('budgets', parseList('budgets', budget, budgets)) }),
    maxTokens: maxTokens === undefined ? SOAK_MAX_TOKENS : parseFlag('max-tokens', positiveInt.max(4096), maxTokens),
  };
}
