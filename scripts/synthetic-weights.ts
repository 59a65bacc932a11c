// The weights of a synthetic MoE checkpoint: random, but shaped so that routing has the statistics of
// a trained model. Uniform random routers would make every token pick experts independently and
// uniformly, and then every expert-cache policy and prefetcher scores the same: a benchmark on such a
// model measures nothing. Three properties of trained routers matter to the expert cache, and each has
// one cause in the construction below (constants in SHAPING, calibrated with `npm run routing-stats`):
//
// (a) Skewed popularity per layer. Every embedding carries a shared unit direction u (x = z_token +
//     mu * sqrt(H) * u), a persistent component of the residual stream; router row e has a bias along u
//     whose size follows a normal-quantile profile over experts (log-normal popularity, the same shape
//     for 8 or 128 experts), so some experts win far more often. The profile's strength varies a little
//     per layer, as trained models' skew does.
// (b) Temporal reuse. q and k are tiny, so attention is near uniform over the context: its output is a
//     moving average of the context, a slowly varying "topic" that consecutive tokens share, and v/o
//     are scaled so that it is a sizeable part of what the router sees. Its gain decays with depth
//     (A_l = A0 * max(decay^l, floor)) so that the topic settles after the first layers instead of being rewritten
//     by every layer's own random v/o, which would also break (c). v's rows are orthogonal to u so that
//     attention does not rotate the persistent direction (the routers' popularity axis) away.
// (c) Cross-layer correlation. Router l is a noisy permutation of router l-1:
//     g_l[P_l(e)] = rho * g_{l-1}[e] + sqrt(1 - rho^2) * fresh, with P_l a random permutation, and the
//     popularity ranks follow the same permutation. Because the residual stream changes little from one
//     layer to the next, expert e at layer l-1 predicts expert P_l(e) at layer l, and the next layer's
//     router applied to this layer's hidden state (the prefetcher's lookahead) predicts well, without
//     the trivial "same expert index at every layer".
// Expert outputs are kept small (down projection gain < 1) and every norm weight is 1, so that the
// residual stream neither explodes nor is rewritten over 48 layers. lm_head's rows are orthogonal to u,
// or the persistent direction would make one token win every argmax.
//
// Everything is scale-free: matrices have std gain / sqrt(fan_in), and the router sees a unit-direction
// hidden state (rmsnorm), so the same constants give the same statistics for hidden 256 or 4096 and for
// 8 or 128 experts. Each tensor is drawn from its own generator seeded by (seed, name) (the router
// chain recomputes its earlier layers), so layer l never depends on how many layers are written.
import type { PlannedTensor } from '../src/model/safetensors-writer.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, expertTensorNames, layerTensorNames } from '../src/model/tensor-names.js';
import type { ModelPreset } from './model-presets.js';
import { inverseNormalCdf, Xoshiro128 } from './seeded-normals.js';

/** The shaping constants; see the header for what each causes. */
export const SHAPING = {
  /** mu: rms of the persistent direction in an embedding, relative to the token part's rms of 1. */
  persistent: 1.0,
  /** A0: gain of layer 0's attention output over the context average. */
  attentionGain: 4,
  /** Per-layer factor on the attention gain... */
  attentionDecay: 0.6,
  /** ...down to this share of A0, so that deep layers still change the residual a little (lookahead is not perfect). */
  attentionFloor: 0.25,
  /** q and k std, times 1/sqrt(H): small, so attention is near uniform. */
  qkGain: 0.1,
  /** Down projection gain: an expert's output rms relative to the embedding's token part, roughly. */
  expertGain: 0.8,
  /** Std of the token-dependent part of a router logit. */
  routerNoise: 1.0,
  /** Std (over experts) of the popularity bias along u. */
  popularity: 1.0,
  /** Per-layer log-normal spread of the popularity strength. */
  popularitySpread: 0.25,
  /** rho: correlation of router l's rows with router l-1's, permuted. */
  routerCarry: 0.7,
} as const;

const BF16_ONE = 0x3f80;

/** Converts floats to bf16 bit patterns, round to nearest even (as torch does). */
function floatsToBf16(x: Float32Array): Uint16Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const b = bits[i] as number;
    out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

const asBytes = (a: Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Removes each row's component along unit vector u, in place. */
function projectRowsOut(m: Float32Array, cols: number, u: Float32Array): void {
  for (let r = 0; r < m.length / cols; r++) {
    const row = m.subarray(r * cols, (r + 1) * cols);
    let dot = 0;
    for (let i = 0; i < cols; i++) dot += (row[i] as number) * (u[i] as number);
    for (let i = 0; i < cols; i++) row[i] = (row[i] as number) - dot * (u[i] as number);
  }
}

function normals(seed: number, name: string, n: number, std = 1): Float32Array {
  const out = new Float32Array(n);
  new Xoshiro128(seed, name).fillNormal(out);
  if (std !== 1) for (let i = 0; i < n; i++) out[i] = (out[i] as number) * std;
  return out;
}

/** The persistent direction u: a random unit vector. */
function persistentDirection(seed: number, hidden: number): Float32Array {
  const u = normals(seed, '#persistent-direction', hidden);
  const norm = Math.hypot(...u);
  return u.map((v) => v / norm);
}

/**
 * Routers layer by layer: g_l (E, H) and each expert's popularity rank, advanced in order and restarted
 * from layer 0 when an earlier layer is asked for, so that any layer's router is reproducible alone.
 */
class RouterChain {
  private layer = -1;
  private g: Float32Array = new Float32Array(0);
  private rank: Int32Array = new Int32Array(0);
  /** Popularity bias by rank, most popular first: normal quantiles, so the shape does not depend on E. */
  private readonly profile: Float64Array;

  constructor(
    private readonly seed: number,
    private readonly p: ModelPreset,
    private readonly u: Float32Array,
  ) {
    const E = p.numExperts;
    this.profile = Float64Array.from({ length: E }, (_, r) => inverseNormalCdf(1 - (r + 0.5) / E));
  }

  /** Router l's weight (E, H) as float. */
  rows(layer: number): Float32Array {
    if (layer < this.layer) this.layer = -1;
    while (this.layer < layer) this.advance();
    const { hiddenSize: H, numExperts: E } = this.p;
    const name = layerTensorNames('mixtral', layer).router;
    const strength = SHAPING.popularity * Math.exp(SHAPING.popularitySpread * new Xoshiro128(this.seed, `${name}#skew`).nextNormal());
    const g = this.g.slice();
    projectRowsOut(g, H, this.u);
    const scale = 1 / Math.sqrt(H);
    for (let e = 0; e < E; e++) {
      const bias = strength * (this.profile[this.rank[e] as number] as number);
      for (let i = 0; i < H; i++) g[e * H + i] = scale * (SHAPING.routerNoise * (g[e * H + i] as number) + bias * (this.u[i] as number));
    }
    return g;
  }

  private advance(): void {
    const { hiddenSize: H, numExperts: E } = this.p;
    const l = ++this.layer;
    const name = layerTensorNames('mixtral', l).router;
    const fresh = normals(this.seed, name, E * H);
    if (l === 0) {
      this.g = fresh;
      this.rank = new Xoshiro128(this.seed, `${name}#popularity`).permutation(E);
      return;
    }
    const perm = new Xoshiro128(this.seed, `${name}#carry`).permutation(E);
    const rho = SHAPING.routerCarry;
    const keep = Math.sqrt(1 - rho * rho);
    const g = new Float32Array(E * H);
    const rank = new Int32Array(E);
    for (let e = 0; e < E; e++) {
      const to = perm[e] as number;
      for (let i = 0; i < H; i++) g[to * H + i] = rho * (this.g[e * H + i] as number) + keep * (fresh[to * H + i] as number);
      rank[to] = this.rank[e] as number;
    }
    this.g = g;
    this.rank = rank;
  }
}

/** The tensors of a synthetic checkpoint in file order: layer by layer, each expert's w1, w3, w2 adjacent. */
export function syntheticTensors(p: ModelPreset, seed: number, vocabSize: number): PlannedTensor[] {
  const { hiddenSize: H, expertIntermediateSize: I, numHeads, numKvHeads, headDim: D } = p;
  let u: Float32Array | null = null;
  const dir = () => (u ??= persistentDirection(seed, H));
  let chain: RouterChain | null = null;
  const bf16 = (name: string, shape: readonly number[], make: () => Uint16Array): PlannedTensor => ({
    name,
    dtype: 'BF16',
    shape,
    byteLength: shape.reduce((n, d) => n * d, 2),
    bytes: async () => asBytes(make()),
  });
  const random = (name: string, shape: readonly number[], std: number) =>
    bf16(name, shape, () => {
      const out = new Uint16Array(shape.reduce((n, d) => n * d, 1));
      new Xoshiro128(seed, name).fillBf16(out, std);
      return out;
    });
  /** Random rows with no component along u. */
  const orthogonal = (name: string, shape: readonly [number, number], std: number) =>
    bf16(name, shape, () => {
      const m = normals(seed, name, shape[0] * shape[1], std);
      projectRowsOut(m, shape[1], dir());
      return floatsToBf16(m);
    });
  const ones = (name: string) => bf16(name, [H], () => new Uint16Array(H).fill(BF16_ONE));

  const tensors: PlannedTensor[] = [
    bf16(EMBED_TOKENS, [vocabSize, H], () => {
      const m = normals(seed, EMBED_TOKENS, vocabSize * H);
      const along = SHAPING.persistent * Math.sqrt(H);
      const v = dir();
      for (let i = 0; i < m.length; i++) m[i] = (m[i] as number) + along * (v[i % H] as number);
      return floatsToBf16(m);
    }),
  ];
  const fanIn = 1 / Math.sqrt(H);
  for (let l = 0; l < p.numLayers; l++) {
    const n = layerTensorNames('mixtral', l);
    const attentionGain = SHAPING.attentionGain * Math.max(SHAPING.attentionDecay ** l, SHAPING.attentionFloor);
    tensors.push(
      ones(n.inputNorm),
      random(n.q, [numHeads * D, H], SHAPING.qkGain * fanIn),
      random(n.k, [numKvHeads * D, H], SHAPING.qkGain * fanIn),
      orthogonal(n.v, [numKvHeads * D, H], fanIn),
      random(n.o, [H, numHeads * D], attentionGain / Math.sqrt(numHeads * D)),
      ones(n.postAttentionNorm),
      bf16(n.router, [p.numExperts, H], () => floatsToBf16((chain ??= new RouterChain(seed, p, dir())).rows(l))),
    );
    for (let e = 0; e < p.numExperts; e++) {
      const x = expertTensorNames('mixtral', l, e);
      // gate, up, down: the order the host expert cache reads them, one contiguous byte range per expert.
      tensors.push(random(x.gate, [I, H], fanIn), random(x.up, [I, H], fanIn), random(x.down, [H, I], SHAPING.expertGain / Math.sqrt(I)));
    }
  }
  tensors.push(ones(FINAL_NORM), orthogonal(LM_HEAD, [vocabSize, H], fanIn));
  return tensors;
}

/** Bytes of the tensors of a preset (the writer adds a header of a few KB per shard). */
export function plannedBytes(tensors: readonly PlannedTensor[]): number {
  return tensors.reduce((n, t) => n + t.byteLength, 0);
}

