// Runs the real `moe-serve` command line as a child process, as a user would.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CLI_PATH } from './paths.js';

const run = promisify(execFile);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(...args: string[]): Promise<CliResult> {
  return runScript(CLI_PATH, ...args);
}

/** Runs a compiled script of the project (`moe-serve` itself, or one of scripts/) with `node`. */
export async function runScript(script: string, ...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [script, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Polls `read` until it gives a value (a line in a child's stderr, say); the error shows `log()`. */
export async function waitFor<T>(read: () => T | undefined, log: () => string, timeoutMs = 60_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = read();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out; stderr so far:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
