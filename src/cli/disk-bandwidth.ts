// Cold sequential read bandwidth of the disk a model lives on, measured in the same run as the benchmark
// that compares the expert loader against it. A warm read would measure memory copies, so the page cache
// must be bypassed (O_DIRECT) or emptied first (drop_caches, root only).
import { execFile } from 'node:child_process';
import { open, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** dd's block size; large enough that per-call overhead is negligible against a disk's latency. */
const BLOCK_BYTES = 16 * 2 ** 20;

export type BandwidthMethod = 'o_direct' | 'drop_caches';

export type SequentialRead =
  | { readonly measured: true; readonly method: BandwidthMethod; readonly file: string; readonly bytes: number; readonly seconds: number; readonly mbPerS: number }
  | { readonly measured: false; readonly file: string; readonly reason: string };

/**
 * Reads up to `maxBytes` of `file` from the disk, not from the page cache: `dd iflag=direct` where the
 * file system takes O_DIRECT (tmpfs and some overlays refuse it), else drop_caches and a plain read.
 * When neither is possible the result says why instead of reporting a cached read as a disk's speed.
 */
export async function measureSequentialRead(file: string, maxBytes: number): Promise<SequentialRead> {
  const count = Math.max(1, Math.floor(maxBytes / BLOCK_BYTES));
  // Recent kernels take O_DIRECT on tmpfs, and would report memory-copy speed as the disk's.
  const fsType = await fileSystemType(file);
  if (fsType === 'tmpfs' || fsType === 'ramfs') return { measured: false, file, reason: `the file is on ${fsType}, in memory: there is no disk to measure` };
  const direct = await ddRead(file, count, true);
  if (direct.ok) return { measured: true, method: 'o_direct', file, ...direct.result };
  const dropped = await dropPageCache();
  if (!dropped.ok) {
    return { measured: false, file, reason: `O_DIRECT refused (${direct.error}) and the page cache could not be dropped (${dropped.error})` };
  }
  const plain = await ddRead(file, count, false);
  if (plain.ok) return { measured: true, method: 'drop_caches', file, ...plain.result };
  return { measured: false, file, reason: `O_DIRECT refused (${direct.error}); after drop_caches dd failed too (${plain.error})` };
}

/** Empties the page cache system-wide (`echo 1 > /proc/sys/vm/drop_caches`); needs root. */
export async function dropPageCache(): Promise<{ ok: true } | { ok: false; error: string }> {
  try {
    // Written pages must reach the disk before they can be dropped; sync(1) is the portable way.
    await execFileAsync('sync');
    await writeFile('/proc/sys/vm/drop_caches', '1');
    return { ok: true };
  } catch (err) {
    return { ok: false, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message };
  }
}

/** `stat -f` names the file system (ext2/ext3 for ext4, xfs, tmpfs, ...); null where stat cannot say. */
async function fileSystemType(file: string): Promise<string | null> {
  try {
    return (await execFileAsync('stat', ['-f', '-c', '%T', file])).stdout.trim();
  } catch {
    return null;
  }
}

type DdOutcome = { ok: true; result: { bytes: number; seconds: number; mbPerS: number } } | { ok: false; error: string };

async function ddRead(file: string, count: number, direct: boolean): Promise<DdOutcome> {
  const args = [`if=${file}`, 'of=/dev/null', `bs=${BLOCK_BYTES}`, `count=${count}`, ...(direct ? ['iflag=direct'] : [])];
  try {
    await (await open(file, 'r')).close(); // a clear ENOENT/EACCES rather than dd's wording
    // LC_ALL=C: dd's summary uses the locale's decimal separator.
    const { stderr } = await execFileAsync('dd', args, { env: { ...process.env, LC_ALL: 'C' } });
    const summary = parseDdSummary(stderr);
    if (summary === null) return { ok: false, error: `unrecognised dd output: ${stderr.trim().split('\n').pop() ?? ''}` };
    return { ok: true, result: { ...summary, mbPerS: summary.bytes / 1e6 / summary.seconds } };
  } catch (err) {
    const e = err as { stderr?: string; code?: unknown; message: string };
    const line = e.stderr?.trim().split('\n')[0];
    return { ok: false, error: line || (typeof e.code === 'string' ? e.code : e.message) };
  }
}

/** `48593232 bytes (49 MB, 46 MiB) copied, 0.0894093 s, 543 MB/s` -> bytes and seconds (GNU and busybox dd). */
export function parseDdSummary(stderr: string): { bytes: number; seconds: number } | null {
  const m = /(\d+) bytes\b.*?copied,\s*([\d.]+)\s*s(?:ec(?:onds)?)?\b/.exec(stderr);
  if (!m) return null;
  const bytes = Number(m[1]);
  const seconds = Number(m[2]);
  return bytes > 0 && seconds > 0 ? { bytes, seconds } : null;
}
