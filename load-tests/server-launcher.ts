// Starts `moe-serve serve` as a child process on a free loopback port (--port 0; the address is read
// from the line it prints), waits for GET /health to say the model is loaded, and stops it with
// SIGTERM. The server's stderr goes to a log file beside the report.
import { setTimeout as sleep } from 'node:timers/promises';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { assertLoopback } from './loopback.js';

/** The moe-serve command line, from this file's place in dist/load-tests/. */
export const MOE_SERVE_CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

export interface ServerConfig {
  readonly modelDir?: string;
  readonly device?: string;
  /** The expert-cache policy; the server's default when undefined. */
  readonly policy?: string;
  /** Sparse layers the router lookahead prefetches (`--prefetch-depth`); the server's default when undefined. */
  readonly prefetchDepth?: number;
  /** Expert-cache budget as a fraction of all expert bytes; the server's default (all experts) when undefined. */
  readonly budgetFraction?: number;
  /** Where the server writes its routing trace (`serve --trace`); none when undefined. */
  readonly tracePath?: string;
  readonly maxSeqs?: number;
  readonly maxQueue?: number;
  /** `serve --expert-aware-scheduling` (with its default pass-over limit); oldest first when false or undefined. */
  readonly expertAwareScheduling?: boolean;
  /** Per-client limits; the server's defaults when undefined. */
  readonly clientLimits?: ClientLimitFlags;
  readonly logPath: string;
}

/** `serve`'s per-client flags: how much unread output a connection may hold, and one client's share. */
export interface ClientLimitFlags {
  readonly bufferKb: number;
  readonly stallSeconds: number;
  readonly maxRunning: number;
  readonly maxQueued: number;
}

/** `serve`'s flags for ClientLimitFlags (a server older than them refuses them as unknown: see serveHasFlags). */
export function clientLimitArgs(l: ClientLimitFlags): string[] {
  return ['--client-buffer-kb', String(l.bufferKb), '--stall-seconds', String(l.stallSeconds), '--client-max-running', String(l.maxRunning), '--client-max-queued', String(l.maxQueued)];
}

export class ServerStartError extends Error {
  readonly code = 'server_start';

  constructor(message: string, readonly logPath: string) {
    super(`${message} (server log: ${logPath})`);
    this.name = 'ServerStartError';
  }
}

export class LaunchedServer implements AsyncDisposable {
  constructor(
    readonly baseUrl: string,
    private readonly child: ChildProcess,
    readonly args: readonly string[],
  ) {}

  /** The server's process id (its memory is read from /proc/<pid>). */
  get pid(): number {
    return this.child.pid!;
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** The server's flags for a configuration. */
export function serverArgs(c: ServerConfig): string[] {
  return [
    'serve',
    '--host', '127.0.0.1',
    '--port', '0',
    ...(c.modelDir ? ['--model', c.modelDir] : []),
    ...(c.device ? ['--device', c.device] : []),
    ...(c.policy ? ['--expert-policy', c.policy] : []),
    ...(c.prefetchDepth !== undefined ? ['--prefetch-depth', String(c.prefetchDepth)] : []),
    ...(c.budgetFraction !== undefined ? ['--expert-cache-fraction', String(c.budgetFraction)] : []),
    ...(c.tracePath ? ['--trace', c.tracePath] : []),
    ...(c.maxSeqs ? ['--max-seqs', String(c.maxSeqs)] : []),
    ...(c.maxQueue ? ['--max-queue', String(c.maxQueue)] : []),
    ...(c.expertAwareScheduling ? ['--expert-aware-scheduling'] : []),
    ...(c.clientLimits ? clientLimitArgs(c.clientLimits) : []),
  ];
}

/** Whether `moe-serve serve` knows every one of `flags` (its --help lists them). */
export async function serveHasFlags(flags: readonly string[]): Promise<boolean> {
  const { stdout } = await promisify(execFile)(process.execPath, [MOE_SERVE_CLI, 'serve', '--help']);
  return flags.every((f) => new RegExp(`^\\s*${f}\\b`, 'm').test(stdout));
}

export async function launchServer(c: ServerConfig, loadTimeoutMs = 120_000): Promise<LaunchedServer> {
  const args = serverArgs(c);
  const child = spawn(process.execPath, [MOE_SERVE_CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log = createWriteStream(c.logPath);
  child.stderr!.pipe(log);
  const fail = async (message: string): Promise<never> => {
    child.kill('SIGKILL');
    throw new ServerStartError(message, c.logPath);
  };
  const baseUrl = await new Promise<string>((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      const m = /listening on (http:\/\/\S+?);/.exec(text);
      if (m) {
        child.stderr!.off('data', onData);
        resolve(m[1]!);
      }
    };
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new ServerStartError(`moe-serve serve exited with status ${code} before listening: ${text.trim().split('\n')[0] ?? ''}`, c.logPath)));
  });
  const server = new LaunchedServer(assertLoopback(baseUrl).origin, child, args);
  const deadline = performance.now() + loadTimeoutMs;
  for (;;) {
    if (child.exitCode !== null) return fail(`moe-serve serve exited with status ${child.exitCode} while loading`);
    const status = await fetch(new URL('/health', server.baseUrl)).then((r) => (void r.body?.cancel(), r.status), () => 0);
    if (status === 200) return server;
    if (performance.now() > deadline) return fail(`the model did not load within ${loadTimeoutMs} ms`);
    await sleep(100);
  }
}
