// `moe-serve bench kernels`: one routed expert's SwiGLU through each compute route the engine can take,
// with the engine's own code (expert-routes.ts), at the expert shapes of real models. Per route and
// shape: microseconds per expert at 1 and 16 rows (median, rotating through enough experts that their
// weights do not stay in cache, as when routing changes every token), GB/s of the compute form's bytes,
// the time to make one resident (a cache miss: a session creation or a widening), and the resident
// memory each one holds (process RSS over N experts, after garbage collection).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { computeBytes, toComputeForm, type ComputeDType, type StoredMatrix } from '../model/compute-form.js';
import { DEFAULT_BLOCK_SIZE } from '../model/quantization.js';
import type { ResidentExpert } from '../experts/expert-store.js';
import type { HostExpert } from '../experts/host-expert-cache.js';
import { GraphExpertRoute, SessionExpertRoute, type ExpertRoute } from '../engine/expert-routes.js';
import { MoeBlockSessions } from '../engine/model-sessions.js';
import type { ExpertAssignment } from '../engine/routing.js';
import { Runtime } from '../runtime/onnx-runtime.js';
import { round } from './bench-format.js';
import { UsageError } from './cli-error.js';

/** tiny-moe's and Qwen3-30B-A3B's expert shapes, hidden x intermediate. */
export const KERNEL_SHAPES = ['256x256', '2048x768'] as const;

interface RouteSpec {
  readonly name: string;
  readonly kind: 'session' | 'graph';
  readonly dtype: ComputeDType;
  readonly accuracyLevel: 0 | 4;
  /** Skip above this many weights per expert (routes that unpack every run are too slow to wait for). */
  readonly maxWeights: number;
}

const ROUTES: readonly RouteSpec[] = [
  { name: 'f32, weights as inputs (graph)', kind: 'graph', dtype: 'f32', accuracyLevel: 0, maxWeights: Infinity },
  { name: 'f16, weights as inputs (graph)', kind: 'graph', dtype: 'f16', accuracyLevel: 0, maxWeights: Infinity },
  { name: 'int8, weights as inputs (graph)', kind: 'graph', dtype: 'int8', accuracyLevel: 4, maxWeights: 5e6 },
  { name: 'int4, weights as inputs (graph)', kind: 'graph', dtype: 'int4', accuracyLevel: 4, maxWeights: 5e6 },
  { name: 'f32, prepacked session', kind: 'session', dtype: 'f32', accuracyLevel: 0, maxWeights: Infinity },
  { name: 'int8, prepacked session, accuracy 4', kind: 'session', dtype: 'int8', accuracyLevel: 4, maxWeights: Infinity },
  { name: 'int8, prepacked session, accuracy 0', kind: 'session', dtype: 'int8', accuracyLevel: 0, maxWeights: 5e6 },
  { name: 'int4, prepacked session, accuracy 4', kind: 'session', dtype: 'int4', accuracyLevel: 4, maxWeights: Infinity },
  { name: 'int4, prepacked session, accuracy 0', kind: 'session', dtype: 'int4', accuracyLevel: 0, maxWeights: Infinity },
];

interface KernelRow {
  readonly bench: 'kernels';
  readonly shape: string;
  readonly route: string;
  readonly us_per_expert_1_row: number;
  readonly us_per_expert_16_rows: number;
  readonly gb_per_s_1_row: number;
  readonly compute_bytes: number;
  readonly make_resident_ms: number;
  /** a freshly made expert's first run (1 row): the rest of a miss's cost */
  readonly first_run_ms: number;
  readonly rss_bytes_per_expert: number | null;
}

/** The process's garbage collector, so that RSS deltas count what is held, not garbage. */
function collector(): (() => void) | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as () => void) : null;
  } catch {
    return null;
  }
}

/** Deterministic weights in (-0.05, 0.05), stored as bf16 like a checkpoint. */
function storedExpert(H: number, I: number, seed: number): HostExpert {
  let s = seed >>> 0 || 1;
  const bf16 = (rows: number, cols: number) => {
    const bits = new Uint16Array(rows * cols);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < bits.length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      f[0] = ((s >>> 0) / 2 ** 32 - 0.5) * 0.1;
      bits[i] = (u[0] as number) >>> 16;
    }
    return { kind: 'float' as const, dtype: 'BF16' as const, rows, cols, bytes: new Uint8Array(bits.buffer) };
  };
  const gate = bf16(I, H);
  const up = bf16(I, H);
  const down = bf16(H, I);
  return { gate, up, down, bytes: gate.bytes.byteLength + up.bytes.byteLength + down.bytes.byteLength };
}

/**
 * Every (shape, route) in a process of its own: memory the allocator kept from an earlier route would
 * otherwise be reused, and the RSS of the next would read as nothing.
 */
export async function benchKernels(shapes: readonly string[], threads: number): Promise<void> {
  const rows: KernelRow[] = [];
  for (const shape of shapes) {
    const { H, I } = parseShape(shape);
    for (const [i, spec] of ROUTES.entries()) {
      if (3 * H * I > spec.maxWeights) continue;
      const { stdout } = await promisify(execFile)(process.execPath, [process.argv[1] ?? '', 'bench', 'kernels', '--shapes', shape, '--kernel-route', String(i), '--threads', String(threads)], {
        maxBuffer: 1 << 20,
      });
      const row = JSON.parse(stdout.trim().split('\n').pop() ?? '') as KernelRow;
      rows.push(row);
      process.stdout.write(`${JSON.stringify(row)}\n`);
    }
  }
  process.stdout.write(`\n${table(rows)}\n`);
}

/** One (shape, route) measurement, printed as one JSON line (the child process of benchKernels). */
export async function benchKernelRoute(shape: string, route: number, threads: number): Promise<void> {
  const spec = ROUTES[route];
  if (!spec) throw new UsageError(`--kernel-route: no route ${route}`);
  const { H, I } = parseShape(shape);
  const runtime = await Runtime.create({ device: 'cpu', cpuThreads: threads || 1 });
  process.stdout.write(`${JSON.stringify(await measure(runtime, spec, H, I, collector()))}\n`);
}

function parseShape(shape: string): { H: number; I: number } {
  const m = /^(\d+)x(\d+)$/.exec(shape);
  if (!m) throw new UsageError(`--shapes: '${shape}' is not HxI (e.g. 2048x768)`);
  return { H: Number(m[1]), I: Number(m[2]) };
}

async function measure(runtime: Runtime, spec: RouteSpec, H: number, I: number, gc: (() => void) | null): Promise<KernelRow> {
  const q = { blockSize: DEFAULT_BLOCK_SIZE, zeroPoints: false };
  const toCompute = (s: StoredMatrix, into?: Float32Array) => toComputeForm(s, spec.dtype, q, into);
  const blocks = new MoeBlockSessions(runtime, H);
  const route: ExpertRoute = spec.kind === 'session' ? new SessionExpertRoute(runtime, H, toCompute, spec.accuracyLevel) : new GraphExpertRoute(runtime, blocks, 1, toCompute, spec.accuracyLevel, false);
  // Host forms as the host tier keeps them: quantized ahead (not timed), float as stored.
  const hostOf = (e: HostExpert): HostExpert => {
    if (spec.dtype !== 'int8' && spec.dtype !== 'int4') return e;
    const quantized = (s: StoredMatrix): StoredMatrix => {
      const c = toCompute(s);
      return c.dtype === 'int8' || c.dtype === 'int4' ? { kind: 'quantized', quantized: c.quantized } : s;
    };
    return { gate: quantized(e.gate), up: quantized(e.up), down: quantized(e.down), bytes: e.bytes };
  };
  const bytes = [storedExpert(H, I, 1).gate, storedExpert(H, I, 1).up, storedExpert(H, I, 1).down].reduce((n, s) => n + computeBytes(toCompute(s)), 0);
  // Enough experts to rotate through ~256 MB of compute form (so that weights come from memory), 4 to 64.
  const count = Math.max(4, Math.min(64, Math.floor(2 ** 28 / bytes)));
  const hosts = Array.from({ length: count }, (_, i) => hostOf(storedExpert(H, I, i + 1)));
  gc?.();
  const rssBefore = process.memoryUsage().rss;
  const experts: ResidentExpert[] = [];
  let makeMs = 0;
  for (const [i, h] of hosts.entries()) {
    const t0 = performance.now();
    experts.push(await route.materialize(h, i));
    makeMs += performance.now() - t0;
  }
  hosts.length = 0;
  gc?.();
  const rssPerExpert = gc ? Math.max(0, process.memoryUsage().rss - rssBefore) / count : null;
  const timeRows = async (T: number) => {
    const x = new Float32Array(T * H).map((_, i) => Math.sin(i) * 0.5);
    const assignment: ExpertAssignment = { expert: 0, rows: Array.from({ length: T }, (_, t) => t), weights: Array.from({ length: T }, () => 1) };
    const runOnce = async (e: ResidentExpert) => {
      const acc = runtime.float32(new Float32Array(T * H), [T, H]);
      runtime.release(await route.apply(acc, runtime.float32(x, [T, H]), T, [assignment], [e]));
    };
    // A session's first run allocates its buffers: part of a miss's cost, timed apart.
    const first: number[] = [];
    for (const e of experts) {
      const t0 = performance.now();
      await runOnce(e);
      first.push(performance.now() - t0);
    }
    firstRunMs.push(median(first));
    const times: number[] = [];
    const n = Math.max(2 * experts.length, Math.min(400, Math.ceil(2e7 / (H * I))));
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await runOnce(experts[i % experts.length] as ResidentExpert);
      times.push(performance.now() - t0);
    }
    return median(times) * 1000;
  };
  const firstRunMs: number[] = [];
  const us1 = await timeRows(1);
  const us16 = await timeRows(16);
  for (const e of experts) e.dispose();
  await blocks.release();
  return {
    bench: 'kernels',
    shape: `${H}x${I}`,
    route: spec.name,
    us_per_expert_1_row: round(us1, 1),
    us_per_expert_16_rows: round(us16, 1),
    gb_per_s_1_row: round(bytes / (us1 * 1e3), 2),
    compute_bytes: bytes,
    make_resident_ms: round(makeMs / count, 3),
    first_run_ms: round(firstRunMs[0] ?? 0, 3),
    rss_bytes_per_expert: rssPerExpert === null ? null : Math.round(rssPerExpert),
  };
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

function table(rows: readonly KernelRow[]): string {
  const kb = (b: number | null) => (b === null ? '-' : (b / 1024).toFixed(0));
  const head =
    '| shape | route | us/expert, 1 row | us/expert, 16 rows | GB/s (1 row) | compute KiB | make resident ms | first run ms | RSS KiB per expert |\n|---|---|---|---|---|---|---|---|---|';
  return [
    head,
    ...rows.map(
      (r) =>
        `| ${r.shape} | ${r.route} | ${r.us_per_expert_1_row} | ${r.us_per_expert_16_rows} | ${r.gb_per_s_1_row} | ${kb(r.compute_bytes)} | ${r.make_resident_ms} | ${r.first_run_ms} | ${kb(r.rss_bytes_per_expert)} |`,
    ),
  ].join('\n');
}
