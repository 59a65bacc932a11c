// Rotary embedding tables, computed the way transformers does in fp32 so positions far into a
// sequence round the same way:
//   inv_freq = 1 / theta^(arange(0, D, 2) / D);  angle = inv_freq * position;  cos(angle), sin(angle)
// GroupQueryAttention rotates q and k itself from these tables (do_rotary), indexed by position.
const f = Math.fround;

export class RopeTable {
  private readonly invFreq: Float32Array;

  constructor(theta: number, readonly headDim: number) {
    const half = headDim / 2;
    this.invFreq = new Float32Array(half);
    for (let i = 0; i < half; i++) this.invFreq[i] = f(1 / f(Math.pow(theta, f((2 * i) / headDim))));
  }

  /** cos and sin for positions [start, start + count), each (count, headDim / 2). */
  slice(start: number, count: number): { cos: Float32Array; sin: Float32Array } {
    const half = this.headDim / 2;
    const cos = new Float32Array(count * half);
    const sin = new Float32Array(count * half);
    for (let p = 0; p < count; p++) {
      for (let i = 0; i < half; i++) {
        const angle = f((this.invFreq[i] as number) * (start + p));
        cos[p * half + i] = Math.cos(angle);
        sin[p * half + i] = Math.sin(angle);
      }
    }
    return { cos, sin };
  }
}
