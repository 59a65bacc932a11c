// Hybrid execution of expert-cache misses on GPU providers: each missed expert of a step is either loaded
// (uploaded and cached, the usual path) or computed on the CPU provider from its host-memory weights, as
// the cost model in miss-placement.ts decides. Resident experts (and prefetches in flight) always run on
// the device. The CPU's share of the layer comes back as (T, H) host rows that the forward pass adds to
// the device-resident residual stream (as an input of the next run, or in one small run).
// A miss's CPU form (a widened f32 expert, or a prepacked session for a quantized one) costs several times
// its run to make (`bench kernels --shapes 2048x768`, 1 thread: f32 22.7 ms against a 1.4 ms run, an int4
// session at accuracy level 0 7.9 ms against 0.8 ms), so the most recently used are kept in a
// byte-budgeted LRU (--cpu-expert-cache-mb).
import { LRUCache } from 'lru-cache';
import type { ExpertId } from '../experts/expert-id.js';
import type { ExpertStore, ResidentExpert } from '../experts/expert-store.js';
import type { HostExpert } from '../experts/host-expert-cache.js';
import type { ComputeDType } from '../model/compute-form.js';
import { Runtime } from '../runtime/onnx-runtime.js';
import { chooseExpertRoute, type ExpertRoute, type ToCompute } from './expert-routes.js';
import { PREPACKED_SESSION_OVERHEAD } from './memory-plan.js';
import { MissCostModel, type ExpertCost, type MissPlacementMode } from './miss-placement.js';
import { MoeBlockSessions } from './model-sessions.js';
import type { ExpertAssignment } from './routing.js';

export interface HybridExpertsOptions {
  readonly mode: MissPlacementMode;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  /** Compute-form bytes of one expert: what its upload moves. */
  readonly expertBytes: number;
  /** Host-form bytes of one expert: what its CPU run reads. */
  readonly hostExpertBytes: number;
  readonly expertDtype: ComputeDType;
  readonly toCompute: ToCompute;
  /** The device experts' MatMulNBits accuracy level: the CPU must compute what the device does (see moe-model.ts). */
  readonly accuracyLevel: 0 | 4;
  readonly maxSlotsPerRun: number;
  /** Host memory for experts kept in the CPU provider's form between uses (memory-plan.ts); 0 keeps none. */
  readonly cacheBytes: number;
  /**
   * The device's runtime: the CPU runs use its CPU thread setting, and are tallied with its runs as kinds
   * cpu_* (runs per token count both).
   */
  readonly device: Runtime;
}

/** A step's experts of one layer, split by where they run. */
export interface ExpertPlacement {
  readonly onDevice: readonly ExpertAssignment[];
  readonly onCpu: readonly ExpertAssignment[];
}

/** A layer's CPU-computed experts before their run: the ones kept from earlier uses, and the others' host weights. */
export interface CpuExperts {
  readonly layer: number;
  readonly ids: readonly ExpertId[];
  readonly kept: readonly (ResidentExpert | undefined)[];
  readonly weights: readonly (HostExpert | undefined)[];
}

export class HybridExperts {
  readonly costs: MissCostModel;
  /** CPU forms of missed experts by id, kept between uses; undefined when the budget keeps none. */
  private readonly kept: LRUCache<ExpertId, ResidentExpert> | undefined;
  /** Experts in a run now: one evicted meanwhile is disposed after the run. */
  private readonly inUse = new Set<ResidentExpert>();
  private readonly evictedInUse: ResidentExpert[] = [];

  private constructor(
    private readonly o: HybridExpertsOptions,
    private readonly cpu: Runtime,
    private readonly blocks: MoeBlockSessions,
    private readonly route: ExpertRoute,
  ) {
    this.costs = new MissCostModel(o.mode);
    const size = this.keptBytes;
    if (o.cacheBytes >= size) {
      this.kept = new LRUCache<ExpertId, ResidentExpert>({
        maxSize: o.cacheBytes,
        sizeCalculation: () => size,
        dispose: (e) => (this.inUse.has(e) ? this.evictedInUse.push(e) : e.dispose()),
      });
    }
  }

  /** Host memory one kept expert takes: its compute form, or a prepacked session's (memory-plan.ts). */
  private get keptBytes(): number {
    return Math.ceil(this.o.expertBytes * (this.route.kind === 'session' ? PREPACKED_SESSION_OVERHEAD : 1));
  }


  static async create(o: HybridExpertsOptions): Promise<HybridExperts> {
    const cpu = await Runtime.create({ device: 'cpu', cpuThreads: o.device.options.cpuThreads }, { with: o.device, prefix: 'cpu_' });
    const blocks = new MoeBlockSessions(cpu, o.hiddenSize);
    // Misses are the only experts computed here and none is kept, so float experts take the graph route
    // (a miss is a widening) and quantized ones a prepacked session (the only fast int4/int8 CPU form).
    const route = chooseExpertRoute({
      runtime: cpu,
      blocks,
      hiddenSize: o.hiddenSize,
      expertDtype: o.expertDtype,
      toCompute: o.toCompute,
      accuracyLevel: o.accuracyLevel,
      maxSlotsPerRun: o.maxSlotsPerRun,
      everyExpertFits: false,
    });
    return new HybridExperts(o, cpu, blocks, route);
  }

  get mode(): MissPlacementMode {
    return this.o.mode;
  }

  /** Records how long one expert's load into the device cache took (the upload side of the cost model). */
  recordUpload(ms: number): void {
    this.costs.recordUpload(this.o.expertBytes, ms);
  }

  /** Resident experts stay on the device; each miss goes where the cost model says, knowing which are kept in the CPU's form. */
  place(layer: number, assignments: readonly ExpertAssignment[], store: ExpertStore): ExpertPlacement {
    if (this.o.mode === 'upload') return { onDevice: assignments, onCpu: [] };
    const onDevice: ExpertAssignment[] = [];
    const onCpu: ExpertAssignment[] = [];
    const cost = this.expertCost();
    for (const a of assignments) {
      const kept = this.kept?.has(store.ids.id({ layer, expert: a.expert })) ?? false;
      const place = store.isResident(layer, a.expert) ? 'upload' : kept ? this.costs.chooseKept(a.rows.length, cost) : this.costs.choose(a.rows.length, cost);
      (place === 'cpu' ? onCpu : onDevice).push(a);
    }
    return { onDevice, onCpu };
  }

  /**
   * The first half of computing `assignments` on the CPU, done before the device's experts are leased (see
   * forward.ts): the experts kept from earlier uses, and the host weights of the others, read through the
   * store, which counts them all.
   */
  async prepare(layer: number, assignments: readonly ExpertAssignment[], store: ExpertStore): Promise<CpuExperts> {
    const ids = assignments.map((a) => store.ids.id({ layer, expert: a.expert }));
    const kept = ids.map((id) => this.kept?.get(id));
    const weights = await store.hostWeights(layer, assignments.map((a) => a.expert), kept.map((e) => e !== undefined));
    return { layer, ids, kept, weights };
  }

  /**
   * sum over `assignments` of routing weight x expert(x[rows]), as (T, H) host rows, computed on the CPU
   * provider from what prepare() found. `x` is the layer's (T, H) MoE input on the host. The experts made
   * here are kept for their next use, as the budget allows.
   */
  async compute(x: Float32Array, T: number, assignments: readonly ExpertAssignment[], work: CpuExperts, store: ExpertStore): Promise<Float32Array> {
    const H = this.o.hiddenSize;
    const t0 = performance.now();
    work.kept.forEach((e) => e && this.inUse.add(e));
    const made = new Map<number, ResidentExpert>();
    let acc = this.cpu.float32(new Float32Array(T * H), [T, H]);
    try {
      const experts = await Promise.all(
        work.ids.map(async (id, i) => {
          const kept = work.kept[i];
          if (kept) return kept;
          const e = await this.route.materialize(work.weights[i] as HostExpert, id);
          made.set(i, e);
          return e;
        }),
      );
      const input = this.cpu.float32(x, [T, H]);
      for (let run = 0; run < assignments.length; run += this.route.maxPerRun) {
        const end = Math.min(assignments.length, run + this.route.maxPerRun);
        acc = await this.route.apply(acc, input, T, assignments.slice(run, end), experts.slice(run, end));
      }
    } finally {
      for (const [i, e] of made) {
        if (this.kept) this.kept.set(work.ids[i] as ExpertId, e);
        else e.dispose();
      }
      this.inUse.clear();
      this.evictedInUse.splice(0).forEach((e) => e.dispose());
    }
    const ms = performance.now() - t0;
    const rows = assignments.reduce((n, a) => n + a.rows.length, 0);
    const hostBytes = work.weights.reduce((n, w) => n + (w?.bytes ?? 0), 0);
    const flops = rows * this.expertCost().flopsPerRow;
    // Memory-bound runs are timed per expert (each reads its own weights); compute-bound per row. Only runs
    // whose experts were all made here measure what the model's choose() predicts (chooseKept counts FLOPs).
    if (work.kept.every((e) => e === undefined)) this.costs.recordCpu(rows / assignments.length, hostBytes, flops, ms);
    store.addCpuMs(work.layer, ms);
    return acc.data as Float32Array;
  }

  private expertCost(): ExpertCost {
    const { hiddenSize: H, intermediateSize: I } = this.o;
    return { computeBytes: this.o.expertBytes, hostBytes: this.o.hostExpertBytes, flopsPerRow: 6 * H * I };
  }

  async release(): Promise<void> {
    this.kept?.clear();
    await this.blocks.release();
  }
}
