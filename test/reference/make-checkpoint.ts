// Writes tiny random-weight Hugging Face checkpoints (config.json, model.safetensors, tokenizer files)
// for conformance tests of families without a transformers-made fixture. Weights are seeded, so a
// checkpoint is the same on every run: normal(0, 0.2) matrices so routing and attention are far from
// uniform, norm weights near 1.
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ModelFamily } from '../../src/model/hf-config.js';
import { FIXTURES_DIR } from '../helpers/paths.js';
import { HF_EMBED, HF_FINAL_NORM, HF_LM_HEAD, hfLayerNames, type MlpNames } from './reference-forward.js';
import { buildSafetensors } from '../helpers/safetensors-bytes.js';
import { seededRandom as uniformSource } from '../helpers/seeded-random.js';

export type CheckpointDType = 'F32' | 'BF16';

export interface CheckpointOptions {
  readonly family: ModelFamily;
  readonly dtype?: CheckpointDType;
  readonly tieWordEmbeddings?: boolean;
  readonly seed?: number;
  /** config.json keys to set on top of the family's tiny defaults (e.g. clip_qkv for OLMoE). */
  readonly config?: Readonly<Record<string, unknown>>;
}

export interface TinyCheckpoint extends AsyncDisposable {
  readonly dir: string;
  /** config.json as written */
  readonly config: Readonly<Record<string, unknown>>;
  /** Every tensor as written (after bf16 rounding for BF16 checkpoints), by name. */
  readonly tensors: ReadonlyMap<string, { readonly shape: readonly number[]; readonly values: Float32Array }>;
}

const ROPE = { rope_theta: 1_000_000, rope_type: 'default' };

/** Tiny configs in Hugging Face layout. Qwen3-MoE's explicit head_dim makes heads * head_dim (128) != hidden (64). */
const TINY_CONFIGS: Readonly<Record<ModelFamily, Record<string, unknown>>> = {
  qwen3_moe: {
    architectures: ['Qwen3MoeForCausalLM'],
    model_type: 'qwen3_moe',
    hidden_size: 64,
    num_hidden_layers: 3,
    // Layer 1 is a dense MLP of intermediate_size; layers 0 and 2 are sparse.
    mlp_only_layers: [1],
    decoder_sparse_step: 1,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 32,
    num_experts: 8,
    num_experts_per_tok: 2,
    moe_intermediate_size: 48,
    intermediate_size: 96,
    norm_topk_prob: true,
    attention_bias: false,
    hidden_act: 'silu',
    rms_norm_eps: 1e-6,
    rope_parameters: ROPE,
    max_position_embeddings: 256,
    vocab_size: 512,
    bos_token_id: 0,
    eos_token_id: 0,
  },
  mixtral: {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    hidden_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: null,
    num_local_experts: 8,
    num_experts_per_tok: 2,
    intermediate_size: 96,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_parameters: ROPE,
    max_position_embeddings: 256,
    vocab_size: 512,
    bos_token_id: 0,
    eos_token_id: 0,
  },
  qwen2_moe: {
    architectures: ['Qwen2MoeForCausalLM'],
    model_type: 'qwen2_moe',
    hidden_size: 64,
    num_hidden_layers: 3,
    mlp_only_layers: [1],
    decoder_sparse_step: 1,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    num_experts: 8,
    num_experts_per_tok: 2,
    moe_intermediate_size: 48,
    shared_expert_intermediate_size: 80,
    intermediate_size: 96,
    norm_topk_prob: false,
    qkv_bias: true,
    hidden_act: 'silu',
    rms_norm_eps: 1e-6,
    rope_parameters: ROPE,
    max_position_embeddings: 256,
    vocab_size: 512,
    bos_token_id: 0,
    eos_token_id: 0,
  },
  olmoe: {
    architectures: ['OlmoeForCausalLM'],
    model_type: 'olmoe',
    hidden_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    num_experts: 8,
    num_experts_per_tok: 2,
    intermediate_size: 48,
    norm_topk_prob: false,
    clip_qkv: null,
    attention_bias: false,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_parameters: ROPE,
    max_position_embeddings: 256,
    vocab_size: 512,
    bos_token_id: 0,
    eos_token_id: 0,
  },
};


/** Standard normal samples by Box-Muller. */
function normalSource(seed: number): () => number {
  const uniform = uniformSource(seed);
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

/** float32 -> bf16 bits, round to nearest even (what torch's .to(torch.bfloat16) does). */
function toBf16Bits(value: number): number {
  const bits = new Uint32Array(new Float32Array([value]).buffer)[0]!;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

const num = (config: Readonly<Record<string, unknown>>, key: string): number => {
  const v = config[key];
  if (typeof v !== 'number') throw new Error(`tiny config: ${key} is not a number`);
  return v;
};

interface TensorPlan {
  readonly name: string;
  readonly shape: readonly number[];
  readonly kind: 'matrix' | 'norm';
}

/** The tensors a Hugging Face checkpoint of this config holds, in a fixed order. */
function planTensors(family: ModelFamily, c: Readonly<Record<string, unknown>>): TensorPlan[] {
  const H = num(c, 'hidden_size');
  const nH = num(c, 'num_attention_heads');
  const nKv = num(c, 'num_key_value_heads');
  const D = typeof c['head_dim'] === 'number' ? c['head_dim'] : H / nH;
  const V = num(c, 'vocab_size');
  const E = family === 'mixtral' ? num(c, 'num_local_experts') : num(c, 'num_experts');
  const expertI = family === 'mixtral' || family === 'olmoe' ? num(c, 'intermediate_size') : num(c, 'moe_intermediate_size');
  const mlpOnly = Array.isArray(c['mlp_only_layers']) ? (c['mlp_only_layers'] as unknown[]) : [];
  const step = typeof c['decoder_sparse_step'] === 'number' ? c['decoder_sparse_step'] : 1;
  const qkvBias = c['qkv_bias'] === true || c['attention_bias'] === true;

  const plan: TensorPlan[] = [{ name: HF_EMBED, shape: [V, H], kind: 'matrix' }];
  const matrix = (name: string, ...shape: number[]) => plan.push({ name, shape, kind: 'matrix' });
  const norm = (name: string, size: number) => plan.push({ name, shape: [size], kind: 'norm' });
  const mlp = (names: MlpNames, I: number) => {
    matrix(names.gate, I, H);
    matrix(names.up, I, H);
    matrix(names.down, H, I);
  };
  for (let layer = 0; layer < num(c, 'num_hidden_layers'); layer++) {
    const n = hfLayerNames(family, layer);
    norm(n.inputNorm, H);
    matrix(`${n.q}.weight`, nH * D, H);
    matrix(`${n.k}.weight`, nKv * D, H);
    matrix(`${n.v}.weight`, nKv * D, H);
    matrix(`${n.o}.weight`, H, nH * D);
    if (qkvBias) {
      matrix(`${n.q}.bias`, nH * D);
      matrix(`${n.k}.bias`, nKv * D);
      matrix(`${n.v}.bias`, nKv * D);
    }
    // Qwen2-MoE's o_proj has no bias; OLMoE and Qwen3-MoE put attention_bias on all four projections.
    if (c['attention_bias'] === true) matrix(`${n.o}.bias`, H);
    if (family === 'qwen3_moe') {
      norm(n.qNorm, D);
      norm(n.kNorm, D);
    } else if (family === 'olmoe') {
      norm(n.qNorm, nH * D);
      norm(n.kNorm, nKv * D);
    }
    norm(n.postAttentionNorm, H);
    const sparse = !mlpOnly.includes(layer) && (layer + 1) % step === 0;
    if (sparse) {
      matrix(n.router, E, H);
      for (let e = 0; e < E; e++) mlp(n.expert(e), expertI);
      if (family === 'qwen2_moe') {
        mlp(n.sharedExpert, num(c, 'shared_expert_intermediate_size'));
        matrix(n.sharedExpertGate, 1, H);
      }
    } else {
      mlp(n.denseMlp, num(c, 'intermediate_size'));
    }
  }
  norm(HF_FINAL_NORM, H);
  if (c['tie_word_embeddings'] !== true) matrix(HF_LM_HEAD, V, H);
  return plan;
}

/** Writes a tiny random checkpoint to a fresh temporary directory; dispose it to delete the directory. */
export async function makeCheckpoint(options: CheckpointOptions): Promise<TinyCheckpoint> {
  const { family, dtype = 'F32', tieWordEmbeddings = false, seed = 1 } = options;
  const config: Record<string, unknown> = {
    ...TINY_CONFIGS[family],
    tie_word_embeddings: tieWordEmbeddings,
    torch_dtype: dtype === 'BF16' ? 'bfloat16' : 'float32',
    ...options.config,
  };
  const normal = normalSource(seed);
  const tensors = new Map<string, { shape: readonly number[]; values: Float32Array }>();
  const files: { name: string; shape: readonly number[]; data: Uint8Array; dtype: CheckpointDType }[] = [];
  for (const { name, shape, kind } of planTensors(family, config)) {
    const count = shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = kind === 'norm' ? 1 + 0.1 * normal() : 0.2 * normal();
    let data: Uint8Array;
    if (dtype === 'BF16') {
      const bits = Uint16Array.from(values, toBf16Bits);
      // What the file holds, widened back: the values every reader should see.
      values.set(new Float32Array(Uint32Array.from(bits, (b) => b << 16).buffer));
      data = new Uint8Array(bits.buffer);
    } else {
      data = new Uint8Array(values.slice().buffer);
    }
    tensors.set(name, { shape, values });
    files.push({ name, shape, data, dtype });
  }

  const dir = await mkdtemp(path.join(tmpdir(), `moe-serve-${family}-`));
  try {
    await writeFile(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
    await writeFile(path.join(dir, 'model.safetensors'), buildSafetensors(files));
    const tokenizerDir = path.join(FIXTURES_DIR, 'mixtral');
    for (const file of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(path.join(tokenizerDir, file), path.join(dir, file));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    config,
    tensors,
    async [Symbol.asyncDispose]() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}
