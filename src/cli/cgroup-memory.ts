// A memory cgroup that emulates a machine with less RAM for one child process. The kernel charges the
// page cache of the files the child reads to its group, so a limit below the model's size forces the
// server to live with re-reading experts from disk, as it would on a small machine.
// cgroup v1 (a `memory` hierarchy, as on this VM) and v2 (the unified hierarchy with the memory
// controller) are both handled; the interface is the same.
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const V1_ROOT = '/sys/fs/cgroup/memory';
const V2_ROOT = '/sys/fs/cgroup';

/** The group could not be made; the message says why (not root, no memory controller, ...). */
export class CgroupUnavailableError extends Error {
  readonly code = 'cgroup_unavailable';

  constructor(message: string) {
    super(message);
    this.name = 'CgroupUnavailableError';
  }
}

export interface MemoryGroupUsage {
  /** Most memory the group was ever charged, page cache included; null where the kernel does not say. */
  readonly peakBytes: number | null;
  /** Anonymous memory (v1 `rss`, v2 `anon`) and page cache (v1 `cache`, v2 `file`) charged now. */
  readonly rssBytes: number | null;
  readonly cacheBytes: number | null;
  /** Processes the kernel OOM-killed in the group; null where the kernel does not count them. */
  readonly oomKills: number | null;
}

export interface MemoryGroup {
  readonly path: string;
  readonly version: 1 | 2;
  readonly limitBytes: number;
  /** An argv that joins the group and then execs `command` (same PID, so /proc/PID is the command's). */
  wrap(command: string, args: readonly string[]): { command: string; args: string[] };
  usage(): MemoryGroupUsage;
  /** Removes the group; call once its processes are gone. Retries briefly while the kernel lets go. */
  remove(): Promise<void>;
}

/** Makes `name` under the memory hierarchy with a hard limit of `limitBytes`, or says why it cannot. */
export async function createMemoryGroup(name: string, limitBytes: number): Promise<MemoryGroup> {
  const version = existsSync(join(V1_ROOT, 'memory.limit_in_bytes')) ? 1 : v2HasMemory() ? 2 : null;
  if (version === null) {
    throw new CgroupUnavailableError(`no memory cgroup controller: neither ${V1_ROOT} (cgroup v1) nor the memory controller in ${V2_ROOT}/cgroup.controllers (cgroup v2)`);
  }
  const root = version === 1 ? V1_ROOT : V2_ROOT;
  const path = join(root, name);
  try {
    if (version === 2) await enableV2Memory();
    await mkdir(path);
  } catch (err) {
    throw new CgroupUnavailableError(`cannot create ${path}: ${describe(err)}`);
  }
  const group = memoryGroup(version, path, limitBytes);
  try {
    await writeFile(join(path, FILES[version].limit), String(limitBytes));
  } catch (err) {
    await group.remove().catch(() => undefined);
    throw new CgroupUnavailableError(`cannot set the memory limit of ${path}: ${describe(err)}`);
  }
  return group;
}

function describe(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    const uid = process.getuid?.();
    return `${code} (needs root and a writable cgroup hierarchy; running as uid ${uid ?? 'unknown'})`;
  }
  return code ?? (err as Error).message;
}

function wrap(path: string) {
  return (command: string, args: readonly string[]) => ({
    command: 'sh',
    // $0 is the procs file, "$@" the command: no quoting of paths into the script.
    args: ['-c', 'echo $$ > "$0" && exec "$@"', join(path, 'cgroup.procs'), command, ...args],
  });
}

async function removeDir(path: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await rmdir(path);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      // EBUSY while the kernel still accounts a process that has just exited.
      if (code !== 'EBUSY' || attempt >= 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Where each version keeps what this module reads and writes. */
const FILES = {
  1: { limit: 'memory.limit_in_bytes', peak: 'memory.max_usage_in_bytes', rss: 'rss', cache: 'cache', oom: 'memory.oom_control' },
  // memory.peak appeared with Linux 5.19 (null before).
  2: { limit: 'memory.max', peak: 'memory.peak', rss: 'anon', cache: 'file', oom: 'memory.events' },
} as const;

function memoryGroup(version: 1 | 2, path: string, limitBytes: number): MemoryGroup {
  const files = FILES[version];
  return {
    path,
    version,
    limitBytes,
    wrap: wrap(path),
    usage() {
      const stat = readKeyValues(join(path, 'memory.stat'));
      return {
        peakBytes: readNumber(join(path, files.peak)),
        rssBytes: stat?.get(files.rss) ?? null,
        cacheBytes: stat?.get(files.cache) ?? null,
        // v1 counts oom_kill in memory.oom_control since Linux 4.13.
        oomKills: readKeyValues(join(path, files.oom))?.get('oom_kill') ?? null,
      };
    },
    remove: () => removeDir(path),
  };
}

function v2HasMemory(): boolean {
  try {
    return readFileSync(join(V2_ROOT, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('memory');
  } catch {
    return false;
  }
}

/** Children of the v2 root only get memory.* files once the root delegates the controller. */
async function enableV2Memory(): Promise<void> {
  const control = join(V2_ROOT, 'cgroup.subtree_control');
  if ((await readFile(control, 'utf8')).split(/\s+/).includes('memory')) return;
  await writeFile(control, '+memory');
}

function readNumber(file: string): number | null {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/** `key value` lines (memory.stat, memory.oom_control, memory.events) as a map. */
function readKeyValues(file: string): Map<string, number> | null {
  try {
    const map = new Map<string, number>();
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const [key, value] = line.trim().split(/\s+/);
      if (key && value !== undefined && Number.isFinite(Number(value))) map.set(key, Number(value));
    }
    return map;
  } catch {
    return null;
  }
}
