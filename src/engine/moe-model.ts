// A loaded model: config -> weights -> sessions -> forward pass, plus its tokenizer.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expertComputeBytes, ExpertStore } from '../experts/expert-store.js';
import { HostExpertCache } from '../experts/host-expert-cache.js';
import { planCache } from '../experts/cache-plan.js';
import { createPolicy, type PolicyName } from '../experts/policies/index.js';
import { loadRoutingProfile } from '../experts/routing-profile.js';
import { TraceWriter } from '../experts/trace-writer.js';
import { loadGenerationDefaults, loadModelConfig, type ModelSpec } from '../model/hf-config.js';
import { SafetensorsArchive } from '../model/safetensors.js';
import { ExpertIds } from '../experts/expert-id.js';
import { Runtime, type DeviceKind } from '../runtime/onnx-runtime.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { ForwardPass, type ForwardParts } from './forward.js';
import { SequenceKvCache } from './kv-cache.js';
import { ModelSessions } from './model-sessions.js';
import { ResidentWeights } from './resident-weights.js';
import { RopeTable } from './rope.js';
import type { SamplingParams } from './sampler.js';

/** The expert cache: tiers, budget, policy and prefetching. Every field is optional. */
export interface ExpertCacheOptions {
  /** Default 'lru'. */
  readonly policy?: PolicyName;
  /** Device budget in MiB, or as a fraction of all expert bytes; default: every expert fits. */
  readonly budgetMb?: number;
  readonly budgetFraction?: number;
  /** Following sparse layers whose experts the router lookahead prefetches; default 1, 0 disables. */
  readonly prefetchDepth?: number;
  /** Host-memory budget for experts in stored form, MiB; default: keep every expert read. */
  readonly hostCacheMb?: number;
  /** Routing profile for 'static' (trace or training_report.json); default: the model's training_report.json. */
  readonly profilePath?: string;
  /** Lookahead depth computed even where nothing is prefetched (for traces and recall); default 0. */
  readonly lookaheadDepth?: number;
}

export interface ModelLoadOptions {
  readonly device: DeviceKind;
  /** CPU provider threads (0 or absent: chosen from the model's size, see autoCpuThreads). */
  readonly cpuThreads?: number;
  /** Most experts per run of the routed-experts graph (default: 2 x top-k). */
  readonly maxSlotsPerRun?: number;
  /** Called as weights load: the resident (non-expert) tensors, then the experts preloaded into the cache. */
  readonly onProgress?: (stage: LoadStage, done: number, total: number) => void;
  readonly experts?: ExpertCacheOptions;
}

export type LoadStage = 'resident weights' | 'preloaded experts';

const MIB = 1024 * 1024;

/**
 * One decode-shaped step through every session, so that the first request does not pay for
 * onnxruntime's first-run allocations (a large share of a short prompt's time otherwise). It uses a
 * throwaway expert store, so that the real cache starts empty (or with its preload) and its statistics
 * and policy state count only real requests, as a replay of their trace does.
 */
async function warmUp(parts: Omit<ForwardParts, 'experts'>, archive: SafetensorsArchive): Promise<void> {
  const { spec, runtime } = parts;
  const host = new HostExpertCache(archive, spec.family, null);
  const expertBytes = expertComputeBytes(spec);
  using experts = new ExpertStore({ spec, runtime, host, policy: createPolicy('none', { capacityExperts: 0 }), budgetBytes: spec.topK * expertBytes, prefetchDepth: 0 });
  using kv = new SequenceKvCache(runtime, spec);
  await new ForwardPass({ ...parts, experts }).step(kv, [spec.bosTokenId ?? 0], 'last');
}

async function createExpertStore(
  dir: string,
  spec: ModelSpec,
  runtime: Runtime,
  archive: SafetensorsArchive,
  o: ExpertCacheOptions,
  prefetchDepth: number,
  onProgress: (done: number, total: number) => void,
): Promise<ExpertStore> {
  const policy = o.policy ?? 'lru';
  const ids = new ExpertIds(spec.numLayers, spec.numExperts);
  const expertBytes = expertComputeBytes(spec);
  const allExperts = Array.from({ length: ids.count }, (_, id) => id).filter((id) => spec.sparseLayers[ids.key(id).layer]);
  const totalBytes = allExperts.length * expertBytes;
  const budgetBytes =
    o.budgetMb !== undefined ? Math.floor(o.budgetMb * MIB) : o.budgetFraction !== undefined ? Math.floor(o.budgetFraction * totalBytes) : totalBytes;
  let profile: number[] | undefined;
  if (policy === 'static') {
    const defaultProfile = join(dir, 'training_report.json');
    const path = o.profilePath ?? (existsSync(defaultProfile) ? defaultProfile : undefined);
    if (path !== undefined) profile = await loadRoutingProfile(path, ids);
  }
  const plan = planCache({ policy, budgetBytes, expertBytes, topK: spec.topK, allExperts, profile });
  const host = new HostExpertCache(archive, spec.family, o.hostCacheMb === undefined ? null : Math.floor(o.hostCacheMb * MIB));
  const store = new ExpertStore({ spec, runtime, host, policy: plan.policy, budgetBytes: plan.budgetBytes, prefetchDepth });
  await store.preload(plan.preload, onProgress);
  return store;
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
  ) {}

  static async load(dir: string, options: ModelLoadOptions): Promise<MoeModel> {
    const spec = await loadModelConfig(dir);
    const tokenizer = await TextTokenizer.fromModelDir(dir);
    const generation = await loadGenerationDefaults(dir);
    const eosTokenIds = generation.eosTokenIds ?? spec.eosTokenIds;
    const samplingDefaults = { temperature: generation.temperature, topP: generation.topP, topK: generation.topK };
    const runtime = await Runtime.create({ device: options.device, cpuThreads: options.cpuThreads || autoCpuThreads(spec) });
    const archive = await SafetensorsArchive.open(dir);
    try {
      const cache = options.experts ?? {};
      const prefetchDepth = cache.prefetchDepth ?? 1;
      const weights = await ResidentWeights.load(archive, spec, runtime, Math.max(prefetchDepth, cache.lookaheadDepth ?? 0), (d, t) =>
        options.onProgress?.('resident weights', d, t),
      );
      const sessions = await ModelSessions.create(runtime, spec, weights.variants);
      const rope = new RopeTable(spec.ropeTheta, spec.headDim);
      const maxSlotsPerRun = Math.max(1, options.maxSlotsPerRun ?? 2 * spec.topK);
      const parts = { spec, runtime, weights, sessions, rope, maxSlotsPerRun };
      await warmUp(parts, archive);
      const experts = await createExpertStore(dir, spec, runtime, archive, cache, prefetchDepth, (d, t) => options.onProgress?.('preloaded experts', d, t));
      const forward = new ForwardPass({ ...parts, experts });
      return new MoeModel(dir, spec, tokenizer, eosTokenIds, samplingDefaults, runtime, experts, forward, archive, weights, sessions);
    } catch (err) {
      await archive.close();
      throw err;
    }
  }

  /** Starts a routing trace file for this model (`--trace`). */
  openTrace(path: string): Promise<TraceWriter> {
    return TraceWriter.open(path, {
      model: this.dir,
      num_layers: this.spec.numLayers,
      num_experts: this.spec.numExperts,
      top_k: this.spec.topK,
      expert_bytes: this.experts.expertBytes,
      sparse_layers: this.spec.sparseLayers.flatMap((sparse, l) => (sparse ? [l] : [])),
    });
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
    await this.archive.close();
  }
}
