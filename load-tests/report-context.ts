// What a report says about how it was made: the command, the date, the machine, the workload.
import { execFileSync } from 'node:child_process';
import { cpus, release, totalmem, type } from 'node:os';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository, from this file's place in dist/load-tests/. */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface ReportContext {
  readonly command: string;
  readonly date: string;
  readonly machine: string;
  readonly node: string;
  readonly commit: string | null;
  readonly model: string;
  readonly device: string;
  /** One line each: what the servers had (GET /metrics, --trace, ...). */
  readonly notes: readonly string[];
  readonly workload: string;
}

/** The parts every report shares: the command as typed, when, on what machine and commit, with which model. */
export function reportContext(argv: readonly string[], started: Date, modelDir: string, device: string, notes: readonly string[], workload: string): ReportContext {
  return { command: commandLine(argv), date: started.toISOString(), machine: machineDescription(), node: process.version, commit: gitCommit(REPO_ROOT), model: basename(modelDir), device, notes, workload };
}

export function machineDescription(): string {
  const list = cpus();
  return `${list[0]?.model.trim() ?? 'unknown CPU'}, ${list.length} logical cores, ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM, ${type()} ${release()}`;
}

/** The checked-out commit of the repository at `dir`, with '+dirty' when it has uncommitted changes. */
export function gitCommit(dir: string): string | null {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    return dirty ? `${head}+dirty` : head;
  } catch {
    return null;
  }
}

/** The command as a user would type it again: npm run loadtest -- ARGS, with shell quoting. */
export function commandLine(argv: readonly string[]): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return ['npm run loadtest', ...(argv.length > 0 ? ['--', ...argv.map(quote)] : [])].join(' ');
}
