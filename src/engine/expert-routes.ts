// How routed experts are computed: what a resident expert is (the device tier's entry), how a cache miss
// makes one from the host tier's form, and how a layer's routed experts are applied to the residual stream.
//
//   session (CPU provider): each resident expert is a session of its own whose weights are initializers,
//     prepacked by onnxruntime (expert-ffn.ts). A miss costs a session creation and its first run (~0.9 ms
//     at tiny-moe's shape); a use is one run over the rows routed to the expert, and the weighted sum is
//     taken here in JS (T x H floats per expert). The quantized kernels are only fast this way
//     (PLATFORM.md, `npm run bench -- kernels`).
//   graph (GPU providers; float experts on the CPU provider when misses are expected): each resident
//     expert is a set of tensors fed as inputs to one routed-experts graph that applies several experts
//     per run (moe-block.ts). On GPUs the hidden states never leave the device; on the CPU a miss is then
//     only a widening of bf16 to float32. chooseExpertRoute says which, and why.
import { EXPERT_FFN, buildExpertFfn } from '../graphs/expert-ffn.js';
import { matrixForm, matrixTensors } from '../graphs/matrix.js';
import { MOE, type ExpertForms } from '../graphs/moe-block.js';
import type { ConstTensor } from '../graphs/onnx-builder.js';
import { concatRows, type ComputeDType, type ComputeMatrix, type StoredMatrix } from '../model/compute-form.js';
import type { ExpertId } from '../experts/expert-id.js';
import type { HostExpert } from '../experts/host-expert-cache.js';
import type { ResidentExpert } from '../experts/expert-store.js';
import type { DeviceTensor, GraphSession, RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import type { MoeBlockSessions } from './model-sessions.js';
import type { ExpertAssignment } from './routing.js';

export type ExpertRouteKind = 'session' | 'graph';

export interface ExpertRoute {
  readonly kind: ExpertRouteKind;
  /** The device-tier form of an expert (a cache miss's load). */
  materialize(weights: HostExpert, id: ExpertId): Promise<ResidentExpert>;
  /** Most experts one apply() takes. */
  readonly maxPerRun: number;
  /**
   * acc + sum over `chunk` of routing weight * expert(moeInput[rows]): acc and moeInput are (T, H).
   * Takes ownership of `acc` (its data may be updated in place; released on the GPU).
   */
  apply(acc: RtTensor, moeInput: RtTensor, T: number, chunk: readonly ExpertAssignment[], experts: readonly ResidentExpert[]): Promise<RtTensor>;
  /**
   * Routes whose experts are graph inputs: the slot feeds of one run of `chunk` (at most maxPerRun), for a
   * graph that applies them itself (a fused attention block, forward.ts). The feeds' tensors are views of
   * the experts' or fresh host tensors: nothing to release, but the experts must stay leased until the run.
   */
  slotFeeds?(T: number, chunk: readonly ExpertAssignment[], experts: readonly ResidentExpert[]): SlotFeeds;
}

/** One run's routed-expert inputs, by the routed-experts graph's names (moe-block.ts). */
export interface SlotFeeds {
  readonly feeds: Record<string, RtTensor>;
  readonly forms: ExpertForms;
  readonly slots: number;
}

const ROLES = ['gate', 'up', 'down'] as const;

/**
 * Host form -> compute form of one matrix (compute-options.ts decides the dtype); `into`, when given,
 * receives a float32 widening instead of a new array.
 */
export type ToCompute = (stored: StoredMatrix, into?: Float32Array) => ComputeMatrix;

let liveExperts = 0;

/** Resident experts made and not yet disposed, process-wide: tests check that evicted experts are really freed. */
export function liveResidentExperts(): number {
  return liveExperts;
}

/** An expert as a prepacked session of its own. */
export class SessionExpert implements ResidentExpert {
  private disposed = false;

  constructor(readonly session: GraphSession) {
    liveExperts++;
  }

  dispose(): void {
    if (this.disposed) throw new Error('resident expert disposed twice');
    this.disposed = true;
    liveExperts--;
    void this.session.release();
  }
}

/** An expert as device tensors, by role and part (e.g. 'gate', or 'gate.q' and 'gate.scales'). */
export class TensorExpert implements ResidentExpert {
  private disposed = false;

  constructor(
    readonly forms: ExpertForms,
    readonly tensors: ReadonlyMap<string, DeviceTensor>,
    /** Called once disposed: hands host buffers back for reuse. */
    private readonly onDispose: () => void = () => undefined,
  ) {
    liveExperts++;
  }

  dispose(): void {
    if (this.disposed) throw new Error('resident expert disposed twice');
    this.disposed = true;
    liveExperts--;
    for (const t of this.tensors.values()) t.dispose();
    this.onDispose();
  }
}

export class SessionExpertRoute implements ExpertRoute {
  readonly kind = 'session';
  readonly maxPerRun = Number.POSITIVE_INFINITY;

  constructor(
    private readonly runtime: Runtime,
    private readonly hiddenSize: number,
    private readonly toCompute: ToCompute,
    private readonly accuracyLevel: 0 | 4,
  ) {}

  async materialize(w: HostExpert, id: ExpertId): Promise<ResidentExpert> {
    const gateUp = concatRows([this.toCompute(w.gate), this.toCompute(w.up)]);
    const down = this.toCompute(w.down);
    const constants = new Map<string, ConstTensor>([...matrixTensors(EXPERT_FFN.gateUp, gateUp), ...matrixTensors(EXPERT_FFN.down, down)]);
    const forms = { gateUp: matrixForm(gateUp, this.accuracyLevel), down: matrixForm(down, this.accuracyLevel) };
    const bytes = buildExpertFfn(this.hiddenSize, forms, constants);
    // A miss's whole cost is this creation and the first run (Runtime's quick sessions: 1.09 -> 0.65 ms
    // without graph optimizations at 256 x 256 int4, the graph being minimal already).
    return new SessionExpert(await this.runtime.createSession(`expert_${id}`, bytes, [], { kind: 'expert', quick: true }));
  }

  async apply(acc: RtTensor, moeInput: RtTensor, T: number, chunk: readonly ExpertAssignment[], experts: readonly ResidentExpert[]): Promise<RtTensor> {
    const H = this.hiddenSize;
    const out = acc.data as Float32Array;
    const x = moeInput.data as Float32Array;
    for (const [s, a] of chunk.entries()) {
      const expert = experts[s];
      if (!(expert instanceof SessionExpert)) throw new Error('session route given an expert that is not a session');
      const n = a.rows.length;
      // (n, H) the rows routed to this expert: the whole input when every row is (decode of one sequence)
      let rows = x;
      if (n !== T) {
        rows = new Float32Array(n * H);
        a.rows.forEach((r, j) => rows.set(x.subarray(r * H, (r + 1) * H), j * H));
      }
      const res = await expert.session.run({ [EXPERT_FFN.x]: this.runtime.float32(rows, [n, H]) });
      const y = res[EXPERT_FFN.y]?.data as Float32Array;
      for (let j = 0; j < n; j++) {
        const w = a.weights[j] as number;
        const to = (a.rows[j] as number) * H;
        const from = j * H;
        for (let h = 0; h < H; h++) out[to + h]! += w * y[from + h]!;
      }
    }
    return acc;
  }
}

/** Float32Arrays of freed experts, by length, for reuse; at most `capacity` kept. */
class BufferPool {
  private readonly free = new Map<number, Float32Array[]>();
  private count = 0;

  constructor(private readonly capacity: number) {}

  take(length: number): Float32Array | undefined {
    const b = this.free.get(length)?.pop();
    if (b) this.count--;
    return b;
  }

  give(b: Float32Array): void {
    if (this.count >= this.capacity || b.byteOffset !== 0) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.count++;
  }
}

export class GraphExpertRoute implements ExpertRoute {
  readonly kind = 'graph';
  /**
   * On the CPU provider, evicted experts' float32 arrays are reused by the next misses: with a small
   * budget most steps load and evict, and fresh 100s-of-KB arrays each time cost as much in allocation
   * and garbage collection as the widening itself (profiled: 17% of a batched run in the collector).
   */
  private readonly spare = new BufferPool(64);

  constructor(
    private readonly runtime: Runtime,
    private readonly blocks: MoeBlockSessions,
    readonly maxPerRun: number,
    private readonly toCompute: ToCompute,
    private readonly accuracyLevel: 0 | 4,
    /** Pad each run's slot count to a power of two (paddedSlots): GPU providers, where runs are few and large. */
    private readonly padSlots: boolean,
  ) {}

  async materialize(w: HostExpert): Promise<ResidentExpert> {
    const tensors = new Map<string, DeviceTensor>();
    const owned: Float32Array[] = [];
    const forms: Partial<Record<(typeof ROLES)[number], ReturnType<typeof matrixForm>>> = {};
    const pieces: [string, ConstTensor][] = [];
    for (const role of ROLES) {
      const m = this.compute(w[role], owned);
      forms[role] = matrixForm(m, this.accuracyLevel);
      pieces.push(...matrixTensors(role, m));
    }
    // All of the expert's pieces in one upload run.
    const uploaded = await this.runtime.toDeviceAll(pieces.map(([, t]) => this.runtime.tensorOf(t)));
    pieces.forEach(([name], i) => tensors.set(name, uploaded[i] as DeviceTensor));
    // On GPU providers the widened arrays were only staging for the upload; on the CPU they are the tensors.
    if (this.runtime.onGpu) owned.forEach((b) => this.spare.give(b));
    const recycle = this.runtime.onGpu ? [] : owned;
    return new TensorExpert({ gate: forms.gate!, up: forms.up!, down: forms.down! }, tensors, () => recycle.forEach((b) => this.spare.give(b)));
  }

  /** The compute form of one matrix, widening bf16/f16 into a recycled array where it can (recorded in `owned`). */
  private compute(s: StoredMatrix, owned: Float32Array[]): ComputeMatrix {
    const widens = s.kind === 'float' && s.dtype !== 'F32';
    const spare = widens ? this.spare.take(s.rows * s.cols) : undefined;
    const m = this.toCompute(s, spare);
    if (widens && m.dtype === 'f32') owned.push(m.data);
    else if (spare) this.spare.give(spare);
    return m;
  }

  async apply(acc: RtTensor, moeInput: RtTensor, T: number, chunk: readonly ExpertAssignment[], experts: readonly ResidentExpert[]): Promise<RtTensor> {
    const { feeds, forms, slots } = this.slotFeeds(T, chunk, experts);
    const out = await (await this.blocks.forSlots(slots, forms)).run({ ...feeds, [MOE.residual]: acc, [MOE.moeInput]: moeInput });
    this.runtime.release(acc);
    const hidden = out[MOE.hidden];
    if (!hidden) throw new Error(`routed-experts block returned no '${MOE.hidden}'`);
    return hidden;
  }

  slotFeeds(T: number, chunk: readonly ExpertAssignment[], experts: readonly ResidentExpert[]): SlotFeeds {
    const feeds: Record<string, RtTensor> = {};
    let forms: ExpertForms | undefined;
    const feedSlot = (s: number, expert: ResidentExpert | undefined, rows: readonly number[], weights: readonly number[]) => {
      if (!(expert instanceof TensorExpert)) throw new Error('graph route given an expert that is not device tensors');
      forms ??= expert.forms;
      const n = rows.length;
      // (T, n): scatter[t, j] = weight of token t for its j-th routed row
      const scatter = new Float32Array(T * n);
      rows.forEach((row, j) => (scatter[row * n + j] = weights[j] as number));
      feeds[MOE.rows(s)] = this.runtime.int64(BigInt64Array.from(rows, BigInt), [n]);
      feeds[MOE.scatter(s)] = this.runtime.float32(scatter, [T, n]);
      const slotName = { gate: MOE.gate(s), up: MOE.up(s), down: MOE.down(s) };
      for (const [name, t] of expert.tensors) {
        const role = ROLES.find((r) => name === r || name.startsWith(`${r}.`));
        if (!role) throw new Error(`expert tensor '${name}' has no role`);
        feeds[slotName[role] + name.slice(role.length)] = t.tensor;
      }
    };
    chunk.forEach((a, s) => feedSlot(s, experts[s], a.rows, a.weights));
    if (!forms) throw new Error('no experts to apply');
    // Padding slots apply the first expert to one row with weight 0, which adds exactly 0.
    const slots = this.padSlots ? paddedSlots(chunk.length, this.maxPerRun) : chunk.length;
    for (let s = chunk.length; s < slots; s++) feedSlot(s, experts[0], [0], [0]);
    return { feeds, forms, slots };
  }
}

/**
 * The slot count a run of `n` experts takes when runs are padded: the next power of two, at most `max`.
 * Each slot count is a session of its own, and on GPU providers each is compiled on first use; a step
 * touches any number of experts from 1 to the batch's distinct experts, so exact counts would compile up
 * to `max` sessions, while a padding slot costs one row of an expert already resident.
 */
export function paddedSlots(n: number, max: number): number {
  let slots = 1;
  while (slots < n) slots *= 2;
  return Math.min(slots, Math.max(n, max));
}

export interface RouteChoice {
  readonly runtime: Runtime;
  readonly blocks: MoeBlockSessions;
  readonly hiddenSize: number;
  readonly expertDtype: ComputeDType;
  readonly toCompute: ToCompute;
  readonly accuracyLevel: 0 | 4;
  /** Most experts per run of the routed-experts graph. */
  readonly maxSlotsPerRun: number;
  /** Whether the budget holds every expert, so that each is loaded once and never missed again. */
  readonly everyExpertFits: boolean;
}

/**
 * The route, from what each costs on the CPU provider (tiny-moe, 256 x 256, `bench kernels`): a session
 * is the only fast form of a quantized expert, but a miss then costs a session creation (~0.7 ms, about 30
 * runs); a float32 expert runs ~2.5x faster as a session than through the graph with its weights as
 * inputs (47 vs ~128 us in a decode step), while its miss through the graph is only a widening. So
 * quantized experts always run as sessions, float ones as sessions when every expert fits (no misses
 * after the first use) and through the graph otherwise. GPU providers always use the graph.
 */
export function chooseExpertRoute(c: RouteChoice): ExpertRoute {
  const quantized = c.expertDtype === 'int8' || c.expertDtype === 'int4';
  if (!c.runtime.onGpu && (quantized || c.everyExpertFits)) return new SessionExpertRoute(c.runtime, c.hiddenSize, c.toCompute, c.accuracyLevel);
  return new GraphExpertRoute(c.runtime, c.blocks, c.maxSlotsPerRun, c.toCompute, c.accuracyLevel, c.runtime.onGpu);
}
