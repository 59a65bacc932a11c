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
  ) {}

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

  static async load(archive: SafetensorsArchive, spec: ModelSpec, runtime: Runtime, onProgress?: LoadProgress): Promise<ResidentWeights> {
    const layers = Array.from({ length: spec.numLayers }, (_, l) => layerRequests(archive, spec, l));
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
    for (const l of layers) layerFeeds.push(await loadAll(l.requests));
    const headFeeds = await loadAll(head);
    const embedding = await EmbeddingTable.load(archive, EMBED_TOKENS, spec.vocabSize, spec.hiddenSize);
    return new ResidentWeights(layerFeeds, headFeeds, layers.map((l) => l.variant), embedding);
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
function layerRequests(archive: SafetensorsArchive, spec: ModelSpec, layer: number): { variant: AttentionBlockVariant; requests: TensorRequest[] } {
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
