// `moe-serve bench peaks`: this machine's peak memory bandwidth and peak FLOP rate, the denominators of
// S-MBU and S-MFU (engine/step-utilization.ts), and the --peak-memory-gbps / --peak-tflops flags that pass
// them to `serve` and the benchmarks. Also the owner of those two flags.
//
// Memory bandwidth, two ways, each with 1 thread and with every core:
// - copy: worker threads each copying a 512 MiB Float64Array into another (TypedArray.set, a memcpy that
//   streams large copies), counted as bytes read + bytes written;
// - read: onnxruntime's fp32 MatMul of one row by a 4096 x 65536 matrix (1 GiB, fed as an input), with
//   the engine's kind of session and that many intra-op threads, counted as the matrix's bytes: the access
//   pattern of a decode step (weights read once, little written) through the kernel the engine uses.
//   (ReduceSum over the same bytes reached only ~8.4 GB/s here: its loop, not memory, bounds it.)
// Both are well beyond the last-level cache (this project's VMs report 32 MB, and one 300 MiB: buffers of
// 128 and 256 MiB measured 22-25 and 17-19 GB/s there, cache included), so they measure memory. The bench
// holds about 2.2 GiB at once.
// FLOPs: onnxruntime's fp32 MatMul of two 2048 x 2048 matrices (2 x 2048^3 FLOPs), that many intra-op threads.
// Each figure is the best of its runs: on a shared machine the best run is the one least slowed by others.
// Threads: 1, and every core (os.availableParallelism()), which is what the engine uses for models large
// enough to be bound by them (onnxruntime's default pool, one thread per core, with --threads 0). The peak
// is the best figure of any method and thread count: a peak is the machine's, so a run with fewer threads
// (tiny-moe picks 1) is judged against the same machine, and its S-MBU shows what it leaves unused. (On
// this project's 2-vCPU VM one thread reached about half of either peak.)
import { once } from 'node:events';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { z } from 'zod';
import { DEFAULT_PEAKS, type Peaks } from '../engine/step-utilization.js';
import { GraphBuilder } from '../graphs/onnx-builder.js';
import { Runtime } from '../runtime/onnx-runtime.js';
import { median, round } from './bench-format.js';
import { parseFlag } from './model-options.js';

export const PEAK_OPTIONS = {
  'peak-memory-gbps': { type: 'string' },
  'peak-tflops': { type: 'string' },
} as const;

export const PEAK_OPTIONS_HELP = `  --peak-memory-gbps N  peak memory bandwidth S-MBU is judged against, GB/s (default ${DEFAULT_PEAKS.memoryBytesPerS / 1e9}: this
                        project's machines; \`npm run bench -- peaks\` measures one's own and prints the flags)
  --peak-tflops N       peak FLOP rate S-MFU is judged against, TFLOP/s (default ${DEFAULT_PEAKS.flopsPerS / 1e12}, measured likewise)`;

const positive = z.coerce.number({ message: 'expected a number' }).positive('must be more than 0').finite();

/** The peaks from --peak-memory-gbps and --peak-tflops, each defaulting to DEFAULT_PEAKS. */
export function peakOptions(values: { readonly 'peak-memory-gbps'?: string; readonly 'peak-tflops'?: string }): Peaks {
  const gbps = values['peak-memory-gbps'];
  const tflops = values['peak-tflops'];
  return {
    memoryBytesPerS: gbps === undefined ? DEFAULT_PEAKS.memoryBytesPerS : parseFlag('peak-memory-gbps', positive, gbps) * 1e9,
    flopsPerS: tflops === undefined ? DEFAULT_PEAKS.flopsPerS : parseFlag('peak-tflops', positive, tflops) * 1e12,
  };
}

const MIB = 2 ** 20;
const COPY_BYTES = 512 * MIB;
const COPIES = 4;
const READ_K = 4096;
const READ_N = 65536;
const READ_RUNS = 5;
const MATMUL_N = 2048;
const MATMUL_RUNS = 6;

interface PeakRow {
  readonly bench: 'peaks';
  readonly measure: 'memory copy' | 'memory read' | 'fp32 matmul';
  readonly threads: number;
  /** GB/s for memory, TFLOP/s for matmul: the best run */
  readonly best: number;
  readonly median: number;
  readonly unit: 'GB/s' | 'TFLOP/s';
  readonly method: string;
}

export async function benchPeaks(): Promise<Peaks> {
  const all = availableParallelism();
  const threadCounts = [...new Set([1, all])];
  const rows: PeakRow[] = [];
  const emit = (row: PeakRow) => {
    rows.push(row);
    process.stdout.write(`${JSON.stringify(row)}\n`);
  };
  for (const threads of threadCounts) {
    const copy = await copyBandwidth(threads);
    emit({ bench: 'peaks', measure: 'memory copy', threads, best: round(copy.best / 1e9, 2), median: round(copy.median / 1e9, 2), unit: 'GB/s', method: `${threads} worker thread(s) x ${COPIES} copies of ${COPY_BYTES / MIB} MiB (TypedArray.set), read + written bytes` });
    const read = await readBandwidth(threads);
    emit({ bench: 'peaks', measure: 'memory read', threads, best: round(read.best / 1e9, 2), median: round(read.median / 1e9, 2), unit: 'GB/s', method: `onnxruntime MatMul 1 x ${READ_K} @ ${READ_K} x ${READ_N} fp32 (${(READ_K * READ_N * 4) / MIB} MiB, an input), ${threads} intra-op thread(s), matrix bytes read` });
    const flops = await matmulFlops(threads);
    emit({ bench: 'peaks', measure: 'fp32 matmul', threads, best: round(flops.best / 1e12, 4), median: round(flops.median / 1e12, 4), unit: 'TFLOP/s', method: `onnxruntime MatMul ${MATMUL_N} x ${MATMUL_N} fp32, ${threads} intra-op thread(s), 2n^3 FLOPs` });
  }
  const memory = Math.max(...rows.filter((r) => r.unit === 'GB/s').map((r) => r.best));
  const tflops = Math.max(...rows.filter((r) => r.unit === 'TFLOP/s').map((r) => r.best));
  process.stdout.write(`\n| measure | threads | best | median | unit |\n|---|---|---|---|---|\n${rows.map((r) => `| ${r.measure} | ${r.threads} | ${r.best} | ${r.median} | ${r.unit} |`).join('\n')}\n`);
  process.stdout.write(`\npeaks (the best of 1 and ${all} threads): memory ${memory} GB/s, fp32 ${tflops} TFLOP/s. Pass them on:\n  --peak-memory-gbps ${memory} --peak-tflops ${tflops}\n`);
  return { memoryBytesPerS: memory * 1e9, flopsPerS: tflops * 1e12 };
}

// Each worker fills its buffers (touching every page), says it is ready, waits for the common start, copies.
const COPY_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { bytes, copies, start } = workerData;
const src = new Float64Array(bytes / 8).fill(1.5);
const dst = new Float64Array(bytes / 8);
dst.set(src);
parentPort.postMessage({ ready: true });
Atomics.wait(start, 0, 0);
const times = [];
const t0 = performance.now();
for (let i = 0; i < copies; i++) {
  const t = performance.now();
  dst.set(src);
  times.push(performance.now() - t);
}
parentPort.postMessage({ times, totalMs: performance.now() - t0 });
`;

/** Copy bandwidth of `threads` workers copying at once: best and median over the copies, in bytes/s. */
async function copyBandwidth(threads: number): Promise<{ best: number; median: number }> {
  const start = new Int32Array(new SharedArrayBuffer(4));
  const workers = Array.from({ length: threads }, () => new Worker(COPY_WORKER, { eval: true, workerData: { bytes: COPY_BYTES, copies: COPIES, start } }));
  try {
    await Promise.all(workers.map((w) => once(w, 'message')));
    // Listening before the start: a worker's result cannot arrive before the event loop runs again.
    const done = workers.map((w) => once(w, 'message'));
    Atomics.store(start, 0, 1);
    Atomics.notify(start, 0);
    const results = (await Promise.all(done)).map(([m]) => m as { times: number[]; totalMs: number });
    // The copies of all workers overlap: copy i of the slowest worker bounds the i-th round.
    const perCopy = Array.from({ length: COPIES }, (_, i) => (threads * 2 * COPY_BYTES) / (Math.max(...results.map((r) => r.times[i] as number)) / 1000));
    return { best: Math.max(...perCopy), median: median(perCopy) };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** Read bandwidth of onnxruntime's fp32 MatMul of one row (a GEMV) with `threads` intra-op threads, bytes/s of the matrix. */
async function readBandwidth(threads: number): Promise<{ best: number; median: number }> {
  const runtime = await Runtime.create({ device: 'cpu', cpuThreads: threads });
  const g = new GraphBuilder('peak_read');
  g.output(g.op('MatMul', [g.input('x', 'float32', [1, READ_K]), g.input('w', 'float32', [READ_K, READ_N])]), 'y', 'float32', [1, READ_N]);
  const session = await runtime.createSession('peak_read', g.toModel(), [], { kind: 'peaks' });
  try {
    const w = new Float32Array(READ_K * READ_N).fill(0.125);
    const feeds = { x: runtime.float32(new Float32Array(READ_K).fill(0.25), [1, READ_K]), w: runtime.float32(w, [READ_K, READ_N]) };
    await session.run(feeds);
    const rates: number[] = [];
    for (let i = 0; i < READ_RUNS; i++) {
      const t0 = performance.now();
      await session.run(feeds);
      rates.push(w.byteLength / ((performance.now() - t0) / 1000));
    }
    return { best: Math.max(...rates), median: median(rates) };
  } finally {
    await session.release();
  }
}

/** fp32 MatMul FLOP rate with `threads` intra-op threads, FLOP/s. */
async function matmulFlops(threads: number): Promise<{ best: number; median: number }> {
  const runtime = await Runtime.create({ device: 'cpu', cpuThreads: threads });
  const n = MATMUL_N;
  const g = new GraphBuilder('peak_matmul');
  g.output(g.op('MatMul', [g.input('a', 'float32', [n, n]), g.input('b', 'float32', [n, n])]), 'c', 'float32', [n, n]);
  const session = await runtime.createSession('peak_matmul', g.toModel(), [], { kind: 'peaks' });
  try {
    const a = Float32Array.from({ length: n * n }, (_, i) => ((i % 7) - 3) / 8);
    const b = Float32Array.from({ length: n * n }, (_, i) => ((i % 5) - 2) / 8);
    const feeds = { a: runtime.float32(a, [n, n]), b: runtime.float32(b, [n, n]) };
    await session.run(feeds);
    const rates: number[] = [];
    for (let i = 0; i < MATMUL_RUNS; i++) {
      const t0 = performance.now();
      await session.run(feeds);
      rates.push((2 * n ** 3) / ((performance.now() - t0) / 1000));
    }
    return { best: Math.max(...rates), median: median(rates) };
  } finally {
    await session.release();
  }
}
