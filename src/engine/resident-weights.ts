// The weights that stay resident for the life of a model: attention, norms, routers, shared experts,
// dense MLPs and the LM head, held in the form the execution provider computes with. Routed experts are
// not here: the expert store owns them.
import { ATTN, type AttentionBlockVariant } from '../graphs/attention-block.js';
import { LM_HEAD_IO } from '../graphs/lm-head.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { SafetensorsArchive } from '../model/safetensors.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, layerTensorNames, type ExpertTensorNames } from '../model/tensor-names.js';
import type { DeviceTensor, RtTensor, Runtime } from '../runtime/onnx-runtime.js';
import { EmbeddingTable } from './embedding-table.js';

/** Reports load progress as (tensors done, tensors total). */
export type LoadProgress = (done: number, total: number) => void;

interface TensorRequest {
  readonly feed: string;
  readonly name: string;
  readonly shape: readonly number[];
}

export class ResidentWeights implements Disposable {
  private constructor(
    private readonly layerFeeds: ReadonlyArray<Readonly<Record<string, DeviceTensor>>>,
    private readonly headFeeds: Readonly<Record<string, DeviceTensor>>,
    readonly variants: readonly AttentionBlockVariant[],
    readonly embedding: EmbeddingTable,
    private readonly lookahead: ReadonlyArray<readonly number[]>,
  ) {}

  /** The sparse layers whose routers layer `layer`'s lookahead logits predict, in output order. */
  lookaheadTargets(layer: number): readonly number[] {
    return this.lookahead[layer] ?? [];
  }

  /** Bytes of resident weights in compute form (the embedding table is counted at its stored size). */
  get residentBytes(): number {
    const sum = (feeds: Readonly<Record<string, DeviceTensor>>) => Object.values(feeds).reduce((n, t) => n + t.bytes, 0);
    return this.layerFeeds.reduce((n, f) => n + sum(f), sum(this.headFeeds)) + this.embedding.bytes;
  }

  /** The weight inputs of layer `layer`'s attention block, by graph input name. */
  layerInputs(layer: number): Record<string, RtTensor> {
    return tensorsOf(this.layerFeeds[layer] ?? {});
  }

  headInputs(): Record<string, RtTensor> {
    return tensorsOf(this.headFeeds);
  }

  /** `lookaheadDepth`: how many following sparse layers each sparse layer's router lookahead predicts. */
  static async load(archive: SafetensorsArchive, spec: ModelSpec, runtime: Runtime, lookaheadDepth: number, onProgress?: LoadProgress): Promise<ResidentWeights> {
    const lookahead = spec.sparseLayers.map((sparse, l) => (sparse ? nextSparseLayers(spec, l, lookaheadDepth) : []));
    const layers = Array.from({ length: spec.numLayers }, (_, l) => layerRequests(archive, spec, l, (lookahead[l] ?? []).length));
    const head: TensorRequest[] = [
      { feed: LM_HEAD_IO.norm, name: FINAL_NORM, shape: [spec.hiddenSize] },
      { feed: LM_HEAD_IO.lmHead, name: spec.tieWordEmbeddings ? EMBED_TOKENS : LM_HEAD, shape: [spec.vocabSize, spec.hiddenSize] },
    ];
    const total = layers.reduce((n, l) => n + l.requests.length, head.length);
    let done = 0;
    const loadAll = async (requests: readonly TensorRequest[]) => {
      const feeds: Record<string, DeviceTensor> = {};
      for (const r of requests) {
        const data = await archive.readFloat32(r.name, r.shape);
        feeds[r.feed] = await runtime.toDevice(runtime.float32(data, r.shape));
        onProgress?.(++done, total);
      }
      return feeds;
    };
    const layerFeeds: Record<string, DeviceTensor>[] = [];
    for (const [l, layer] of layers.entries()) {
      const feeds = await loadAll(layer.requests);
      const targets = lookahead[l] ?? [];
      if (targets.length > 0) {
        const rows = await foldedRouters(archive, spec, targets);
        feeds[ATTN.lookahead] = await runtime.toDevice(runtime.float32(rows, [targets.length * spec.numExperts, spec.hiddenSize]));
      }
      layerFeeds.push(feeds);
    }
    const headFeeds = await loadAll(head);
    const embedding = await EmbeddingTable.load(archive, EMBED_TOKENS, spec.vocabSize, spec.hiddenSize);
    return new ResidentWeights(layerFeeds, headFeeds, layers.map((l) => l.variant), embedding, lookahead);
  }

  [Symbol.dispose](): void {
    for (const feeds of [...this.layerFeeds, this.headFeeds]) {
      for (const t of Object.values(feeds)) t.dispose();
    }
  }
}

function tensorsOf(feeds: Readonly<Record<string, DeviceTensor>>): Record<string, RtTensor> {
  const out: Record<string, RtTensor> = {};
  for (const [k, t] of Object.entries(feeds)) out[k] = t.tensor;
  return out;
}

/** Which tensors a layer needs, and the graph variant that consumes them; optional ones are detected. */
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
    const router = await archive.readFloat32(n.router, [E, H]);
    const norm = await archive.readFloat32(n.postAttentionNorm, [H]);
    for (let e = 0; e < E; e++) {
      for (let h = 0; h < H; h++) out[(i * E + e) * H + h] = (router[e * H + h] as number) * (norm[h] as number);
    }
  }
  return out;
}

function layerRequests(archive: SafetensorsArchive, spec: ModelSpec, layer: number, lookaheadLayers: number): { variant: AttentionBlockVariant; requests: TensorRequest[] } {
  const n = layerTensorNames(spec.family, layer);
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = spec;
  const sparse = spec.sparseLayers[layer] ?? true;
  const sharedExpert = sparse && spec.sharedExpertIntermediateSize !== null;
  const intermediateSize = sparse ? (spec.sharedExpertIntermediateSize ?? 0) : spec.denseIntermediateSize;
  const qkvBias = archive.has(n.qBias);
  const oBias = archive.has(n.oBias);
  const variant: AttentionBlockVariant = {
    hiddenSize: H,
    numHeads: nH,
    numKvHeads: nKv,
    headDim: D,
    rmsNormEps: spec.rmsNormEps,
    qkNorm: spec.qkNorm,
    clipQkv: spec.clipQkv,
    qkvBias,
    oBias,
    mlp: sparse ? 'sparse' : 'dense',
    sharedExpert,
    numExperts: spec.numExperts,
    intermediateSize,
    lookaheadRows: lookaheadLayers * spec.numExperts,
  };
  const r: TensorRequest[] = [
    { feed: ATTN.inputNorm, name: n.inputNorm, shape: [H] },
    { feed: ATTN.q, name: n.q, shape: [nH * D, H] },
    { feed: ATTN.k, name: n.k, shape: [nKv * D, H] },
    { feed: ATTN.v, name: n.v, shape: [nKv * D, H] },
    { feed: ATTN.o, name: n.o, shape: [H, nH * D] },
    { feed: ATTN.postNorm, name: n.postAttentionNorm, shape: [H] },
  ];
  if (qkvBias) {
    r.push({ feed: ATTN.qBias, name: n.qBias, shape: [nH * D] });
    r.push({ feed: ATTN.kBias, name: n.kBias, shape: [nKv * D] });
    r.push({ feed: ATTN.vBias, name: n.vBias, shape: [nKv * D] });
  }
  if (oBias) r.push({ feed: ATTN.oBias, name: n.oBias, shape: [H] });
  if (spec.qkNorm === 'projection') {
    r.push({ feed: ATTN.qNorm, name: n.qNorm, shape: [nH * D] });
    r.push({ feed: ATTN.kNorm, name: n.kNorm, shape: [nKv * D] });
  } else if (spec.qkNorm === 'head') {
    r.push({ feed: ATTN.qNorm, name: n.qNorm, shape: [D] });
    r.push({ feed: ATTN.kNorm, name: n.kNorm, shape: [D] });
  }
  const mlp = (names: ExpertTensorNames, I: number) => {
    r.push({ feed: ATTN.mlpGate, name: names.gate, shape: [I, H] });
    r.push({ feed: ATTN.mlpUp, name: names.up, shape: [I, H] });
    r.push({ feed: ATTN.mlpDown, name: names.down, shape: [H, I] });
  };
  if (sparse) {
    r.push({ feed: ATTN.router, name: n.router, shape: [spec.numExperts, H] });
    if (sharedExpert) {
      mlp(n.sharedExpert, intermediateSize);
      r.push({ feed: ATTN.sharedGate, name: n.sharedExpertGate, shape: [1, H] });
    }
  } else {
    mlp(n.denseMlp, intermediateSize);
  }
  return { variant, requests: r };
}
