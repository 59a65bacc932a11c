import { randomInt } from 'node:crypto';
import { asToken, type Token } from '../tokenizer/token.js';

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 1 = off. */
  topP: number;
  /** 0 = off. */
  topK: number;
}

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
}

export class SamplingParamsError extends Error {
  constructor(
    readonly field: keyof SamplingParams,
    readonly value: number,
    expected: string,
  ) {
    super(`Sampling parameter ${field} must be ${expected}, got ${value}.`);
    this.name = new.target.name;
  }
}

/** The logits leave nothing to sample from: all -Infinity, or NaN/+Infinity among the candidates. */
export class NonFiniteLogitsError extends Error {
  constructor() {
    super('Cannot sample: the logits are all -Infinity or contain NaN/+Infinity. The forward pass produced them.');
    this.name = new.target.name;
  }
}

/**
 * xoshiro128** (Blackman and Vigna, 2018), seeded by SplitMix64 as its authors recommend. Chosen because it is a
 * published generator with reference C code to check against, passes BigCrush, and needs only 32-bit integer
 * operations, which JavaScript does exactly on every platform (unlike PCG32, whose 64-bit multiply needs BigInt
 * per draw). Mulberry32 is simpler but its 32-bit state repeats after 2^32 outputs.
 */
export function createRng(seed: number): Rng {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`An RNG seed must be a safe integer, got ${seed}.`);
  let [s0, s1, s2, s3] = seedXoshiro128(BigInt.asUintN(64, BigInt(seed)));
  const nextUint32 = (): number => {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  };
  // 53 random bits, the full precision of a double, so even tiny probabilities are drawn at their true rate.
  return { next: () => ((nextUint32() >>> 5) * 67108864 + (nextUint32() >>> 6)) / 9007199254740992 };
}

/** A seed for a request that did not ask for one. */
export function randomSeed(): number {
  return randomInt(0, 2 ** 32);
}

/**
 * One token from one row of logits: temperature, then top-k, softmax, top-p, then a draw. Pure apart from the
 * draw, which comes from `rng`, so a seed reproduces a completion.
 */
export function sampleToken(logits: Float32Array, params: SamplingParams, rng: Rng): Token {
  validate(params);
  if (logits.length === 0) throw new RangeError('Cannot sample from empty logits.');
  if (params.temperature === 0) return asToken(argmax(logits));

  const candidates = params.topK > 0 && params.topK < logits.length
    ? topKIndices(logits, params.topK)
    : allIndices(logits.length);
  if (params.topP < 1) {
    const nats = new Float64Array(candidates.length);
    const probs = softmax(logits, candidates, params.temperature, nats);
    const nucleus = nucleusOf(candidates, probs, nats, params.topP);
    return asToken(draw(nucleus.indices, nucleus.probs, rng));
  }
  return asToken(draw(candidates, softmax(logits, candidates, params.temperature), rng));
}

function allIndices(n: number): Int32Array {
  const indices = new Int32Array(n);
  for (let i = 0; i < n; i++) indices[i] = i;
  return indices;
}

function validate(params: SamplingParams): void {
  const { temperature, topP, topK } = params;
  if (!(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new SamplingParamsError('temperature', temperature, 'a finite number >= 0');
  }
  if (!(topP > 0 && topP <= 1)) throw new SamplingParamsError('topP', topP, 'in (0, 1]');
  if (!Number.isSafeInteger(topK) || topK < 0) throw new SamplingParamsError('topK', topK, 'an integer >= 0');
}

// Ties go to the lowest index, as torch.argmax does.
function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) {
    if (logits[i]! > logits[best]!) best = i;
  }
  return best;
}

// True when token a ranks above token b: higher logit, then lower index. Exactly k survive (ties at the boundary
// go to the lower index, unlike transformers' TopKLogitsWarper which keeps them all), so top-k 1 is greedy.
function ranksAbove(logits: Float32Array, a: number, b: number): boolean {
  const la = logits[a]!;
  const lb = logits[b]!;
  return la > lb || (la === lb && a < b);
}

/**
 * The k most likely tokens, best first, ties to the lower index as greedy breaks them, so greedy's token is
 * always first. O(vocab * log k): a heap selection, then a sort of only the k.
 */
export function topTokens(logits: Float32Array, k: number): Token[] {
  if (k <= 0) return [];
  const best = Array.from(topKIndices(logits, Math.min(k, logits.length)));
  return best.sort((a, b) => (ranksAbove(logits, a, b) ? -1 : 1)).map(asToken);
}

// The k best indices, in no particular order. A min-heap of the k best seen so far, with the worst at the root:
// O(vocab * log k) and no vocab-sized allocation, instead of sorting the whole vocabulary. Temperature does not
// change the order, so this works on raw logits.
function topKIndices(logits: Float32Array, k: number): Int32Array {
  const heap = new Int32Array(k);
  for (let i = 0; i < k; i++) {
    heap[i] = i;
    siftUp(heap, i, logits);
  }
  for (let i = k; i < logits.length; i++) {
    if (ranksAbove(logits, i, heap[0]!)) {
      heap[0] = i;
      siftDown(heap, k, logits);
    }
  }
  return heap;
}

function siftUp(heap: Int32Array, at: number, logits: Float32Array): void {
  let child = at;
  while (child > 0) {
    const parent = (child - 1) >> 1;
    if (!ranksAbove(logits, heap[parent]!, heap[child]!)) return;
    swap(heap, parent, child);
    child = parent;
  }
}

function siftDown(heap: Int32Array, size: number, logits: Float32Array): void {
  let parent = 0;
  for (;;) {
    const left = 2 * parent + 1;
    const right = left + 1;
    let worst = parent;
    if (left < size && ranksAbove(logits, heap[worst]!, heap[left]!)) worst = left;
    if (right < size && ranksAbove(logits, heap[worst]!, heap[right]!)) worst = right;
    if (worst === parent) return;
    swap(heap, parent, worst);
    parent = worst;
  }
}

function swap(a: Int32Array, i: number, j: number): void {
  const t = a[i]!;
  a[i] = a[j]!;
  a[j] = t;
}

// Probabilities of `candidates` (same order) in float64. The max is subtracted before dividing by the temperature
// (the same value as softmax(logits / T) with max subtraction) so that a tiny temperature gives -Infinity, not
// Infinity - Infinity = NaN. `nats` receives ln(p_max / p) of each candidate, which top-p buckets by.
function softmax(logits: Float32Array, candidates: Int32Array, temperature: number, nats?: Float64Array): Float64Array {
  let max = -Infinity;
  for (let c = 0; c < candidates.length; c++) {
    const logit = logits[candidates[c]!]!;
    if (logit > max) max = logit;
  }
  const probs = new Float64Array(candidates.length);
  let sum = 0;
  for (let c = 0; c < candidates.length; c++) {
    const exponent = (logits[candidates[c]!]! - max) / temperature;
    if (nats !== undefined) nats[c] = -exponent;
    probs[c] = Math.exp(exponent);
    sum += probs[c]!;
  }
  if (!Number.isFinite(sum) || sum === 0) throw new NonFiniteLogitsError();
  for (let c = 0; c < probs.length; c++) probs[c]! /= sum;
  return probs;
}

// Top-p groups tokens by ln(p_max / p) into buckets this wide; the last bucket takes everything from
// NUCLEUS_BUCKET_RANGE_NATS down, tokens under e^-64 of the top one, which matter only when almost all do.
const NUCLEUS_BUCKETS_PER_NAT = 8;
const NUCLEUS_BUCKET_RANGE_NATS = 64;
const NUCLEUS_BUCKET_COUNT = NUCLEUS_BUCKETS_PER_NAT * NUCLEUS_BUCKET_RANGE_NATS + 1;

/**
 * The smallest set of most probable tokens whose probability adds up to >= topP (at least one; ties go to the
 * lower index). A full sort of a flat 256k distribution costs tens of milliseconds; instead the tokens are bucketed
 * by probability, the bucket where the cumulative mass crosses topP is found from the bucket sums, every token in
 * a more probable bucket is kept unsorted, and only the crossing bucket is sorted.
 */
function nucleusOf(
  candidates: Int32Array,
  probs: Float64Array,
  nats: Float64Array,
  topP: number,
): { indices: Int32Array; probs: Float64Array } {
  const bucketOf = new Uint16Array(candidates.length);
  const bucketMass = new Float64Array(NUCLEUS_BUCKET_COUNT);
  for (let c = 0; c < candidates.length; c++) {
    const bucket = Math.min(Math.floor(nats[c]! * NUCLEUS_BUCKETS_PER_NAT), NUCLEUS_BUCKET_COUNT - 1);
    bucketOf[c] = bucket;
    bucketMass[bucket]! += probs[c]!;
  }
  let crossing = 0;
  let massBefore = 0;
  while (crossing < NUCLEUS_BUCKET_COUNT - 1 && massBefore + bucketMass[crossing]! < topP) {
    massBefore += bucketMass[crossing++]!;
  }

  const kept: number[] = [];
  const edge: number[] = [];
  for (let c = 0; c < candidates.length; c++) {
    if (bucketOf[c]! < crossing) kept.push(c);
    else if (bucketOf[c] === crossing) edge.push(c);
  }
  edge.sort((a, b) => probs[b]! - probs[a]! || candidates[a]! - candidates[b]!);
  let cumulative = kept.reduce((sum, c) => sum + probs[c]!, 0);
  for (const c of edge) {
    if (kept.length > 0 && cumulative >= topP) break;
    kept.push(c);
    cumulative += probs[c]!;
  }

  const nucleus = { indices: new Int32Array(kept.length), probs: new Float64Array(kept.length) };
  kept.forEach((c, n) => {
    nucleus.indices[n] = candidates[c]!;
    nucleus.probs[n] = probs[c]! / cumulative;
  });
  return nucleus;
}

// Inverse-CDF draw. `probs` need not sum to exactly 1: the target is scaled by their actual sum.
function draw(indices: Int32Array, probs: Float64Array, rng: Rng): number {
  let total = 0;
  for (let n = 0; n < probs.length; n++) total += probs[n]!;
  const target = rng.next() * total;
  let cumulative = 0;
  for (let n = 0; n < probs.length; n++) {
    cumulative += probs[n]!;
    if (target < cumulative) return indices[n]!;
  }
  // Rounding left the target at the very top: the last token with any probability owns it.
  for (let n = probs.length - 1; n > 0; n--) {
    if (probs[n]! > 0) return indices[n]!;
  }
  return indices[0]!;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// SplitMix64 expands one 64-bit seed into xoshiro's 128-bit state; it never yields the all-zero state.
function seedXoshiro128(seed: bigint): [number, number, number, number] {
  const state: [number, number, number, number] = [0, 0, 0, 0];
  let x = seed;
  for (let word = 0; word < 4; word += 2) {
    x = BigInt.asUintN(64, x + 0x9e3779b97f4a7c15n);
    let z = x;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    z ^= z >> 31n;
    state[word] = Number(z & 0xffffffffn) | 0;
    state[word + 1] = Number(z >> 32n) | 0;
  }
  return state;
}
