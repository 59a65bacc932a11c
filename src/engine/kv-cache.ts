// Per-sequence key/value cache for GroupQueryAttention, one (1, kvHeads, length, headDim) pair per layer.
//
// Two strategies, because the providers differ (PLATFORM.md):
// - cpu: a host buffer of some capacity, fed as `past_key` (inputs are not copied); the attention block
//   returns only the rows it appended ('new_rows', attention-block.ts), which are written in here.
//   Fetching the updated cache instead would cost a copy of the whole buffer into a new array on every
//   run (onnxruntime-node copies every fetched output, a preallocated one too). onnxruntime still copies
//   the past into its own present buffer inside the kernel, O(capacity), so capacity grows in steps of
//   CAPACITY_STEP rows rather than by doubling, and regrowing (a copy of the rows) happens once per step.
// - gpu: a preallocated gpu output in fetches is ignored, so each run returns a new present tensor of
//   (past + new) rows; it becomes the next past and the old one is disposed.
import type { RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import { ATTN } from '../graphs/attention-block.js';

export interface KvShape {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Longest sequence the model supports (max_position_embeddings). */
  readonly maxPositions: number;
}

/** The prompt plus generated tokens would not fit in the model's context window. */
export class ContextLengthError extends Error {
  readonly code = 'context_length_exceeded';

  constructor(
    readonly requested: number,
    readonly maxPositions: number,
  ) {
    super(`sequence of ${requested} tokens exceeds the model's context of ${maxPositions} tokens`);
    this.name = 'ContextLengthError';
  }
}

interface LayerKv {
  /** past_key and past_value feeds, plus the seqlens inputs that describe them. */
  feeds(): Record<string, RtTensor>;
  /** Takes the run's present tensors, or (host caches) batch item `b`'s appended rows. */
  accept(outputs: Record<string, RtTensor>, b: number): void;
  /** The step's rows become the cache's, or are dropped. */
  commit(): void;
  rollback(): void;
  dispose(): void;
}

const CAPACITY_STEP = 64;

/** The cache rows a sequence of `tokens` tokens holds at most (capacity grows in whole steps). */
export function kvRowsFor(tokens: number, maxPositions: number): number {
  return Math.min(Math.ceil(tokens / CAPACITY_STEP) * CAPACITY_STEP, maxPositions);
}

/** Bytes of one cache row over every layer: keys and values, fp32. */
export function kvBytesPerRow(shape: Omit<KvShape, 'maxPositions'>): number {
  return 2 * shape.numLayers * shape.numKvHeads * shape.headDim * Float32Array.BYTES_PER_ELEMENT;
}

/**
 * The append_rows feed of a 'new_rows' attention block: (B, kvHeads, T, headDim) holding, for sequence b,
 * cache row firstRows[b] + t at every (head, t, d), the index GatherElements takes the appended rows by.
 */
export function appendRowsFeed(runtime: Runtime, shape: KvShape, firstRows: readonly number[], T: number): RtTensor {
  const { numKvHeads: nKv, headDim: D } = shape;
  const rows = new BigInt64Array(firstRows.length * nKv * T * D);
  firstRows.forEach((first, b) => {
    for (let t = 0; t < T; t++) {
      const row = BigInt(first + t);
      for (let h = 0; h < nKv; h++) rows.fill(row, ((b * nKv + h) * T + t) * D, ((b * nKv + h) * T + t + 1) * D);
    }
  });
  return runtime.int64(rows, [firstRows.length, nKv, T, D]);
}

export class SequenceKvCache implements Disposable {
  private static live = 0;
  private tokens = 0;
  private disposed = false;
  private pending = 0;
  private readonly layers: LayerKv[];
  /** The step's append_rows feed (host caches), the same for every layer; made on first use. */
  private appendRows: RtTensor | null = null;

  constructor(
    private readonly runtime: Runtime,
    readonly shape: KvShape,
  ) {
    this.layers = Array.from({ length: shape.numLayers }, () =>
      runtime.onGpu ? new RollingLayerKv(runtime, shape) : new InPlaceLayerKv(runtime, shape),
    );
    SequenceKvCache.live++;
  }

  /** KV caches not yet disposed, process-wide: tests check that finished and cancelled sequences free theirs. */
  static get liveCount(): number {
    return SequenceKvCache.live;
  }

  /** Tokens already in the cache (the position of the next token). */
  get length(): number {
    return this.tokens;
  }

  /** Prepares every layer for `count` new tokens; call once per forward step, before the layers run. */
  begin(count: number): void {
    const total = this.tokens + count;
    if (total > this.shape.maxPositions) throw new ContextLengthError(total, this.shape.maxPositions);
    this.pending = count;
    this.appendRows = null;
    for (const l of this.layers) if (l instanceof InPlaceLayerKv) l.reserve(total);
  }

  /** GroupQueryAttention's view of the step: seqlens_k = total - 1 and total_sequence_length. */
  layerFeeds(layer: number): Record<string, RtTensor> {
    const total = this.tokens + this.pending;
    const l = this.layer(layer);
    const feeds: Record<string, RtTensor> = {
      ...l.feeds(),
      [ATTN.seqlensK]: this.runtime.int32(Int32Array.of(total - 1), [1]),
      [ATTN.totalSeqLen]: this.runtime.int32(Int32Array.of(total), []),
    };
    if (l instanceof InPlaceLayerKv) feeds[ATTN.appendRows] = this.appendRows ??= appendRowsFeed(this.runtime, this.shape, [this.tokens], this.pending);
    return feeds;
  }

  /**
   * The CPU cache rows of a layer, (kvHeads, capacity, headDim) each for keys and values, for packing
   * several sequences into one batched attention run; null on GPU providers.
   */
  hostRows(layer: number): { key: Float32Array; value: Float32Array; capacity: number } | null {
    const l = this.layer(layer);
    return l instanceof InPlaceLayerKv ? l.rows() : null;
  }

  /** True where rows can be copied out and in (host caches): prefix caching and forks need it. */
  get copiesRows(): boolean {
    return !this.runtime.onGpu;
  }

  /** Floats exportRows() returns for `count` rows. */
  rowFloats(count: number): number {
    return 2 * this.shape.numLayers * this.shape.numKvHeads * count * this.shape.headDim;
  }

  /**
   * Cached rows [start, start + count) of every layer, copied: per layer its keys (kvHeads, count, headDim)
   * then its values. Host caches only.
   */
  exportRows(start: number, count: number): Float32Array {
    if (start < 0 || count < 0 || start + count > this.tokens) throw new RangeError(`rows [${start}, ${start + count}) of a cache holding ${this.tokens}`);
    const out = new Float32Array(this.rowFloats(count));
    this.eachLayerOf(out, (layer, keys, values) => layer.copyOut(start, count, keys, values));
    return out;
  }

  /**
   * Grows every layer's buffer to hold `total` rows at once (host caches), so that rows imported block by
   * block do not regrow, and copy, the buffer every few blocks.
   */
  reserveRows(total: number): void {
    if (total > this.shape.maxPositions) throw new ContextLengthError(total, this.shape.maxPositions);
    for (const l of this.layers) hostLayer(l).reserve(Math.max(total, this.tokens));
  }

  /** Appends `count` rows laid out as exportRows() gives them after the cached ones, as if computed here. */
  importRows(rows: Float32Array, count: number): void {
    if (rows.length !== this.rowFloats(count)) throw new RangeError(`${rows.length} floats are not ${count} rows`);
    this.reserveRows(this.tokens + count);
    this.eachLayerOf(rows, (layer, keys, values) => layer.copyIn(this.tokens, count, keys, values));
    this.tokens += count;
  }

  /** Each host layer with its keys and values in `rows`, laid out as exportRows() lays them out. */
  private eachLayerOf(rows: Float32Array, f: (layer: InPlaceLayerKv, keys: Float32Array, values: Float32Array) => void): void {
    const per = rows.length / this.shape.numLayers / 2;
    this.layers.forEach((l, i) => f(hostLayer(l), rows.subarray(2 * i * per, (2 * i + 1) * per), rows.subarray((2 * i + 1) * per, (2 * i + 2) * per)));
  }

  /** Takes a layer's run outputs; `b`: this sequence's item in a batched run (host caches only). */
  accept(layer: number, outputs: Record<string, RtTensor>, b = 0): void {
    this.layer(layer).accept(outputs, b);
  }

  /** Marks the step's tokens as cached; call after every layer has run. */
  commit(): void {
    this.tokens += this.pending;
    this.pending = 0;
    for (const l of this.layers) l.commit();
  }

  /** Forgets a step that failed: the cache is as before begin(). */
  rollback(): void {
    this.pending = 0;
    for (const l of this.layers) l.rollback();
  }

  private layer(i: number): LayerKv {
    const l = this.layers[i];
    if (!l) throw new RangeError(`no layer ${i}`);
    return l;
  }

  [Symbol.dispose](): void {
    if (this.disposed) return;
    this.disposed = true;
    SequenceKvCache.live--;
    for (const l of this.layers) l.dispose();
  }
}

function hostLayer(l: LayerKv): InPlaceLayerKv {
  if (!(l instanceof InPlaceLayerKv)) throw new Error('KV rows can be copied only from host caches');
  return l;
}

class InPlaceLayerKv implements LayerKv {
  private capacity = 0;
  private key: RtTensor | null = null;
  private value: RtTensor | null = null;
  private used = 0;

  constructor(
    private readonly runtime: Runtime,
    private readonly shape: KvShape,
  ) {}

  reserve(total: number): void {
    if (total <= this.capacity) {
      this.used = total;
      return;
    }
    const capacity = kvRowsFor(total, this.shape.maxPositions);
    this.key = this.grow(this.key, capacity);
    this.value = this.grow(this.value, capacity);
    this.capacity = capacity;
    this.used = total;
  }

  /** Copies the cached rows of every head into a buffer of the new capacity. */
  private grow(old: RtTensor | null, capacity: number): RtTensor {
    const { numKvHeads: nKv, headDim: D } = this.shape;
    const data = new Float32Array(nKv * capacity * D);
    if (old) {
      const src = old.data as Float32Array;
      const rows = this.capacity * D;
      for (let h = 0; h < nKv; h++) data.set(src.subarray(h * rows, h * rows + rows), h * capacity * D);
    }
    return this.runtime.float32(data, [1, nKv, capacity, D]);
  }

  rows(): { key: Float32Array; value: Float32Array; capacity: number } {
    if (!this.key || !this.value) throw new Error('KV cache used before reserve()');
    return { key: this.key.data as Float32Array, value: this.value.data as Float32Array, capacity: this.capacity };
  }

  /** Rows [start, start + count) of every head into keys and values, (kvHeads, count, headDim) each. */
  copyOut(start: number, count: number, keys: Float32Array, values: Float32Array): void {
    this.copyRows(start, count, keys, values, 'out');
  }

  /** The reverse of copyOut: rows written at [start, start + count); reserve() them first. */
  copyIn(start: number, count: number, keys: Float32Array, values: Float32Array): void {
    this.copyRows(start, count, keys, values, 'in');
  }

  private copyRows(start: number, count: number, keys: Float32Array, values: Float32Array, direction: 'in' | 'out'): void {
    if (count === 0) return;
    if (!this.key || !this.value) throw new Error('KV cache used before reserve()');
    const { numKvHeads: nKv, headDim: D } = this.shape;
    const pairs: [Float32Array, Float32Array][] = [[this.key.data as Float32Array, keys], [this.value.data as Float32Array, values]];
    for (const [cache, flat] of pairs) {
      for (let h = 0; h < nKv; h++) {
        const at = (h * this.capacity + start) * D;
        if (direction === 'out') flat.set(cache.subarray(at, at + count * D), h * count * D);
        else cache.set(flat.subarray(h * count * D, (h + 1) * count * D), at);
      }
    }
  }

  feeds(): Record<string, RtTensor> {
    if (!this.key || !this.value || this.used === 0) throw new Error('KV cache used before reserve()');
    return { [ATTN.pastKey]: this.key, [ATTN.pastValue]: this.value };
  }

  commit(): void {
    // Rows are written in place; the sequence's length says which are valid.
  }

  rollback(): void {
    // Rows past the sequence's length are overwritten by the next step.
  }

  /** Writes batch item b's appended rows, of new_key/new_value (B, kvHeads, T, headDim), at the end of the cache. */
  accept(outputs: Record<string, RtTensor>, b: number): void {
    const key = outputs[ATTN.newKey];
    const value = outputs[ATTN.newValue];
    if (!key || !value || !this.key || !this.value) throw new Error('attention block returned no new key/value rows');
    const { numKvHeads: nKv, headDim: D } = this.shape;
    const T = key.dims[2] as number;
    const [newKeys, newValues] = [key.data as Float32Array, value.data as Float32Array];
    const [keys, values] = [this.key.data as Float32Array, this.value.data as Float32Array];
    for (let h = 0; h < nKv; h++) {
      const from = (b * nKv + h) * T * D;
      const to = (h * this.capacity + this.used - T) * D;
      keys.set(newKeys.subarray(from, from + T * D), to);
      values.set(newValues.subarray(from, from + T * D), to);
    }
  }

  dispose(): void {
    this.key = this.value = null;
  }
}

class RollingLayerKv implements LayerKv {
  private key: RtTensor;
  private value: RtTensor;
  /** This step's present tensors, until commit() makes them the past (or rollback() drops them). */
  private next: { key: RtTensor; value: RtTensor } | null = null;

  constructor(
    private readonly runtime: Runtime,
    shape: KvShape,
  ) {
    const empty = () => runtime.float32(new Float32Array(0), [1, shape.numKvHeads, 0, shape.headDim]);
    this.key = empty();
    this.value = empty();
  }

  feeds(): Record<string, RtTensor> {
    return { [ATTN.pastKey]: this.key, [ATTN.pastValue]: this.value };
  }

  accept(outputs: Record<string, RtTensor>): void {
    const key = outputs[ATTN.presentKey];
    const value = outputs[ATTN.presentValue];
    if (!key || !value) throw new Error('attention block returned no present key/value');
    this.rollback();
    this.next = { key, value };
  }

  commit(): void {
    if (!this.next) return;
    this.release();
    ({ key: this.key, value: this.value } = this.next);
    this.next = null;
  }

  rollback(): void {
    if (!this.next) return;
    this.runtime.release(this.next.key);
    this.runtime.release(this.next.value);
    this.next = null;
  }

  private release(): void {
    this.runtime.release(this.key);
    this.runtime.release(this.value);
  }

  dispose(): void {
    this.rollback();
    this.release();
    this.key = this.value = this.runtime.float32(new Float32Array(0), [1, 1, 0, 1]);
  }
}
