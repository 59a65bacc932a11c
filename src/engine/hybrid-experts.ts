// Hybrid execution of expert-cache misses on GPU providers: each missed expert of a step is either loaded
// (uploaded and cached, the usual path) or computed on the CPU provider from its host-memory weights, as
// the cost model in miss-placement.ts decides. Resident experts (and prefetches in flight) always run on
// the device. The CPU's share of the layer comes back as (T, H) host rows that the forward pass adds to
// the device-resident residual stream in one small run.
import type { ExpertStore } from '../experts/expert-store.js';
import type { HostExpert } from '../experts/host-expert-cache.js';
import type { ComputeDType } from '../model/compute-form.js';
import { Runtime } from '../runtime/onnx-runtime.js';
import { chooseExpertRoute, type ExpertRoute, type ToCompute } from './expert-routes.js';
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

export class HybridExperts {
  readonly costs: MissCostModel;

  private constructor(
    private readonly o: HybridExpertsOptions,
    private readonly cpu: Runtime,
    private readonly blocks: MoeBlockSessions,
    private readonly route: ExpertRoute,
  ) {
    this.costs = new MissCostModel(o.mode);
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

  /** Resident experts stay on the device; each miss goes where the cost model says. */
  place(layer: number, assignments: readonly ExpertAssignment[], store: ExpertStore): ExpertPlacement {
    if (this.o.mode === 'upload') return { onDevice: assignments, onCpu: [] };
    const onDevice: ExpertAssignment[] = [];
    const onCpu: ExpertAssignment[] = [];
    const cost = this.expertCost();
    for (const a of assignments) {
      const place = store.isResident(layer, a.expert) ? 'upload' : this.costs.choose(a.rows.length, cost);
      (place === 'cpu' ? onCpu : onDevice).push(a);
    }
    return { onDevice, onCpu };
  }

  /**
   * sum over `assignments` of routing weight x expert(x[rows]), as (T, H) host rows, computed on the CPU
   * provider from the experts' host weights (ExpertStore.hostWeights). `x` is the layer's (T, H) MoE input on the host.
   */
  async compute(layer: number, x: Float32Array, T: number, assignments: readonly ExpertAssignment[], weights: readonly HostExpert[], store: ExpertStore): Promise<Float32Array> {
    const H = this.o.hiddenSize;
    const t0 = performance.now();
    const experts = await Promise.all(weights.map((w, i) => this.route.materialize(w, store.ids.id({ layer, expert: (assignments[i] as ExpertAssignment).expert }))));
    let acc = this.cpu.float32(new Float32Array(T * H), [T, H]);
    try {
      const input = this.cpu.float32(x, [T, H]);
      for (let run = 0; run < assignments.length; run += this.route.maxPerRun) {
        const end = Math.min(assignments.length, run + this.route.maxPerRun);
        acc = await this.route.apply(acc, input, T, assignments.slice(run, end), experts.slice(run, end));
      }
    } finally {
      experts.forEach((e) => e.dispose());
    }
    const ms = performance.now() - t0;
    const rows = assignments.reduce((n, a) => n + a.rows.length, 0);
    const hostBytes = weights.reduce((n, w) => n + w.bytes, 0);
    const flops = rows * this.expertCost().flopsPerRow;
    // Memory-bound runs are timed per expert (each reads its own weights); compute-bound per row.
    this.costs.recordCpu(rows / assignments.length, hostBytes, flops, ms);
    store.addCpuMs(layer, ms);
    return acc.data as Float32Array;
  }

  private expertCost(): ExpertCost {
    const { hiddenSize: H, intermediateSize: I } = this.o;
    return { computeBytes: this.o.expertBytes, hostBytes: this.o.hostExpertBytes, flopsPerRow: 6 * H * I };
  }

  async release(): Promise<void> {
    await this.blocks.release();
  }
}
