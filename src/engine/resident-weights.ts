// The weights that stay resident for the life of a model: attention, norms, routers, shared experts,
// dense MLPs and the LM head, in their compute form (compute-options.ts). Routed experts are not here:
// the expert store owns them.
//
// On the CPU provider these weights are baked into the sessions as initializers (prepacked by
// onnxruntime; matrix.ts), so nothing is fed per run and no copy stays here. On GPU providers they are
// uploaded once as device tensors and fed to sessions shared by every layer of the same variant.
import { ATTN, type AttentionBlockVariant } from '../graphs/attention-block.js';
import { LM_HEAD_IO, type LmHeadVariant } from '../graphs/lm-head.js';
import { matrixForm, matrixTensors, type MatrixForm } from '../graphs/matrix.js';
import type { ConstTensor } from '../graphs/onnx-builder.js';
import { computeBytes, concatArrays, concatRows, type ComputeMatrix, type WeightClass } from '../model/compute-form.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { SafetensorsArchive } from '../model/safetensors.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, layerTensorNames, type ExpertTensorNames } from '../model/tensor-names.js';
import { readFloat32Matrix, readStoredMatrix } from '../model/weight-reader.js';
import type { DeviceTensor, RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import { computeMatrix, type ResolvedCompute } from './compute-options.js';
import { EmbeddingTable } from './embedding-table.js';
import { RopeTable } from './rope.js';

/** Reports load progress as (tensors done, tensors total). */
export type LoadProgress = (done: number, total: number) => void;

/** One block's weights in compute form, by graph tensor name, before they go to a session or the device. */
export interface BlockWeights<V> {
  readonly variant: V;
  readonly tensors: ReadonlyMap<string, ConstTensor>;
  readonly bytes: number;
}

export interface ResidentWeightData {
  readonly layers: readonly BlockWeights<AttentionBlockVariant>[];
  readonly head: BlockWeights<LmHeadVariant>;
  /** Per layer: the sparse layers its router lookahead predicts, in output order. */
  readonly lookahead: readonly (readonly number[])[];
  readonly embedding: EmbeddingTable;
  /** (maxPositions, headDim / 2) cos and sin tables that every layer's attention reads (by graph input name). */
  readonly rope: ReadonlyMap<string, ConstTensor>;
}

/** A graph tensor and the checkpoint tensors it is made of (several are stacked by rows: q, k, v -> qkv). */
type TensorRequest =
  | { readonly kind: 'vector'; readonly feed: string; readonly parts: readonly { readonly name: string; readonly shape: readonly number[] }[] }
  | { readonly kind: 'matrix'; readonly feed: string; readonly parts: readonly { readonly name: string; readonly rows: number }[]; readonly cols: number; readonly cls: WeightClass };

/**
 * Reads every resident weight and converts it to its compute form. `lookaheadDepth`: how many following
 * sparse layers each sparse layer's router lookahead predicts.
 */
export async function readResidentWeights(
  archive: SafetensorsArchive,
  spec: ModelSpec,
  compute: ResolvedCompute,
  lookaheadDepth: number,
  onProgress?: LoadProgress,
): Promise<ResidentWeightData> {
  const lookahead = spec.sparseLayers.map((sparse, l) => (sparse ? nextSparseLayers(spec, l, lookaheadDepth) : []));
  const plans = Array.from({ length: spec.numLayers }, (_, l) => layerRequests(archive, spec, l));
  const headRequests: TensorRequest[] = [
    vector(LM_HEAD_IO.norm, FINAL_NORM, [spec.hiddenSize]),
    matrix(LM_HEAD_IO.lmHead, spec.tieWordEmbeddings ? EMBED_TOKENS : LM_HEAD, spec.vocabSize, spec.hiddenSize),
  ];
  const total = plans.reduce((n, l) => n + l.requests.length, headRequests.length);
  let done = 0;
  const readAll = async (requests: readonly TensorRequest[]) => {
    const tensors = new Map<string, ConstTensor>();
    const forms: Record<string, MatrixForm> = {};
    let bytes = 0;
    for (const r of requests) {
      if (r.kind === 'vector') {
        const parts: Float32Array[] = [];
        for (const { name, shape } of r.parts) {
          const [rows, cols] = shape;
          // Routers are (E, H) matrices that a quantized checkpoint may store packed; they compute in float32.
          parts.push(cols !== undefined && rows !== undefined ? await readFloat32Matrix(archive, name, rows, cols, spec.quantization) : await archive.readFloat32(name, shape));
        }
        const data = parts.length === 1 ? (parts[0] as Float32Array) : concatArrays(parts, (n) => new Float32Array(n));
        const dims = r.parts.length === 1 ? (r.parts[0]?.shape ?? []) : [data.length];
        tensors.set(r.feed, { type: 'float32', dims, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
        bytes += data.byteLength;
      } else {
        const parts: ComputeMatrix[] = [];
        for (const { name, rows } of r.parts) parts.push(computeMatrix(await readStoredMatrix(archive, name, rows, r.cols, spec.quantization), r.cls, compute));
        const m = concatRows(parts);
        forms[r.feed] = matrixForm(m, compute.accuracyLevel);
        for (const [name, t] of matrixTensors(r.feed, m)) tensors.set(name, t);
        bytes += computeBytes(m);
      }
      onProgress?.(++done, total);
    }
    return { tensors, forms, bytes };
  };
  const layers: BlockWeights<AttentionBlockVariant>[] = [];
  for (const [l, plan] of plans.entries()) {
    const { tensors, forms, bytes } = await readAll(plan.requests);
    const targets = lookahead[l] ?? [];
    let extra = 0;
    if (targets.length > 0) {
      const rows = await foldedRouters(archive, spec, targets);
      tensors.set(ATTN.lookahead, { type: 'float32', dims: [targets.length * spec.numExperts, spec.hiddenSize], bytes: new Uint8Array(rows.buffer) });
      extra = rows.byteLength;
    }
    layers.push({ variant: { ...plan.variant, lookaheadRows: targets.length * spec.numExperts, matrices: forms }, tensors, bytes: bytes + extra });
  }
  const head = await readAll(headRequests);
  const lmHead = head.forms[LM_HEAD_IO.lmHead];
  if (!lmHead) throw new Error('LM head weight was not read');
  const embedding = await EmbeddingTable.load(archive, EMBED_TOKENS, spec.vocabSize, spec.hiddenSize);
  const { cos, sin } = new RopeTable(spec.ropeTheta, spec.headDim).slice(0, spec.maxPositions);
  const table = (t: Float32Array): ConstTensor => ({ type: 'float32', dims: [spec.maxPositions, spec.headDim / 2], bytes: new Uint8Array(t.buffer) });
  return {
    rope: new Map([
      [ATTN.cosCache, table(cos)],
      [ATTN.sinCache, table(sin)],
    ]),
    layers,
    head: { variant: { hiddenSize: spec.hiddenSize, vocabSize: spec.vocabSize, rmsNormEps: spec.rmsNormEps, lmHead }, tensors: head.tensors, bytes: head.bytes },
    lookahead,
    embedding,
  };
}

export class ResidentWeights implements Disposable {
  private constructor(
    private readonly layerFeeds: ReadonlyArray<Readonly<Record<string, DeviceTensor>>>,
    /** Fed to every layer's attention (the rotary tables): device tensors on GPU providers, host tensors on the CPU. */
    private readonly shared: Readonly<Record<string, RtTensor>>,
    private readonly sharedOnDevice: readonly DeviceTensor[],
    private readonly headFeeds: Readonly<Record<string, DeviceTensor>>,
    readonly variants: readonly AttentionBlockVariant[],
    readonly embedding: EmbeddingTable,
    private readonly lookahead: ReadonlyArray<readonly number[]>,
    /** Bytes of resident weights in compute form (the embedding table at its stored size). */
    readonly residentBytes: number,
  ) {}

  /**
   * Holds the weights for the forward pass: on GPU providers uploaded as device tensors; on the CPU
   * provider the sessions hold them (baked in), so nothing is kept here.
   */
  static async create(runtime: Runtime, data: ResidentWeightData): Promise<ResidentWeights> {
    const upload = async (tensors: ReadonlyMap<string, ConstTensor>) => {
      const feeds: Record<string, DeviceTensor> = {};
      if (!runtime.onGpu) return feeds;
      const named = [...tensors];
      const uploaded = await runtime.toDeviceAll(named.map(([, t]) => runtime.tensorOf(t)));
      named.forEach(([name], i) => (feeds[name] = uploaded[i] as DeviceTensor));
      return feeds;
    };
    const layerFeeds: Record<string, DeviceTensor>[] = [];
    for (const l of data.layers) layerFeeds.push(await upload(l.tensors));
    const headFeeds = await upload(data.head.tensors);
    const shared: Record<string, RtTensor> = {};
    const sharedOnDevice: DeviceTensor[] = [];
    for (const [name, t] of data.rope) {
      const host = runtime.tensorOf(t);
      if (!runtime.onGpu) {
        shared[name] = host;
        continue;
      }
      const d = await runtime.toDevice(host);
      sharedOnDevice.push(d);
      shared[name] = d.tensor;
    }
    const bytes = data.layers.reduce((n, l) => n + l.bytes, data.head.bytes) + data.embedding.bytes;
    return new ResidentWeights(layerFeeds, shared, sharedOnDevice, headFeeds, data.layers.map((l) => l.variant), data.embedding, data.lookahead, bytes);
  }

  /** The sparse layers whose routers layer `layer`'s lookahead logits predict, in output order. */
  lookaheadTargets(layer: number): readonly number[] {
    return this.lookahead[layer] ?? [];
  }

  /** The weight inputs of layer `layer`'s attention block, by graph input name (on the CPU provider only the rotary tables). */
  layerInputs(layer: number): Record<string, RtTensor> {
    return { ...tensorsOf(this.layerFeeds[layer] ?? {}), ...this.shared };
  }

  headInputs(): Record<string, RtTensor> {
    return tensorsOf(this.headFeeds);
  }

  [Symbol.dispose](): void {
    for (const feeds of [...this.layerFeeds, this.headFeeds]) {
      for (const t of Object.values(feeds)) t.dispose();
    }
    for (const t of this.sharedOnDevice) t.dispose();
  }
}

function tensorsOf(feeds: Readonly<Record<string, DeviceTensor>>): Record<string, RtTensor> {
  const out: Record<string, RtTensor> = {};
  for (const [k, t] of Object.entries(feeds)) out[k] = t.tensor;
  return out;
}

const vector = (feed: string, name: string, shape: readonly number[]): TensorRequest => ({ kind: 'vector', feed, parts: [{ name, shape }] });
const matrix = (feed: string, name: string, rows: number, cols: number, cls: WeightClass = 'weights'): TensorRequest => ({ kind: 'matrix', feed, parts: [{ name, rows }], cols, cls });

function nextSparseLayers(spec: ModelSpec, layer: number, depth: number): number[] {
  const out: number[] = [];
  for (let l = layer + 1; l < spec.numLayers && out.length < depth; l++) if (spec.sparseLayers[l]) out.push(l);
  return out;
}

/**
 * The routers of `targets`, each row multiplied by its layer's post-attention norm weight, so that
 * (x / rms(x)) @ folded^T equals router(post_attention_norm(x)) for that layer. (targets x E, H)
 */
async function foldedRouters(archive: SafetensorsArchive, spec: ModelSpec, targets: readonly number[]): Promise<Float32Array> {
  const { numExperts: E, hiddenSize: H } = spec;
  const out = new Float32Array(targets.length * E * H);
  for (const [i, layer] of targets.entries()) {
    const n = layerTensorNames(spec.family, layer);
    const router = await readFloat32Matrix(archive, n.router, E, H, spec.quantization);
    const norm = await archive.readFloat32(n.postAttentionNorm, [H]);
    for (let e = 0; e < E; e++) {
      for (let h = 0; h < H; h++) out[(i * E + e) * H + h] = (router[e * H + h] as number) * (norm[h] as number);
    }
  }
  return out;
}

/** Which tensors a layer needs, and the graph variant that consumes them (forms filled in once read); optional ones are detected. */
function layerRequests(archive: SafetensorsArchive, spec: ModelSpec, layer: number): { variant: Omit<AttentionBlockVariant, 'matrices' | 'lookaheadRows'>; requests: TensorRequest[] } {
  const n = layerTensorNames(spec.family, layer);
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = spec;
  const sparse = spec.sparseLayers[layer] ?? true;
  const sharedExpert = sparse && spec.sharedExpertIntermediateSize !== null;
  const intermediateSize = sparse ? (spec.sharedExpertIntermediateSize ?? 0) : spec.denseIntermediateSize;
  const qkvBias = archive.has(n.qBias);
  const oBias = archive.has(n.oBias);
  const variant = {
    hiddenSize: H,
    numHeads: nH,
    numKvHeads: nKv,
    headDim: D,
    rmsNormEps: spec.rmsNormEps,
    qkNorm: spec.qkNorm,
    clipQkv: spec.clipQkv,
    qkvBias,
    oBias,
    mlp: sparse ? ('sparse' as const) : ('dense' as const),
    sharedExpert,
    numExperts: spec.numExperts,
    intermediateSize,
  };
  const r: TensorRequest[] = [
    vector(ATTN.inputNorm, n.inputNorm, [H]),
    { kind: 'matrix', feed: ATTN.qkv, parts: [{ name: n.q, rows: nH * D }, { name: n.k, rows: nKv * D }, { name: n.v, rows: nKv * D }], cols: H, cls: 'attention' },
    matrix(ATTN.o, n.o, H, nH * D, 'attention'),
    vector(ATTN.postNorm, n.postAttentionNorm, [H]),
  ];
  if (qkvBias) r.push({ kind: 'vector', feed: ATTN.qkvBias, parts: [{ name: n.qBias, shape: [nH * D] }, { name: n.kBias, shape: [nKv * D] }, { name: n.vBias, shape: [nKv * D] }] });
  if (oBias) r.push(vector(ATTN.oBias, n.oBias, [H]));
  if (spec.qkNorm === 'projection') r.push(vector(ATTN.qNorm, n.qNorm, [nH * D]), vector(ATTN.kNorm, n.kNorm, [nKv * D]));
  else if (spec.qkNorm === 'head') r.push(vector(ATTN.qNorm, n.qNorm, [D]), vector(ATTN.kNorm, n.kNorm, [D]));
  const mlp = (names: ExpertTensorNames, I: number) =>
    r.push(matrix(ATTN.mlpGate, names.gate, I, H), matrix(ATTN.mlpUp, names.up, I, H), matrix(ATTN.mlpDown, names.down, H, I));
  if (sparse) {
    // The router stays float32 whatever the weights' form: routing decisions must match the reference.
    r.push(vector(ATTN.router, n.router, [spec.numExperts, H]));
    if (sharedExpert) {
      mlp(n.sharedExpert, intermediateSize);
      r.push(vector(ATTN.sharedGate, n.sharedExpertGate, [1, H]));
    }
  } else {
    mlp(n.denseMlp, intermediateSize);
  }
  return { variant, requests: r };
}

