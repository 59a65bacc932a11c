// An independent float64 forward pass of the Hugging Face transformers MoE decoders, written from the
// published modeling code (modeling_mixtral, modeling_qwen2_moe, modeling_olmoe, modeling_qwen3_moe), to
// check the engine against. Deliberately naive: no KV cache (every call recomputes the whole causal
// attention), one token at a time, plain loops. It imports nothing from src/graphs, src/engine or
// src/runtime; from src/model it takes only the ModelSpec type and the checkpoint readers (a quantized
// checkpoint's weights are read dequantized, so that the reference computes with exactly the values the
// quantized engine holds).
import { packedNames, PACKED_SUFFIXES } from '../../src/model/compressed-tensors.js';
import { loadModelConfig, type ModelFamily, type ModelSpec } from '../../src/model/hf-config.js';
import { SafetensorsArchive } from '../../src/model/safetensors.js';
import { readFloat32Matrix } from '../../src/model/weight-reader.js';

/** A checkpoint tensor by its Hugging Face name (row-major, as stored), or undefined when absent. */
export type WeightLookup = (name: string) => Float32Array | undefined;

export interface ReferenceOutput {
  /** (T, V) logits at every position */
  readonly logits: Float64Array;
  /** [layer][position] -> the top-k experts, most probable first; null for a dense (non-MoE) layer */
  readonly routerTopK: (number[][] | null)[];
}

// ---- Checkpoint tensor names, as the transformers modules name their parameters ----

export interface MlpNames {
  readonly gate: string;
  readonly up: string;
  readonly down: string;
}

const mlpNames = (prefix: string): MlpNames => ({
  gate: `${prefix}.gate_proj.weight`,
  up: `${prefix}.up_proj.weight`,
  down: `${prefix}.down_proj.weight`,
});

/** Names of one decoder layer's tensors. Mixtral: block_sparse_moe with w1 (gate), w3 (up), w2 (down). */
export function hfLayerNames(family: ModelFamily, layer: number) {
  const p = `model.layers.${layer}`;
  const moe = family === 'mixtral' ? `${p}.block_sparse_moe` : `${p}.mlp`;
  const attn = `${p}.self_attn`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    postAttentionNorm: `${p}.post_attention_layernorm.weight`,
    q: `${attn}.q_proj`,
    k: `${attn}.k_proj`,
    v: `${attn}.v_proj`,
    o: `${attn}.o_proj`,
    qNorm: `${attn}.q_norm.weight`,
    kNorm: `${attn}.k_norm.weight`,
    router: `${moe}.gate.weight`,
    expert: (j: number): MlpNames =>
      family === 'mixtral'
        ? { gate: `${moe}.experts.${j}.w1.weight`, up: `${moe}.experts.${j}.w3.weight`, down: `${moe}.experts.${j}.w2.weight` }
        : mlpNames(`${moe}.experts.${j}`),
    sharedExpert: mlpNames(`${p}.mlp.shared_expert`),
    sharedExpertGate: `${p}.mlp.shared_expert_gate.weight`,
    denseMlp: mlpNames(`${p}.mlp`),
  };
}

export const HF_EMBED = 'model.embed_tokens.weight';
export const HF_FINAL_NORM = 'model.norm.weight';
export const HF_LM_HEAD = 'lm_head.weight';

/** Every tensor of a checkpoint directory as float32: float tensors as stored, packed weights dequantized under their `.weight` name. */
export async function loadWeights(dir: string): Promise<WeightLookup> {
  const spec = await loadModelConfig(dir);
  const archive = await SafetensorsArchive.open(dir);
  const tensors = new Map<string, Float32Array>();
  const packed = `.${PACKED_SUFFIXES.packed}`;
  try {
    for (const name of archive.names()) {
      if (name.endsWith(packed)) {
        const weight = `${name.slice(0, -packed.length)}.weight`;
        const shape = await archive.readBytes(packedNames(weight).shape);
        const view = new DataView(shape.buffer, shape.byteOffset, shape.byteLength);
        tensors.set(weight, await readFloat32Matrix(archive, weight, Number(view.getBigInt64(0, true)), Number(view.getBigInt64(8, true)), spec.quantization));
      } else if (!Object.values(PACKED_SUFFIXES).some((suffix) => name.endsWith(`.${suffix}`))) {
        tensors.set(name, await archive.readFloat32(name));
      }
    }
  } finally {
    await archive.close();
  }
  return (name) => tensors.get(name);
}

// ---- Building blocks ----

function need(w: WeightLookup, name: string, length: number): Float32Array {
  const t = w(name);
  if (t === undefined) throw new Error(`reference: checkpoint has no tensor ${name}`);
  if (t.length !== length) throw new Error(`reference: ${name} has ${t.length} elements, expected ${length}`);
  return t;
}

/** nn.Linear: y = W x (+ b), W (out, in) row-major. */
function linear(w: Float32Array, x: Float64Array, bias?: Float32Array): Float64Array {
  const inDim = x.length;
  const out = new Float64Array(w.length / inDim);
  for (let o = 0; o < out.length; o++) {
    let s = bias ? bias[o]! : 0;
    for (let i = 0; i < inDim; i++) s += w[o * inDim + i]! * x[i]!;
    out[o] = s;
  }
  return out;
}

/** RMSNorm over the whole vector: weight * x / sqrt(mean(x^2) + eps). */
function rmsNorm(x: Float64Array, weight: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => weight[i]! * v * inv);
}

/** RMSNorm applied to each head_dim slice of x separately (Qwen3's q_norm / k_norm). */
function rmsNormPerHead(x: Float64Array, weight: Float32Array, headDim: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < x.length / headDim; h++) out.set(rmsNorm(x.subarray(h * headDim, (h + 1) * headDim), weight, eps), h * headDim);
  return out;
}

/**
 * rotate_half RoPE on every head of x, in place: with x = [x1, x2] split at D/2 and
 * angle_i = position / theta^(2i/D):  [x1 cos - x2 sin, x2 cos + x1 sin]  (q * cos + rotate_half(q) * sin).
 * transformers computes the angles in float32; float64 here differs by far less than the tolerances.
 */
function rope(x: Float64Array, headDim: number, position: number, theta: number): void {
  const half = headDim / 2;
  for (let base = 0; base < x.length; base += headDim) {
    for (let i = 0; i < half; i++) {
      const angle = position / Math.pow(theta, (2 * i) / headDim);
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      const x1 = x[base + i]!;
      const x2 = x[base + half + i]!;
      x[base + i] = x1 * c - x2 * s;
      x[base + half + i] = x2 * c + x1 * s;
    }
  }
}

function softmax(xs: Float64Array): Float64Array {
  let max = -Infinity;
  for (const v of xs) max = Math.max(max, v);
  const e = xs.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

const silu = (v: number): number => v / (1 + Math.exp(-v));
const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));

/** down(silu(gate(x)) * up(x)): the SwiGLU MLP of every family's experts and dense layers. */
function swiGlu(w: WeightLookup, names: MlpNames, intermediate: number, x: Float64Array): Float64Array {
  const H = x.length;
  const g = linear(need(w, names.gate, intermediate * H), x);
  const u = linear(need(w, names.up, intermediate * H), x);
  return linear(need(w, names.down, H * intermediate), g.map((v, i) => silu(v) * u[i]!));
}

/** Indices of the k largest values, largest first; ties keep the lower index. */
function topK(values: Float64Array, k: number): number[] {
  const order = Array.from(values.keys()).sort((a, b) => values[b]! - values[a]! || a - b);
  return order.slice(0, k);
}

function add(into: Float64Array, x: Float64Array, scale = 1): void {
  for (let i = 0; i < into.length; i++) into[i] = into[i]! + scale * x[i]!;
}

// ---- The model ----

interface LayerState {
  /** per position: (nKv * D) keys after norm and RoPE, and values */
  readonly keys: Float64Array[];
  readonly values: Float64Array[];
}

/**
 * The decoder layer's attention for every position of `xs` (already input-normed), causal:
 *   q, k, v = x Wq^T (+bq), x Wk^T (+bk), x Wv^T (+bv)
 *   OLMoE:  q = q_norm(q), k = k_norm(k) over the whole projection, then clamp q, k, v to +-clip_qkv
 *   Qwen3:  q_norm / k_norm over each head's head_dim, before RoPE
 *   RoPE; query head h reads kv head floor(h / (nH / nKv)) (repeat_kv); softmax(q k^T / sqrt(D)) v; o_proj.
 */
function attention(spec: ModelSpec, w: WeightLookup, layer: number, xs: Float64Array[]): Float64Array[] {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, rmsNormEps: eps } = spec;
  const n = hfLayerNames(spec.family, layer);
  const bias = (proj: string) => w(`${proj}.bias`);
  const state: LayerState = { keys: [], values: [] };
  const queries: Float64Array[] = [];
  xs.forEach((x, pos) => {
    let q = linear(need(w, `${n.q}.weight`, nH * D * H), x, bias(n.q));
    let k = linear(need(w, `${n.k}.weight`, nKv * D * H), x, bias(n.k));
    let v = linear(need(w, `${n.v}.weight`, nKv * D * H), x, bias(n.v));
    if (spec.family === 'olmoe') {
      q = rmsNorm(q, need(w, n.qNorm, nH * D), eps);
      k = rmsNorm(k, need(w, n.kNorm, nKv * D), eps);
      const clip = spec.clipQkv;
      if (clip !== null) {
        const clamp = (t: Float64Array) => t.map((e) => Math.min(clip, Math.max(-clip, e)));
        [q, k, v] = [clamp(q), clamp(k), clamp(v)];
      }
    } else if (spec.family === 'qwen3_moe') {
      q = rmsNormPerHead(q, need(w, n.qNorm, D), D, eps);
      k = rmsNormPerHead(k, need(w, n.kNorm, D), D, eps);
    }
    rope(q, D, pos, spec.ropeTheta);
    rope(k, D, pos, spec.ropeTheta);
    queries.push(q);
    state.keys.push(k);
    state.values.push(v);
  });
  const groups = nH / nKv;
  const scale = 1 / Math.sqrt(D);
  const wo = need(w, `${n.o}.weight`, H * nH * D);
  return queries.map((q, pos) => {
    // (nH * D) attention output, heads concatenated
    const heads = new Float64Array(nH * D);
    for (let h = 0; h < nH; h++) {
      const kvh = Math.floor(h / groups);
      const scores = new Float64Array(pos + 1);
      for (let s = 0; s <= pos; s++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[h * D + d]! * state.keys[s]![kvh * D + d]!;
        scores[s] = dot * scale;
      }
      const p = softmax(scores);
      for (let s = 0; s <= pos; s++) {
        for (let d = 0; d < D; d++) heads[h * D + d] = heads[h * D + d]! + p[s]! * state.values[s]![kvh * D + d]!;
      }
    }
    return linear(wo, heads, bias(n.o));
  });
}

/**
 * The sparse MoE block for one token x (post-attention-normed):
 *   probs = softmax(x Wr^T); top-k; if norm_topk_prob (always for Mixtral): weights /= their sum;
 *   out = sum_k weight_k * expert_k(x)  (+ sigmoid(x Wsg^T) * shared_expert(x) for Qwen2-MoE)
 */
function moe(spec: ModelSpec, w: WeightLookup, layer: number, x: Float64Array): { out: Float64Array; experts: number[] } {
  const H = spec.hiddenSize;
  const n = hfLayerNames(spec.family, layer);
  const probs = softmax(linear(need(w, n.router, spec.numExperts * H), x));
  const experts = topK(probs, spec.topK);
  const picked = experts.reduce((s, e) => s + probs[e]!, 0);
  const normalize = spec.family === 'mixtral' || spec.normTopKProb;
  const out = new Float64Array(H);
  for (const e of experts) {
    const weight = normalize ? probs[e]! / picked : probs[e]!;
    add(out, swiGlu(w, n.expert(e), spec.expertIntermediateSize, x), weight);
  }
  if (spec.sharedExpertIntermediateSize !== null) {
    const gate = sigmoid(linear(need(w, n.sharedExpertGate, H), x)[0]!);
    add(out, swiGlu(w, n.sharedExpert, spec.sharedExpertIntermediateSize, x), gate);
  }
  return { out, experts };
}

/** Logits at every position of `ids` and the router's top-k per layer and position. */
export function referenceForward(spec: ModelSpec, w: WeightLookup, ids: readonly number[]): ReferenceOutput {
  const { hiddenSize: H, vocabSize: V, rmsNormEps: eps } = spec;
  const embed = need(w, HF_EMBED, V * H);
  // (T) residual stream, each (H)
  const hidden = ids.map((id) => Float64Array.from(embed.subarray(id * H, (id + 1) * H)));
  const routerTopK: (number[][] | null)[] = [];
  for (let layer = 0; layer < spec.numLayers; layer++) {
    const n = hfLayerNames(spec.family, layer);
    const attnOut = attention(spec, w, layer, hidden.map((h) => rmsNorm(h, need(w, n.inputNorm, H), eps)));
    hidden.forEach((h, t) => add(h, attnOut[t]!));
    const sparse = spec.sparseLayers[layer];
    if (sparse === undefined) throw new Error(`reference: spec.sparseLayers has no layer ${layer}`);
    const routes: number[][] = [];
    for (const h of hidden) {
      const x = rmsNorm(h, need(w, n.postAttentionNorm, H), eps);
      if (sparse) {
        const { out, experts } = moe(spec, w, layer, x);
        routes.push(experts);
        add(h, out);
      } else {
        add(h, swiGlu(w, n.denseMlp, spec.denseIntermediateSize, x));
      }
    }
    routerTopK.push(sparse ? routes : null);
  }
  const head = spec.tieWordEmbeddings ? embed : need(w, HF_LM_HEAD, V * H);
  const logits = new Float64Array(ids.length * V);
  hidden.forEach((h, t) => logits.set(linear(head, rmsNorm(h, need(w, HF_FINAL_NORM, H), eps)), t * V));
  return { logits, routerTopK };
}

/** Index of the largest value; ties keep the lower index (torch.argmax). */
export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/** Greedy continuation of `prompt` by `steps` tokens, recomputing the whole sequence each step. */
export function referenceGreedy(spec: ModelSpec, w: WeightLookup, prompt: readonly number[], steps: number): number[] {
  const ids = [...prompt];
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    const { logits } = referenceForward(spec, w, ids);
    const next = argmax(logits.subarray((ids.length - 1) * spec.vocabSize));
    out.push(next);
    ids.push(next);
  }
  return out;
}
