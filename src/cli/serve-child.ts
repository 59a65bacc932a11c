// A `moe-serve serve` child process, started the way a user starts it, for benchmarks that measure the
// server over real HTTP: spawn, wait for its address and /health 200, read its peak RSS, stop it.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { MemoryGroup } from './cgroup-memory.js';

const CLI_PATH = fileURLToPath(new URL('./main.js', import.meta.url));
/** Characters of the child's stderr kept for error messages. */
const STDERR_TAIL_CHARS = 8000;

export interface ChildExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** The server exited or never became healthy; the message carries the end of its stderr. */
export class ServeChildError extends Error {
  readonly code = 'serve_child';

  constructor(message: string) {
    super(message);
    this.name = 'ServeChildError';
  }
}

export class ServeChild {
  readonly spawnedAtMs: number;
  readonly exited: Promise<ChildExit>;
  private readonly child: ChildProcess;
  private stderr = '';
  private exitStatus: ChildExit | null = null;

  /** `serveArgs` follow `serve`; with a group the process joins it before node starts. */
  constructor(serveArgs: readonly string[], group: MemoryGroup | null, onStderrLine: (line: string) => void) {
    const argv = [CLI_PATH, 'serve', ...serveArgs];
    const { command, args } = group ? group.wrap(process.execPath, argv) : { command: process.execPath, args: argv };
    this.spawnedAtMs = performance.now();
    this.child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => resolve((this.exitStatus = { code, signal })));
      this.child.on('error', (err) => {
        this.stderr += `\n${err.message}`;
        resolve((this.exitStatus = { code: null, signal: null }));
      });
    });
    let partial = '';
    this.child.stderr?.setEncoding('utf8').on('data', (text: string) => {
      this.stderr = (this.stderr + text).slice(-STDERR_TAIL_CHARS);
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) onStderrLine(line);
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get exitStatusNow(): ChildExit | null {
    return this.exitStatus;
  }

  stderrTail(): string {
    return this.stderr;
  }

  /** The listening address (from serve's first stderr line), once /health answers 200; ms since spawn. */
  async waitReady(timeoutMs: number): Promise<{ baseUrl: string; loadMs: number }> {
    const until = this.spawnedAtMs + timeoutMs;
    let baseUrl: string | null = null;
    for (;;) {
      if (this.exitStatus) throw new ServeChildError(`the server exited (${exitText(this.exitStatus)}) before it was ready:\n${this.stderr.trim()}`);
      if (performance.now() > until) throw new ServeChildError(`the server was not ready within ${timeoutMs / 1000} s:\n${this.stderr.trim()}`);
      baseUrl ??= /moe-serve listening on (http:\/\/\S+?);/.exec(this.stderr)?.[1] ?? null;
      if (baseUrl !== null && (await healthy(baseUrl))) return { baseUrl, loadMs: performance.now() - this.spawnedAtMs };
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** VmHWM: the most resident memory the process ever had; null once it is gone. */
  peakRssBytes(): number | null {
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${this.child.pid}/status`, 'utf8'));
      return m ? Number(m[1]) * 1024 : null;
    } catch {
      return null;
    }
  }

  /** SIGTERM (serve drains gracefully), then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs: number): Promise<ChildExit> {
    if (this.exitStatus) return this.exitStatus;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** For a Ctrl-C: no drain. */
  kill(): void {
    if (!this.exitStatus) this.child.kill('SIGKILL');
  }
}

export function exitText(e: ChildExit): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code ?? 'unknown'}`;
}

async function healthy(baseUrl: string): Promise<boolean> {
  try {
    const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(5000) });
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}
