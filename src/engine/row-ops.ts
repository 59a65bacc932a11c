// Joins the (T, H) hidden states of a batch of sequences, and adds host rows to them. On the CPU the rows
// are in JS memory and are copied directly; on GPU providers small sessions do it, so the data stays on
// the device. Cutting one sequence's rows back out is a view on the CPU; on GPU providers the attention
// block reads its row range itself (forward.ts), so no session cuts rows.
import { buildAddRows, buildConcatRowGroups, ROWS } from '../graphs/row-ops.js';
import type { GraphSession, RtTensor, Runtime } from '../runtime/onnx-runtime.js';

export class RowOps {
  private readonly concatSessions = new Map<string, Promise<GraphSession>>();
  private addSession: Promise<GraphSession> | null = null;

  constructor(
    private readonly runtime: Runtime,
    private readonly hiddenSize: number,
  ) {}

  /** The parts' rows, in order, as one (sum of rows, H) tensor. Does not release the parts. */
  async concat(parts: readonly RtTensor[]): Promise<RtTensor> {
    return (await this.concatGroups([parts]))[0] as RtTensor;
  }

  /**
   * Several joins in one run (on GPU providers each run costs far more than the copy): the rows of each
   * group's parts, in order; every group has the same number of parts. Does not release the parts.
   */
  async concatGroups(groups: readonly (readonly RtTensor[])[]): Promise<RtTensor[]> {
    if (!this.runtime.onGpu) return groups.map((parts) => this.concatHost(parts));
    const parts = groups[0]?.length ?? 0;
    if (groups.some((g) => g.length !== parts)) throw new RangeError('concatGroups: groups of different sizes');
    const key = `${groups.length}x${parts}`;
    let session = this.concatSessions.get(key);
    if (!session) {
      session = this.runtime.createSession(`concat_rows_${key}`, buildConcatRowGroups(groups.length, parts, this.hiddenSize), groups.map((_, k) => ROWS.groupJoined(k)), { kind: 'concat_rows' });
      this.concatSessions.set(key, session);
    }
    const feeds = Object.fromEntries(groups.flatMap((g, k) => g.map((p, i) => [ROWS.groupPart(k, i), p] as const)));
    const out = await (await session).run(feeds);
    return groups.map((_, k) => required(out[ROWS.groupJoined(k)]));
  }

  private concatHost(parts: readonly RtTensor[]): RtTensor {
    const rows = parts.reduce((n, p) => n + (p.dims[0] ?? 0), 0);
    const out = new Float32Array(rows * this.hiddenSize);
    let at = 0;
    for (const p of parts) {
      out.set(p.data as Float32Array, at);
      at += p.size;
    }
    return this.runtime.float32(out, [rows, this.hiddenSize]);
  }

  /** Rows [start, start + count) of a host tensor `t`, as a view. GPU tensors are read by range instead. */
  slice(t: RtTensor, start: number, count: number): RtTensor {
    if (t.location === 'gpu-buffer') throw new Error('RowOps.slice: GPU rows are read by range (the attention block\'s hidden_start/hidden_end), not cut out');
    const H = this.hiddenSize;
    return this.runtime.float32((t.data as Float32Array).subarray(start * H, (start + count) * H), [count, H]);
  }

  /**
   * t + addend, where `addend` is (T, H) host data (experts computed on the CPU). Takes ownership of `t`:
   * on the CPU the sum is made in its data, on GPU providers in a new tensor and `t` is released.
   */
  async addHost(t: RtTensor, addend: Float32Array): Promise<RtTensor> {
    if (!this.runtime.onGpu) {
      const data = t.data as Float32Array;
      for (let i = 0; i < data.length; i++) data[i]! += addend[i]!;
      return t;
    }
    this.addSession ??= this.runtime.createSession('add_rows', buildAddRows(this.hiddenSize), [ROWS.sum]);
    try {
      const out = await (await this.addSession).run({ [ROWS.source]: t, [ROWS.addend]: this.runtime.float32(addend, t.dims) });
      return required(out[ROWS.sum]);
    } finally {
      this.runtime.release(t);
    }
  }

  async release(): Promise<void> {
    const sessions = [...this.concatSessions.values(), ...(this.addSession ? [this.addSession] : [])];
    await Promise.all(sessions.map(async (s) => (await s).release()));
  }
}

function required(t: RtTensor | undefined): RtTensor {
  if (!t) throw new Error('row operation returned no tensor');
  return t;
}
