// A loaded model: config -> weights -> sessions -> forward pass, plus its tokenizer.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ATTN } from '../graphs/attention-block.js';
import { ExpertStore } from '../experts/expert-store.js';
import { HostExpertCache, storedBytes } from '../experts/host-expert-cache.js';
import { planCache, type CachePlan } from '../experts/cache-plan.js';
import { createPolicy, DEFAULT_POLICY, usesLookahead, type ExpertLayout, type PolicyName } from '../experts/policies/index.js';
import { loadRoutingProfile } from '../experts/routing-profile.js';
import { TraceWriter, type TraceWriterOptions } from '../experts/trace-writer.js';
import { loadGenerationDefaults, loadModelConfig, sparseLayerIndices, type ModelSpec } from '../model/hf-config.js';
import { SafetensorsArchive } from '../model/safetensors.js';
import { checkCheckpointTensors } from '../model/checkpoint-tensors.js';
import { ExpertIds } from '../experts/expert-id.js';
import { computeBytes, type ComputeDType, type StoredMatrix } from '../model/compute-form.js';
import { Runtime, type DeviceKind } from '../runtime/onnx-runtime.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { computeMatrix, dtypeFor, expertHostForm, resolveCompute, type ComputeOptions, type ResolvedCompute } from './compute-options.js';
import { chooseExpertRoute } from './expert-routes.js';
import { HybridExperts } from './hybrid-experts.js';
import { DEFAULT_MISS_PLACEMENT, type MissPlacementMode } from './miss-placement.js';
import { ForwardPass, type ForwardParts } from './forward.js';
import { availableMemoryBytes } from './kv-budget.js';
import { SequenceKvCache } from './kv-cache.js';
import { planExpertMemory, PREPACKED_SESSION_OVERHEAD, type ExpertMemoryPlan } from './memory-plan.js';
import { ModelSessions } from './model-sessions.js';
import { readResidentWeights, ResidentWeights } from './resident-weights.js';
import type { SamplingParams } from './sampler.js';

/** The expert cache: tiers, budget, policy and prefetching. Every field is optional. */
export interface ExpertCacheOptions {
  /** Default DEFAULT_POLICY ('next-use'). */
  readonly policy?: PolicyName;
  /** Device budget in MiB, or as a fraction of all expert bytes; default: every expert fits. */
  readonly budgetMb?: number;
  readonly budgetFraction?: number;
  /** Following sparse layers whose experts the router lookahead prefetches; default 1, 0 disables. */
  readonly prefetchDepth?: number;
  /** Host-memory budget for experts in stored form, MiB; default: keep every expert read. */
  readonly hostCacheMb?: number;
  /**
   * GPU providers computing misses on the CPU: host memory for those experts kept in the CPU provider's
   * form, MiB (0: none); default: planned (memory-plan.ts).
   */
  readonly cpuCacheMb?: number;
  /** Routing profile for 'static' (trace or training_report.json); default: the model's training_report.json. */
  readonly profilePath?: string;
  /** Lookahead depth computed even where nothing is prefetched (for traces and recall); default 0. */
  readonly lookaheadDepth?: number;
}

export interface ModelLoadOptions {
  readonly device: DeviceKind;
  /** CPU provider threads (0 or absent: chosen from the model's size, see autoCpuThreads). */
  readonly cpuThreads?: number;
  /** Most experts per run of the routed-experts graph (default: GPU providers min(experts, 32), else 2 x top-k). */
  readonly maxSlotsPerRun?: number;
  /**
   * GPU providers: where an expert-cache miss is computed: 'upload' loads it into the cache, 'cpu' runs it
   * on the CPU provider from host memory, 'auto' (default) picks per miss by measured cost (miss-placement.ts).
   */
  readonly missPlacement?: MissPlacementMode;
  /** Compute forms of the weights (default: the provider's, see compute-options.ts). */
  readonly compute?: ComputeOptions;
  /** Called as weights load: the resident (non-expert) tensors, then the experts preloaded into the cache. */
  readonly onProgress?: (stage: LoadStage, done: number, total: number) => void;
  readonly experts?: ExpertCacheOptions;
}

export type LoadStage = 'resident weights' | 'converted experts' | 'preloaded experts' | 'converted tensors';

const MIB = 1024 * 1024;

/**
 * Most experts one routed-experts run takes on GPU providers by default: a batch of 16 decoding
 * Qwen3-30B-A3B (top-8 of 128) touches ~90 experts a layer, 3 runs at 32. Each slot count padded to a
 * power of two is one session (expert-routes.ts paddedSlots), so at most 6 are compiled.
 */
const GPU_SLOTS_PER_RUN = 32;

/**
 * One decode-shaped step through every session, so that the first request does not pay for
 * onnxruntime's first-run allocations (a large share of a short prompt's time otherwise). It uses a
 * throwaway expert store, so that the real cache starts empty (or with its preload) and its statistics
 * and policy state count only real requests, as a replay of their trace does.
 */
async function warmUp(parts: Omit<ForwardParts, 'experts'>, host: HostExpertCache, expertBytes: number): Promise<void> {
  const { spec, runtime, route } = parts;
  using experts = new ExpertStore({
    spec,
    host,
    materialize: (w, id) => route.materialize(w, id),
    expertBytes,
    policy: createPolicy('none', { capacityExperts: 0 }),
    budgetBytes: spec.topK * expertBytes,
    prefetchDepth: 0,
  });
  using kv = new SequenceKvCache(runtime, spec);
  await new ForwardPass({ ...parts, experts }).step(kv, [spec.bosTokenId ?? 0], 'last');
}

/** The first routed expert of the model, as stored: its form tells every expert's (checkpoints quantize uniformly). */
function firstSparseLayer(spec: ModelSpec): number {
  const layer = spec.sparseLayers.findIndex(Boolean);
  if (layer < 0) throw new Error('the model has no sparse layer');
  return layer;
}

type StoredExpert = { gate: StoredMatrix; up: StoredMatrix; down: StoredMatrix };

/** Bytes of one routed expert in compute form, from the first expert (as stored, or in host form). */
function expertComputeBytes(sample: StoredExpert, compute: ResolvedCompute): number {
  return [sample.gate, sample.up, sample.down].reduce((n, m) => n + computeBytes(computeMatrix(m, 'experts', compute)), 0);
}

/** Which layers have experts: what the cycle-following policies need to know. */
function expertLayout(spec: ModelSpec): ExpertLayout {
  return { numExperts: spec.numExperts, sparseLayers: sparseLayerIndices(spec) };
}

/** The expert cache's budget, policy and preload for these options: planned before the compute route is chosen. */
async function planExpertCache(dir: string, spec: ModelSpec, expertBytes: number, budgetBytes: number, o: ExpertCacheOptions): Promise<{ plan: CachePlan; totalBytes: number }> {
  const policy = o.policy ?? DEFAULT_POLICY;
  const ids = new ExpertIds(spec.numLayers, spec.numExperts);
  const allExperts = Array.from({ length: ids.count }, (_, id) => id).filter((id) => spec.sparseLayers[ids.key(id).layer]);
  const totalBytes = allExperts.length * expertBytes;
  let profile: number[] | undefined;
  if (policy === 'static') {
    const defaultProfile = join(dir, 'training_report.json');
    const path = o.profilePath ?? (existsSync(defaultProfile) ? defaultProfile : undefined);
    if (path !== undefined) profile = await loadRoutingProfile(path, ids);
  }
  return { plan: planCache({ policy, budgetBytes, expertBytes, topK: spec.topK, allExperts, profile, layout: expertLayout(spec) }), totalBytes };
}

/**
 * The expert tiers' budgets: the user's, else planned from the memory left once the resident weights
 * are loaded (memory-plan.ts), so that a model larger than memory starts and stays inside it.
 */
function planMemory(
  spec: ModelSpec,
  sample: StoredExpert,
  compute: ResolvedCompute,
  o: ExpertCacheOptions,
  onGpu: boolean,
  missPlacement: MissPlacementMode,
): { plan: ExpertMemoryPlan; expertBytes: number; hostBytes: number; totalComputeBytes: number } {
  const experts = spec.sparseLayers.filter(Boolean).length * spec.numExperts;
  // The host form is the stored form quantized once when experts compute quantized, and its compute form
  // is then itself: measuring both on it converts the sample once (quantizing a qwen3-30b-a3b-shaped
  // bf16 expert took a few hundred ms here).
  const host = { gate: expertHostForm(sample.gate, compute), up: expertHostForm(sample.up, compute), down: expertHostForm(sample.down, compute) };
  const expertBytes = expertComputeBytes(host, compute);
  const hostBytes = storedBytes(host.gate) + storedBytes(host.up) + storedBytes(host.down);
  const totalComputeBytes = experts * expertBytes;
  const deviceGiven =
    o.policy === 'all' ? totalComputeBytes : o.budgetMb !== undefined ? Math.floor(o.budgetMb * MIB) : o.budgetFraction !== undefined ? Math.floor(o.budgetFraction * totalComputeBytes) : undefined;
  const quantized = dtypeFor(sample.gate, 'experts', compute).startsWith('int');
  // A quantized expert is a prepacked session on the CPU provider (memory-plan.ts); float experts are plain arrays.
  const cpuOverhead = quantized ? PREPACKED_SESSION_OVERHEAD : 1;
  const plan = planExpertMemory({
    availableBytes: availableMemoryBytes(),
    totalComputeBytes,
    totalHostBytes: experts * hostBytes,
    expertComputeBytes: expertBytes,
    topK: spec.topK,
    deviceInHostMemory: !onGpu,
    residentOverhead: cpuOverhead,
    deviceBudgetBytes: deviceGiven,
    hostBudgetBytes: o.hostCacheMb === undefined ? undefined : Math.floor(o.hostCacheMb * MIB),
    cpuExpertCache: onGpu && missPlacement !== 'upload' ? { overhead: cpuOverhead, budgetBytes: o.cpuCacheMb === undefined ? undefined : Math.floor(o.cpuCacheMb * MIB) } : undefined,
  });
  return { plan, expertBytes, hostBytes, totalComputeBytes };
}

/**
 * Converting an expert is quantization (or dequantization) rather than a cheap widening: done for every
 * expert at load time when the host tier keeps them all, so that no request pays for it.
 */
function convertsAtLoad(stored: StoredMatrix, to: ComputeDType): boolean {
  const quantizedTo = to === 'int4' || to === 'int8';
  return stored.kind === 'quantized' ? to !== (stored.quantized.bits === 8 ? 'int8' : 'int4') : quantizedTo;
}

/**
 * CPU threads when the user leaves it to us. A small model's matrices are too small to split across
 * threads: on 2 cores tiny-moe (hidden 256) decodes at ~160-185 tokens/s on one thread and ~140 on two.
 * Larger models get onnxruntime's default (one thread per physical core).
 */
function autoCpuThreads(spec: ModelSpec): number {
  return spec.hiddenSize < 1024 ? 1 : 0;
}

export class MoeModel implements AsyncDisposable {
  private constructor(
    readonly dir: string,
    readonly spec: ModelSpec,
    readonly tokenizer: TextTokenizer,
    readonly eosTokenIds: readonly number[],
    /** Sampling settings from generation_config.json (greedy unless it says do_sample). */
    readonly samplingDefaults: SamplingParams,
    readonly runtime: Runtime,
    readonly experts: ExpertStore,
    readonly forward: ForwardPass,
    private readonly archive: SafetensorsArchive,
    private readonly weights: ResidentWeights,
    private readonly sessions: ModelSessions,
    /** The compute forms chosen, for reports. */
    readonly computeForms: { readonly weights: string; readonly attention: ComputeDType; readonly experts: ComputeDType; readonly expertRoute: string },
    /** The expert tiers' budgets and how much host memory they may reach (memory-plan.ts). */
    readonly memoryPlan: ExpertMemoryPlan,
    /** Where misses are computed on GPU providers; absent where every miss is loaded (or none can happen). */
    readonly hybrid: HybridExperts | undefined,
  ) {}

  static async load(dir: string, options: ModelLoadOptions): Promise<MoeModel> {
    const spec = await loadModelConfig(dir);
    const tokenizer = await TextTokenizer.fromModelDir(dir);
    const generation = await loadGenerationDefaults(dir);
    const eosTokenIds = generation.eosTokenIds ?? spec.eosTokenIds;
    const samplingDefaults = { temperature: generation.temperature, topP: generation.topP, topK: generation.topK };
    const archive = await SafetensorsArchive.open(dir);
    try {
      // From the headers alone, before anything is read or built: experts are read on demand, so a
      // missing or misshapen one would otherwise fail only the requests routed to it, and much later.
      checkCheckpointTensors(archive, spec, dir);
      const runtime = await Runtime.create({ device: options.device, cpuThreads: options.cpuThreads || autoCpuThreads(spec) });
      const cache = options.experts ?? {};
      const budgeted = cache.policy !== 'all' && (cache.budgetMb !== undefined || (cache.budgetFraction ?? 1) < 1);
      let compute = resolveCompute(options.device, options.compute, budgeted);
      const prefetchDepth = cache.prefetchDepth ?? 1;
      const data = await readResidentWeights(archive, spec, compute, Math.max(prefetchDepth, cache.lookaheadDepth ?? 0, usesLookahead(cache.policy ?? DEFAULT_POLICY) ? 1 : 0), (d, t) =>
        options.onProgress?.('resident weights', d, t),
      );
      const weights = await ResidentWeights.create(runtime, data);
      const sessions = await ModelSessions.create(runtime, spec, data.layers, data.head);
      const newHost = (budgetBytes: number | null, c: ResolvedCompute) =>
        new HostExpertCache({
          archive,
          family: spec.family,
          quantization: spec.quantization,
          hiddenSize: spec.hiddenSize,
          intermediateSize: spec.expertIntermediateSize,
          toHost: (m) => expertHostForm(m, c),
          budgetBytes,
        });
      const sample = await newHost(0, compute).readStored({ layer: firstSparseLayer(spec), expert: 0 });
      const missPlacement = options.missPlacement ?? DEFAULT_MISS_PLACEMENT;
      let memory = planMemory(spec, sample, compute, cache, runtime.onGpu, missPlacement);
      if (!budgeted && memory.plan.deviceBudgetBytes < memory.totalComputeBytes) {
        // The experts do not fit, so misses will happen: the compute form defaults change (resolveCompute).
        compute = resolveCompute(options.device, options.compute, true);
        memory = planMemory(spec, sample, compute, cache, runtime.onGpu, missPlacement);
      }
      const host = newHost(memory.plan.hostBudgetBytes, compute);
      const { expertBytes } = memory;
      const expertDtype = dtypeFor(sample.gate, 'experts', compute);
      const toCompute = (m: StoredMatrix, into?: Float32Array) => computeMatrix(m, 'experts', compute, into);
      const { plan, totalBytes } = await planExpertCache(dir, spec, expertBytes, memory.plan.deviceBudgetBytes, cache);
      // On the CPU a run is cheap and every slot computes; on GPU providers each run costs 0.4-1.9 ms
      // (PLATFORM.md), so a batched step's experts go in as few runs as the graph allows.
      const cpuSlotsPerRun = 2 * spec.topK;
      const maxSlotsPerRun = Math.max(1, options.maxSlotsPerRun ?? (runtime.onGpu ? Math.min(spec.numExperts, GPU_SLOTS_PER_RUN) : cpuSlotsPerRun));
      // Hybrid execution only where a miss can happen and the device is not the CPU itself.
      const placesMisses = runtime.onGpu && missPlacement !== 'upload' && plan.budgetBytes < totalBytes;
      const route = chooseExpertRoute({
        runtime,
        blocks: sessions.moeBlocks,
        hiddenSize: spec.hiddenSize,
        expertDtype,
        toCompute,
        accuracyLevel: compute.accuracyLevel,
        maxSlotsPerRun,
        everyExpertFits: plan.budgetBytes >= totalBytes,
      });
      if (host.budgetBytes === null && convertsAtLoad(sample.gate, expertDtype)) {
        const ids = new ExpertIds(spec.numLayers, spec.numExperts);
        const keys = Array.from({ length: ids.count }, (_, id) => ids.key(id)).filter((k) => spec.sparseLayers[k.layer]);
        let done = 0;
        for (const key of keys) {
          await host.get(key, () => undefined);
          options.onProgress?.('converted experts', ++done, keys.length);
        }
      }
      const hybrid = placesMisses
        ? await HybridExperts.create({
            mode: missPlacement,
            hiddenSize: spec.hiddenSize,
            intermediateSize: spec.expertIntermediateSize,
            expertBytes,
            hostExpertBytes: memory.hostBytes,
            expertDtype,
            toCompute,
            accuracyLevel: compute.accuracyLevel,
            maxSlotsPerRun: cpuSlotsPerRun,
            cacheBytes: memory.plan.cpuExpertCacheBytes,
            device: runtime,
          })
        : undefined;
      const parts = { spec, runtime, weights, sessions, route, hybrid };
      // A host tier that keeps nothing: the warm-up reads top-k experts of every layer, which must not stay.
      await warmUp(parts, newHost(0, compute), expertBytes);
      const experts = new ExpertStore({
        spec,
        host,
        materialize: (w, id) => route.materialize(w, id),
        onLoaded: hybrid ? (ms) => hybrid.recordUpload(ms) : undefined,
        expertBytes,
        policy: plan.policy,
        budgetBytes: plan.budgetBytes,
        prefetchDepth,
      });
      await experts.preload(plan.preload, (d, t) => options.onProgress?.('preloaded experts', d, t));
      const forward = new ForwardPass({ ...parts, experts });
      const attention = data.layers[0]?.variant.matrices[ATTN.qkv]?.dtype ?? 'f32';
      const rest = [...new Set(data.layers.flatMap((l) => Object.entries(l.variant.matrices).filter(([k]) => k !== ATTN.qkv && k !== ATTN.o).map(([, f]) => f.dtype)).concat(data.head.variant.lmHead.dtype))];
      return new MoeModel(dir, spec, tokenizer, eosTokenIds, samplingDefaults, runtime, experts, forward, archive, weights, sessions, {
        weights: rest.join('+'),
        attention,
        experts: expertDtype,
        expertRoute: route.kind,
      }, memory.plan, hybrid);
    } catch (err) {
      await archive.close();
      throw err;
    }
  }

  /** Starts a routing trace file for this model (`--trace`); a write error turns it off (see TraceWriter). */
  openTrace(path: string, options?: TraceWriterOptions): Promise<TraceWriter> {
    return TraceWriter.open(path, {
      model: this.dir,
      num_layers: this.spec.numLayers,
      num_experts: this.spec.numExperts,
      top_k: this.spec.topK,
      expert_bytes: this.experts.expertBytes,
      sparse_layers: sparseLayerIndices(this.spec),
    }, options);
  }

  /** A fresh KV cache for one sequence. */
  newSequence(): SequenceKvCache {
    return new SequenceKvCache(this.runtime, this.spec);
  }

  get residentBytes(): number {
    return this.weights.residentBytes + this.experts.stats().residentBytes;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.experts[Symbol.dispose]();
    this.weights[Symbol.dispose]();
    await this.sessions.release();
    await this.hybrid?.release();
    await this.archive.close();
  }
}
