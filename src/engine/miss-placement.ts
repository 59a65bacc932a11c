// Where a missed expert is computed on a GPU provider: uploaded into the device cache and run there, or
// run on the CPU provider from its host-memory weights with only its input rows and its output moving
// (Fiddler's answer for Mixtral on one GPU). PLATFORM.md's figures make the case: an upload through the
// WebGPU provider runs at ~1 GB/s, the CPU computes an expert GEMV at 15-30 GB/s of weight bytes.
//
// The choice is a cost model fed by what this process measures: every upload (bytes and milliseconds)
// and every CPU expert run (bytes, rows and milliseconds) updates a moving estimate, starting from
// PLATFORM.md's figures. Per missed expert it compares
//   upload: compute-form bytes / upload rate        (the GPU's run of the expert is not counted: it is
//                                                     the same few ms either way once resident)
//   cpu:    max(host bytes / CPU byte rate,          (memory-bound: decode rows)
//               rows x FLOPs per row / CPU FLOP rate) (compute-bound: prompt chunks)
// An upload also leaves the expert cached for later uses; the model does not credit that, so 'auto'
// leans to the CPU for experts the lookahead did not prefetch, which is what Fiddler measured to pay.

export const MISS_PLACEMENTS = ['upload', 'cpu', 'auto'] as const;
export type MissPlacementMode = (typeof MISS_PLACEMENTS)[number];
export const DEFAULT_MISS_PLACEMENT: MissPlacementMode = 'auto';

export type MissPlace = 'upload' | 'cpu';

/** Starting estimates, before anything is measured (PLATFORM.md: WebGPU upload ~1 GB/s, CPU fp32 GEMV 15-30 GB/s on 2 cores). */
export const MISS_COST_PRIORS = { uploadGbps: 1, cpuGbps: 15, cpuGflops: 50 } as const;

/** Weight of a new measurement in the moving estimates: recent enough to follow load, smooth enough to ignore one stall. */
const EWMA = 0.2;

/** Rows at or under which a CPU expert run is treated as memory-bound (decode): its time measures the byte rate. */
const MEMORY_BOUND_ROWS = 4;

export interface MissCostEstimates {
  /** Host -> device bytes per second achieved by expert uploads, in GB/s. */
  readonly uploadGbps: number;
  /** Expert weight bytes per second of CPU expert runs at decode shapes, in GB/s. */
  readonly cpuGbps: number;
  /** FLOP rate of CPU expert runs over many rows, in GFLOP/s. */
  readonly cpuGflops: number;
}

export class MissCostModel {
  private uploadBytesPerMs: number;
  private cpuBytesPerMs: number;
  private cpuFlopsPerMs: number;

  constructor(
    readonly mode: MissPlacementMode,
    priors: MissCostEstimates = MISS_COST_PRIORS,
  ) {
    this.uploadBytesPerMs = priors.uploadGbps * 1e6;
    this.cpuBytesPerMs = priors.cpuGbps * 1e6;
    this.cpuFlopsPerMs = priors.cpuGflops * 1e6;
  }

  /** Where to compute a missed expert of `rows` routed rows. */
  choose(rows: number, cost: ExpertCost): MissPlace {
    if (this.mode !== 'auto') return this.mode;
    return this.cpuMs(rows, cost) < this.uploadMs(cost) ? 'cpu' : 'upload';
  }

  /**
   * Where to compute a missed expert whose CPU form is kept from an earlier use (hybrid-experts.ts): its
   * weights are ready, so the CPU side costs its FLOPs alone, which decode rows make negligible.
   */
  chooseKept(rows: number, cost: ExpertCost): MissPlace {
    if (this.mode !== 'auto') return this.mode;
    return (rows * cost.flopsPerRow) / this.cpuFlopsPerMs < this.uploadMs(cost) ? 'cpu' : 'upload';
  }

  uploadMs(cost: ExpertCost): number {
    return cost.computeBytes / this.uploadBytesPerMs;
  }

  cpuMs(rows: number, cost: ExpertCost): number {
    return Math.max(cost.hostBytes / this.cpuBytesPerMs, (rows * cost.flopsPerRow) / this.cpuFlopsPerMs);
  }

  /** One expert's upload took `ms`. */
  recordUpload(bytes: number, ms: number): void {
    if (ms > 0) this.uploadBytesPerMs = mix(this.uploadBytesPerMs, bytes / ms);
  }

  /** One CPU run over `rows` rows of experts whose weights total `bytes` and whose FLOPs total `flops` took `ms`. */
  recordCpu(rows: number, bytes: number, flops: number, ms: number): void {
    if (ms <= 0) return;
    if (rows <= MEMORY_BOUND_ROWS) this.cpuBytesPerMs = mix(this.cpuBytesPerMs, bytes / ms);
    else this.cpuFlopsPerMs = mix(this.cpuFlopsPerMs, flops / ms);
  }

  get estimates(): MissCostEstimates {
    return { uploadGbps: this.uploadBytesPerMs / 1e6, cpuGbps: this.cpuBytesPerMs / 1e6, cpuGflops: this.cpuFlopsPerMs / 1e6 };
  }
}

/** What one expert costs to move and to compute. */
export interface ExpertCost {
  /** Bytes in the device's compute form: what an upload moves. */
  readonly computeBytes: number;
  /** Bytes of its host form: what a CPU run reads. */
  readonly hostBytes: number;
  /** FLOPs per routed row: 2 x 3 matrices of hidden x intermediate. */
  readonly flopsPerRow: number;
}

function mix(old: number, measured: number): number {
  return old + EWMA * (measured - old);
}
