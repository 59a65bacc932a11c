// Joins and splits the (T, H) hidden states of a batch of sequences. On the CPU the rows are in JS memory
// and are copied directly; on GPU providers small sessions do it, so the data stays on the device.
import { buildConcatRows, buildSliceRows, ROWS } from '../graphs/row-ops.js';
import type { GraphSession, RtTensor, Runtime } from '../runtime/onnx-runtime.js';

export class RowOps {
  private readonly concatSessions = new Map<number, Promise<GraphSession>>();
  private sliceSession: Promise<GraphSession> | null = null;

  constructor(
    private readonly runtime: Runtime,
    private readonly hiddenSize: number,
  ) {}

  /** The parts' rows, in order, as one (sum of rows, H) tensor. Does not release the parts. */
  async concat(parts: readonly RtTensor[]): Promise<RtTensor> {
    const H = this.hiddenSize;
    const rows = parts.reduce((n, p) => n + (p.dims[0] ?? 0), 0);
    if (!this.runtime.onGpu) {
      const out = new Float32Array(rows * H);
      let at = 0;
      for (const p of parts) {
        out.set(p.data as Float32Array, at);
        at += p.size;
      }
      return this.runtime.float32(out, [rows, H]);
    }
    let session = this.concatSessions.get(parts.length);
    if (!session) {
      session = this.runtime.createSession(`concat_rows_${parts.length}`, buildConcatRows(parts.length, H), [ROWS.joined]);
      this.concatSessions.set(parts.length, session);
    }
    const feeds = Object.fromEntries(parts.map((p, i) => [ROWS.part(i), p]));
    return required((await (await session).run(feeds))[ROWS.joined]);
  }

  /** Rows [start, start + count) of `t` as their own tensor. Does not release `t`. */
  async slice(t: RtTensor, start: number, count: number): Promise<RtTensor> {
    const H = this.hiddenSize;
    if (!this.runtime.onGpu) {
      return this.runtime.float32((t.data as Float32Array).subarray(start * H, (start + count) * H), [count, H]);
    }
    this.sliceSession ??= this.runtime.createSession('slice_rows', buildSliceRows(H), [ROWS.slice]);
    const out = await (await this.sliceSession).run({
      [ROWS.source]: t,
      [ROWS.start]: this.runtime.int64(BigInt64Array.of(BigInt(start)), [1]),
      [ROWS.end]: this.runtime.int64(BigInt64Array.of(BigInt(start + count)), [1]),
    });
    return required(out[ROWS.slice]);
  }

  async release(): Promise<void> {
    const sessions = [...this.concatSessions.values(), ...(this.sliceSession ? [this.sliceSession] : [])];
    await Promise.all(sessions.map(async (s) => (await s).release()));
  }
}

function required(t: RtTensor | undefined): RtTensor {
  if (!t) throw new Error('row operation returned no tensor');
  return t;
}
