// Every command-line option of `serve` can also come from the environment (containers, service
// managers): --expert-cache-mb is MOE_SERVE_EXPERT_CACHE_MB. The command line wins over the environment.
// Values go through the same zod checks as flags; an error names the variable it came from.
import { z } from 'zod';
import { UsageError } from './cli-error.js';

export const ENV_PREFIX = 'MOE_SERVE_';

type OptionSpec = { readonly type: 'string' | 'boolean' };

export const envVarName = (flag: string) => ENV_PREFIX + flag.toUpperCase().replaceAll('-', '_');

const envBoolean = z
  .string()
  .transform((s) => s.trim().toLowerCase())
  .pipe(z.enum(['1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'], { message: 'expected 1/true/yes/on or 0/false/no/off' }));

export interface EnvArgs {
  /** Flags to put before the command line's own, which then override them. */
  readonly args: readonly string[];
  /** Flag name -> the variable it was read from. */
  readonly sources: ReadonlyMap<string, string>;
}

export function argsFromEnv(options: Readonly<Record<string, OptionSpec>>, env: NodeJS.ProcessEnv = process.env): EnvArgs {
  const args: string[] = [];
  const sources = new Map<string, string>();
  for (const [flag, spec] of Object.entries(options)) {
    if (flag === 'help') continue;
    const name = envVarName(flag);
    const value = env[name];
    if (value === undefined || value === '') continue;
    sources.set(flag, name);
    if (spec.type === 'string') {
      args.push(`--${flag}`, value);
      continue;
    }
    const r = envBoolean.safeParse(value);
    if (!r.success) throw new UsageError(`${name}: ${r.error.issues[0]?.message ?? 'invalid'} (got ${JSON.stringify(value)})`);
    if (['1', 'true', 'yes', 'on'].includes(r.data)) args.push(`--${flag}`);
  }
  return { args, sources };
}

/** MOE_SERVE_* variables that match no option: likely typos, worth a warning rather than silence. */
export function unknownEnvVars(options: Readonly<Record<string, OptionSpec>>, env: NodeJS.ProcessEnv = process.env): string[] {
  const known = new Set(Object.keys(options).map(envVarName));
  return Object.keys(env).filter((k) => k.startsWith(ENV_PREFIX) && !k.startsWith(`${ENV_PREFIX}TEST_`) && !known.has(k));
}

/** Rewrites a flag's usage error to name the environment variable when the value came from there. */
export function blameEnv(err: unknown, argv: readonly string[], sources: ReadonlyMap<string, string>): unknown {
  if (!(err instanceof UsageError)) return err;
  const flag = /^--([a-z-]+):/.exec(err.message)?.[1];
  if (flag === undefined || argv.includes(`--${flag}`)) return err;
  const name = sources.get(flag);
  return name === undefined ? err : new UsageError(`${name} (--${flag})${err.message.slice(flag.length + 2)}`);
}
