// Deterministic normal-ish random numbers for synthetic checkpoints, fast enough to write tens of GB.
//
// Every tensor gets its own generator, seeded by (seed, tensor name), so a tensor's values depend on
// nothing else: a 2-layer cut of a model equals the first two layers of the full one, byte for byte.
// Speed is the point (a Mixtral-size checkpoint is ~90 GB): instead of a Box-Muller transform per value,
// a 65,536-entry table holds the bf16 bit patterns of N(0, std) quantiles, and one 32-bit random number
// picks two entries. The values are a 16-bit quantization of a normal distribution, which is all a
// synthetic weight needs; the table is built once per std.

/** 32-bit FNV-1a of a string's UTF-16 code units: the tensor name's part of its seed. */
export function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** splitmix32 step: spreads a seed over the four words of xoshiro's state. */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** (Blackman and Vigna): 32-bit outputs, period 2^128 - 1, a few ns per number in V8. */
export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, name: string) {
    const mix = { s: (seed ^ Math.imul(hashName(name), 0x9e3779b1)) | 0 };
    this.a = splitmix32(mix);
    this.b = splitmix32(mix);
    this.c = splitmix32(mix);
    this.d = splitmix32(mix);
    // An all-zero state would stay zero forever.
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }

  /** A uniform 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9);
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result >>> 0;
  }

  /** An integer in [0, n), n well below 2^32 (the bias of the modulo is below 1e-5 for our n). */
  nextInt(n: number): number {
    return this.nextU32() % n;
  }

  /** A standard normal from the quantile table (16-bit resolution). */
  nextNormal(): number {
    return (NORMAL_QUANTILES[this.nextU32() >>> 16] as number);
  }

  /**
   * Fills `out` with N(0, std) values as bf16 bit patterns: the hot loop of the generator. Two values per
   * random number, written as one 32-bit word (little-endian: the low half is the first element).
   */
  fillBf16(out: Uint16Array, std: number): void {
    const table = bf16PairTable(std);
    const words = new Uint32Array(out.buffer, out.byteOffset, out.length >>> 1);
    let { a, b, c, d } = this;
    for (let i = 0; i < words.length; i++) {
      const x = Math.imul(b, 5);
      const r = Math.imul((x << 7) | (x >>> 25), 9);
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
      words[i] = (table[r & 0xffff] as number) | ((table[r >>> 16] as number) << 16);
    }
    this.a = a;
    this.b = b;
    this.c = c;
    this.d = d;
    if (out.length & 1) out[out.length - 1] = table[this.nextU32() & 0xffff] as number;
  }

  /** Fills `out` with N(0, 1) values (the table's quantiles). */
  fillNormal(out: Float32Array): void {
    for (let i = 0; i < out.length; i += 2) {
      const r = this.nextU32();
      out[i] = NORMAL_QUANTILES[r & 0xffff] as number;
      if (i + 1 < out.length) out[i + 1] = NORMAL_QUANTILES[r >>> 16] as number;
    }
  }

  /** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): Int32Array {
    const p = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      const x = p[i] as number;
      p[i] = p[j] as number;
      p[j] = x;
    }
    return p;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * Acklam's rational approximation of the inverse normal CDF (relative error below 1.2e-9), ample for
 * a table whose entries are rounded to bf16.
 */
export function inverseNormalCdf(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const [a0, a1, a2, a3, a4, a5] = a as [number, number, number, number, number, number];
  const [b0, b1, b2, b3, b4] = b as [number, number, number, number, number];
  const [c0, c1, c2, c3, c4, c5] = c as [number, number, number, number, number, number];
  const [d0, d1, d2, d3] = d as [number, number, number, number];
  const tail = (q: number) => (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / ((((d0 * q + d1) * q + d2) * q + d3) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return ((((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q) / (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1);
}

/** N(0, 1) at the midpoints of 65,536 equal-probability bins. */
const NORMAL_QUANTILES: Float32Array = Float32Array.from({ length: 65536 }, (_, i) => inverseNormalCdf((i + 0.5) / 65536));

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** A float's bf16 bit pattern, rounded to nearest even (as torch's .to(bfloat16)); NaN stays NaN. */
function toBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0] as number;
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

const pairTables = new Map<number, Uint32Array>();

/** The bf16 patterns of std * quantile, one table per std (kept: a model uses a handful of stds). */
function bf16PairTable(std: number): Uint32Array {
  let table = pairTables.get(std);
  if (!table) {
    table = Uint32Array.from(NORMAL_QUANTILES, (q) => toBf16Bits(q * std));
    pairTables.set(std, table);
  }
  return table;
}
