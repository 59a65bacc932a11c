// A loaded model: config -> weights -> sessions -> forward pass, plus its tokenizer.
import { ExpertStore } from '../experts/expert-store.js';
import { loadGenerationDefaults, loadModelConfig, type ModelSpec } from '../model/hf-config.js';
import { SafetensorsArchive } from '../model/safetensors.js';
import { Runtime, type DeviceKind } from '../runtime/onnx-runtime.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { ForwardPass } from './forward.js';
import { SequenceKvCache } from './kv-cache.js';
import { ModelSessions } from './model-sessions.js';
import { ResidentWeights, type LoadProgress } from './resident-weights.js';
import { RopeTable } from './rope.js';
import type { SamplingParams } from './sampler.js';

export interface ModelLoadOptions {
  readonly device: DeviceKind;
  /** CPU provider threads (0 or absent: chosen from the model's size, see autoCpuThreads). */
  readonly cpuThreads?: number;
  /** Most experts per run of the routed-experts graph (default: 2 x top-k). */
  readonly maxSlotsPerRun?: number;
  readonly onProgress?: LoadProgress;
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
      const weights = await ResidentWeights.load(archive, spec, runtime, options.onProgress);
      const sessions = await ModelSessions.create(runtime, spec, weights.variants);
      const experts = new ExpertStore(archive, spec, runtime);
      const rope = new RopeTable(spec.ropeTheta, spec.headDim);
      const maxSlotsPerRun = Math.max(1, options.maxSlotsPerRun ?? 2 * spec.topK);
      const forward = new ForwardPass({ spec, runtime, weights, experts, sessions, rope, maxSlotsPerRun });
      const model = new MoeModel(dir, spec, tokenizer, eosTokenIds, samplingDefaults, runtime, experts, forward, archive, weights, sessions);
      await model.warmUp();
      return model;
    } catch (err) {
      await archive.close();
      throw err;
    }
  }

  /**
   * One decode-shaped step through every session, so that the first request does not pay for
   * onnxruntime's first-run allocations (a large share of a short prompt's time otherwise).
   */
  private async warmUp(): Promise<void> {
    using kv = this.newSequence();
    await this.forward.step(kv, [this.spec.bosTokenId ?? 0], 'last');
  }

  /** A fresh KV cache for one sequence. */
  newSequence(): SequenceKvCache {
    return new SequenceKvCache(this.runtime, {
      numLayers: this.spec.numLayers,
      numKvHeads: this.spec.numKvHeads,
      headDim: this.spec.headDim,
      maxPositions: this.spec.maxPositions,
    });
  }

  get residentBytes(): number {
    return this.weights.residentBytes + this.experts.stats.residentBytes;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.experts[Symbol.dispose]();
    this.weights[Symbol.dispose]();
    await this.sessions.release();
    await this.archive.close();
  }
}
