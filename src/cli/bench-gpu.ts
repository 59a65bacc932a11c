// `moe-serve bench gpu`: the GPU path's figures in one run (README "The GPU path"):
//   upload   host -> device upload rate through this binding (an Identity session with a gpu-buffer
//            output is the only way in), by transfer size, pieces per transfer (one packed tensor per
//            expert against three, chunking) and runs (a run per piece, or all in one as expert loads do);
//   decode   batch 1 and batch 16 decode tokens/s with every expert resident, session runs per token, and
//            greedy agreement with the CPU provider at f32 (the output did not change);
//   offload  the expert cache at --budget for: every miss uploaded (lru + prefetch), hybrid (the cost
//            model places each miss, with and without prefetch), every miss on the CPU, 'none' and 'all';
//            decode tokens/s, where misses went, CPU forms kept, session runs and bytes moved per token,
//            the load rate achieved, and the PCIe bound for that traffic.
import { BatchEngine } from '../engine/batch-engine.js';
import { MoeModel, type ExpertCacheOptions, type ModelLoadOptions } from '../engine/moe-model.js';
import type { MissPlacementMode } from '../engine/miss-placement.js';
import { emptyCounters, type ExpertCounters } from '../experts/expert-stats.js';
import { Runtime, type DeviceKind } from '../runtime/onnx-runtime.js';
import type { Token } from '../tokenizer/token.js';
import { greedyDecode } from './bench-decode.js';
import { agree, median, round } from './bench-format.js';
import { BENCH_PROMPTS } from './bench-prompts.js';

export const GPU_SECTIONS = ['upload', 'decode', 'offload'] as const;
export type GpuSection = (typeof GPU_SECTIONS)[number];

/**
 * The host -> GPU link the PCIe bound is computed from: PyTorch's pinned copy on the H100 machine
 * (PLATFORM.md, PCIe Gen5 x16). --pcie-gbps overrides it with the machine's own figure.
 */
export const DEFAULT_PCIE_GBPS = 54.8;

export interface GpuBenchOptions {
  readonly modelDir: string;
  /** Device (default webgpu here), threads and compute forms; the cache options are the bench's. */
  readonly load: ModelLoadOptions;
  readonly sections: ReadonlySet<GpuSection>;
  readonly budgetFraction: number;
  readonly tokens: number;
  readonly runs: number;
  readonly batch: number;
  readonly pcieGbps: number;
}

const MIB = 1024 * 1024;

export async function benchGpu(o: GpuBenchOptions): Promise<void> {
  const out: string[] = [];
  const emit = (row: object) => process.stdout.write(`${JSON.stringify(row)}\n`);
  if (o.sections.has('upload')) out.push(await benchUpload(o.load.device, emit));
  if (o.sections.has('decode')) out.push(await benchResidentDecode(o, emit));
  if (o.sections.has('offload')) out.push(await benchOffloadModes(o, emit));
  process.stdout.write(`\n${out.join('\n\n')}\n`);
}

// --- upload ---

interface UploadRow {
  readonly bench: 'gpu-upload';
  readonly device: DeviceKind;
  readonly dtype: 'float32' | 'float16';
  readonly total_mib: number;
  readonly pieces: number;
  /** session runs per transfer: one per piece, or all pieces in one (Runtime.toDeviceAll, what expert loads do) */
  readonly runs: number;
  /** best of the repeats, GB/s (1e9 bytes) */
  readonly best_gbps: number;
  readonly median_gbps: number;
}

async function benchUpload(device: DeviceKind, emit: (row: object) => void): Promise<string> {
  if (device === 'cpu') return '(upload: the CPU provider uploads nothing; run with --device webgpu or cuda)';
  const runtime = await Runtime.create({ device });
  const rows: UploadRow[] = [];
  // A tiny-moe f32 expert is 0.75 MiB, a Qwen3-30B-A3B one 18 MiB, a Mixtral one 672 MiB; each split in 1
  // (one packed tensor per expert), 3 (gate, up, down) or 16 pieces (chunked), uploaded in a run per piece
  // or all in one run.
  for (const totalMib of [1, 16, 64, 256]) {
    for (const [pieces, oneRun] of [[1, true], [3, false], [3, true], [16, false], [16, true]] as const) {
      for (const dtype of ['float32', 'float16'] as const) {
        const bytesPer = 4 - (dtype === 'float16' ? 2 : 0);
        const count = Math.floor((totalMib * MIB) / pieces / bytesPer);
        const parts = Array.from({ length: pieces }, () => {
          const data = dtype === 'float32' ? new Float32Array(count).fill(0.5) : new Uint16Array(count).fill(0x3800);
          return runtime.tensorOf({ type: dtype, dims: [count], bytes: new Uint8Array(data.buffer) });
        });
        const gbps: number[] = [];
        for (let rep = 0; rep < 6; rep++) {
          const t0 = performance.now();
          const uploaded = oneRun ? await runtime.toDeviceAll(parts) : [];
          if (!oneRun) for (const p of parts) uploaded.push(await runtime.toDevice(p));
          const ms = performance.now() - t0;
          uploaded.forEach((u) => u.dispose());
          if (rep > 0) gbps.push((pieces * count * bytesPer) / ms / 1e6); // the first pays for session creation
        }
        const row: UploadRow = { bench: 'gpu-upload', device, dtype, total_mib: totalMib, pieces, runs: oneRun ? 1 : pieces, best_gbps: round(Math.max(...gbps), 3), median_gbps: round(median(gbps), 3) };
        rows.push(row);
        emit(row);
      }
    }
  }
  const head = '| MiB per transfer | pieces | runs | dtype | best GB/s | median GB/s |\n|---|---|---|---|---|---|';
  return [head, ...rows.map((r) => `| ${r.total_mib} | ${r.pieces} | ${r.runs} | ${r.dtype} | ${r.best_gbps} | ${r.median_gbps} |`)].join('\n');
}

// --- resident decode at batch 1 and batch N ---

interface ResidentRow {
  readonly bench: 'gpu-decode';
  readonly device: DeviceKind;
  readonly batch: number;
  readonly experts: string;
  readonly decode_tokens_per_s: number;
  /** session runs per generated token (batch 1: prompt amortized; batch N: per step, all sequences) */
  readonly runs_per_token: number;
  /** greedy tokens equal to the CPU provider's at f32 (batch 1 only), of all generated */
  readonly agree_with_cpu: string | null;
}

async function benchResidentDecode(o: GpuBenchOptions, emit: (row: object) => void): Promise<string> {
  const rows: ResidentRow[] = [];
  const prompts = BENCH_PROMPTS.slice(0, 4);
  const resident: ExpertCacheOptions = { policy: 'all' };
  let cpuOutputs: readonly (readonly Token[])[] = [];
  {
    await using cpu = await MoeModel.load(o.modelDir, { device: 'cpu', compute: { weightDtype: 'f32', expertDtype: 'f32' }, experts: resident });
    cpuOutputs = (await greedyDecode(cpu, prompts, o.tokens, 0)).outputs;
  }
  await using model = await MoeModel.load(o.modelDir, { ...o.load, experts: resident });
  const single = await greedyDecode(model, prompts, o.tokens, o.runs);
  const agreement = agree(single.outputs, cpuOutputs);
  rows.push({
    bench: 'gpu-decode',
    device: o.load.device,
    batch: 1,
    experts: model.computeForms.experts,
    decode_tokens_per_s: round((single.decodeSteps * 1000) / single.decodeMs),
    runs_per_token: single.breakdown.runs_per_token,
    agree_with_cpu: `${agreement.prefix}/${agreement.of}`,
  });
  emit(rows[rows.length - 1] as ResidentRow);
  const batched = await greedyBatch(model, o.batch, o.tokens);
  rows.push({
    bench: 'gpu-decode',
    device: o.load.device,
    batch: o.batch,
    experts: model.computeForms.experts,
    decode_tokens_per_s: round(batched.tokensPerS),
    runs_per_token: round(batched.runsPerStep, 1),
    agree_with_cpu: null,
  });
  emit(rows[rows.length - 1] as ResidentRow);
  const head = '| batch | experts | decode tokens/s | session runs per token (batch N: per step) | greedy tokens = CPU f32 |\n|---|---|---|---|---|';
  return [head, ...rows.map((r) => `| ${r.batch} | ${r.experts} | ${r.decode_tokens_per_s} | ${r.runs_per_token} | ${r.agree_with_cpu ?? '-'} |`)].join('\n');
}

/** `batch` greedy requests in flight at once, end-of-sequence ignored: output tokens/s and session runs per engine step. */
async function greedyBatch(model: MoeModel, batch: number, tokens: number): Promise<{ tokensPerS: number; runsPerStep: number }> {
  await using engine = new BatchEngine(model, { maxBatchTokens: 512, maxSeqs: batch, maxQueue: batch });
  const runsBefore = totalRuns(model);
  const stepsBefore = engine.stats.steps;
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: batch }, (_, i) =>
      engine.submit({ promptIds: model.tokenizer.encode(BENCH_PROMPTS[i % BENCH_PROMPTS.length] ?? ''), maxTokens: tokens, sampling: { temperature: 0, topP: 1, topK: 0 }, ignoreEos: true }).result,
    ),
  );
  const seconds = (performance.now() - t0) / 1000;
  const generated = results.reduce((n, r) => n + r.completionIds.length, 0);
  return { tokensPerS: generated / seconds, runsPerStep: (totalRuns(model) - runsBefore) / Math.max(1, engine.stats.steps - stepsBefore) };
}

function totalRuns(model: MoeModel): number {
  const { device, cpu } = runsBySide(model);
  return device + cpu;
}

/** Session runs so far on the device and on the CPU provider of hybrid misses (whose tallies are prefixed 'cpu_'). */
function runsBySide(model: MoeModel): { device: number; cpu: number } {
  const runs = { device: 0, cpu: 0 };
  for (const [kind, t] of Object.entries(model.runtime.tallySnapshot())) runs[kind.startsWith('cpu_') ? 'cpu' : 'device'] += t.runs;
  return runs;
}


// --- the expert cache at a budget: where misses go ---

interface Mode {
  readonly name: string;
  readonly experts: ExpertCacheOptions;
  readonly missPlacement: MissPlacementMode;
}

interface OffloadModeRow {
  readonly bench: 'gpu-offload';
  readonly mode: string;
  readonly budget_fraction: number;
  readonly decode_tokens_per_s: number;
  readonly time_per_token_vs_all: number | null;
  readonly hit_ratio: number | null;
  /** of expert uses: misses computed on the CPU, and misses loaded */
  readonly cpu_share: number | null;
  readonly loaded_share: number | null;
  /** of misses computed on the CPU: those whose CPU form was kept from an earlier use, and ms per such expert (making it ready included) */
  readonly cpu_kept_share: number | null;
  readonly cpu_ms_per_expert: number | null;
  /** session runs per generated token (prompt steps amortized): on the device, and of the CPU provider's hybrid misses */
  readonly device_runs_per_token: number;
  readonly cpu_runs_per_token: number;
  /** expert bytes moved host -> device per generated token (prompt steps amortized) */
  readonly mb_to_device_per_token: number;
  /** bytesToDevice over the time spent loading */
  readonly load_gbps: number | null;
  /** tokens/s if the link moved that traffic at --pcie-gbps and nothing else took time */
  readonly pcie_bound_tokens_per_s: number | null;
  readonly tokens_per_s_over_pcie_bound: number | null;
  /** greedy tokens equal to the 'all' mode's */
  readonly agree_with_all: string;
}

async function benchOffloadModes(o: GpuBenchOptions, emit: (row: object) => void): Promise<string> {
  const budget = { budgetFraction: o.budgetFraction };
  const modes: Mode[] = [
    { name: 'all (every expert resident)', experts: { policy: 'all', prefetchDepth: 0 }, missPlacement: 'upload' },
    { name: 'lru + prefetch, misses uploaded', experts: { ...budget, policy: 'lru', prefetchDepth: 1 }, missPlacement: 'upload' },
    { name: 'hybrid: lru + prefetch, misses placed by cost', experts: { ...budget, policy: 'lru', prefetchDepth: 1 }, missPlacement: 'auto' },
    { name: 'hybrid: lru + prefetch, misses on the CPU', experts: { ...budget, policy: 'lru', prefetchDepth: 1 }, missPlacement: 'cpu' },
    // Prefetches are uploads on the engine's thread, which the cost model does not weigh (docs/gpu.md).
    { name: 'hybrid: lru, no prefetch, misses placed by cost', experts: { ...budget, policy: 'lru', prefetchDepth: 0 }, missPlacement: 'auto' },
    { name: 'none (every use uploaded)', experts: { ...budget, policy: 'none', prefetchDepth: 0 }, missPlacement: 'upload' },
  ];
  const prompts = BENCH_PROMPTS.slice(0, 4);
  const rows: OffloadModeRow[] = [];
  let allMsPerToken: number | null = null;
  let allOutputs: readonly (readonly Token[])[] = [];
  for (const mode of modes) {
    // --cpu-expert-cache-mb is the one expert option the modes leave to the command line.
    await using model = await MoeModel.load(o.modelDir, { ...o.load, missPlacement: mode.missPlacement, experts: { ...mode.experts, cpuCacheMb: o.load.experts?.cpuCacheMb } });
    const before = model.experts.stats().total;
    const runsBefore = runsBySide(model);
    // No warm-up run: the cache's misses are the point, and a warm-up would fill it.
    const t = await greedyDecode(model, prompts, o.tokens, 0);
    const c = since(model.experts.stats().total, before);
    const runsAfter = runsBySide(model);
    const generated = t.decodeSteps + prompts.length;
    const msPerToken = t.decodeMs / t.decodeSteps;
    if (mode.experts.policy === 'all') {
      allMsPerToken = msPerToken;
      allOutputs = t.outputs;
    }
    const bytesPerToken = c.bytesToDevice / generated;
    const bound = bytesPerToken > 0 ? (o.pcieGbps * 1e9) / bytesPerToken : null;
    const tokensPerS = 1000 / msPerToken;
    const agreement = agree(t.outputs, allOutputs);
    const row: OffloadModeRow = {
      bench: 'gpu-offload',
      mode: mode.name,
      budget_fraction: mode.experts.policy === 'all' ? 1 : o.budgetFraction,
      decode_tokens_per_s: round(tokensPerS, 2),
      time_per_token_vs_all: allMsPerToken === null ? null : round(msPerToken / allMsPerToken, 2),
      hit_ratio: c.accesses > 0 ? round(c.hits / c.accesses, 3) : null,
      cpu_share: c.accesses > 0 ? round(c.cpuComputed / c.accesses, 3) : null,
      loaded_share: c.accesses > 0 ? round((c.misses - c.cpuComputed) / c.accesses, 3) : null,
      cpu_kept_share: c.cpuComputed > 0 ? round(c.cpuKept / c.cpuComputed, 3) : null,
      cpu_ms_per_expert: c.cpuComputed > 0 ? round(c.cpuMs / c.cpuComputed, 3) : null,
      device_runs_per_token: round((runsAfter.device - runsBefore.device) / generated, 1),
      cpu_runs_per_token: round((runsAfter.cpu - runsBefore.cpu) / generated, 1),
      mb_to_device_per_token: round(bytesPerToken / 1e6, 3),
      load_gbps: c.loadMs > 0 ? round(c.bytesToDevice / c.loadMs / 1e6, 3) : null,
      pcie_bound_tokens_per_s: bound === null ? null : round(bound, 1),
      tokens_per_s_over_pcie_bound: bound === null ? null : round(tokensPerS / bound, 3),
      agree_with_all: `${agreement.prefix}/${agreement.of}`,
    };
    rows.push(row);
    emit(row);
  }
  const pct = (x: number | null) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`);
  const head =
    `| mode (budget ${o.budgetFraction * 100}%) | decode tokens/s | time/token vs all | hit ratio | misses on CPU / loaded (of uses) | CPU misses kept / ms each | session runs per token, device / CPU | MB to device per token | load GB/s | PCIe bound tokens/s (${o.pcieGbps} GB/s) | tokens/s / bound | greedy = all |\n` +
    '|---|---|---|---|---|---|---|---|---|---|---|---|';
  return [
    head,
    ...rows.map(
      (r) =>
        `| ${r.mode} | ${r.decode_tokens_per_s} | ${r.time_per_token_vs_all ?? '-'}x | ${pct(r.hit_ratio)} | ${pct(r.cpu_share)} / ${pct(r.loaded_share)} | ${pct(r.cpu_kept_share)} / ${r.cpu_ms_per_expert ?? '-'} | ${r.device_runs_per_token} / ${r.cpu_runs_per_token} | ${r.mb_to_device_per_token} | ${r.load_gbps ?? '-'} | ${r.pcie_bound_tokens_per_s ?? '-'} | ${r.tokens_per_s_over_pcie_bound ?? '-'} | ${r.agree_with_all} |`,
    ),
  ].join('\n');
}

function since(after: ExpertCounters, before: ExpertCounters): ExpertCounters {
  const d = emptyCounters();
  for (const k of Object.keys(d) as (keyof ExpertCounters)[]) d[k] = after[k] - before[k];
  return d;
}
