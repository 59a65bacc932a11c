// Checkpoint tensor names per family: the only place that knows how Hugging Face names weights.
import type { ModelFamily } from './hf-config.js';

export interface ExpertTensorNames {
  /** gate projection (Mixtral w1), [intermediate, hidden] */
  readonly gate: string;
  /** up projection (Mixtral w3), [intermediate, hidden] */
  readonly up: string;
  /** down projection (Mixtral w2), [hidden, intermediate] */
  readonly down: string;
}

export interface LayerTensorNames {
  readonly inputNorm: string;
  readonly postAttentionNorm: string;
  readonly q: string;
  readonly k: string;
  readonly v: string;
  readonly o: string;
  readonly qBias: string;
  readonly kBias: string;
  readonly vBias: string;
  readonly oBias: string;
  readonly qNorm: string;
  readonly kNorm: string;
  readonly router: string;
  readonly sharedExpert: ExpertTensorNames;
  readonly sharedExpertGate: string;
  readonly denseMlp: ExpertTensorNames;
}

const mlpNames = (prefix: string): ExpertTensorNames => ({
  gate: `${prefix}.gate_proj.weight`,
  up: `${prefix}.up_proj.weight`,
  down: `${prefix}.down_proj.weight`,
});

export function layerTensorNames(family: ModelFamily, layer: number): LayerTensorNames {
  const p = `model.layers.${layer}`;
  const moe = family === 'mixtral' ? `${p}.block_sparse_moe` : `${p}.mlp`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    postAttentionNorm: `${p}.post_attention_layernorm.weight`,
    q: `${p}.self_attn.q_proj.weight`,
    k: `${p}.self_attn.k_proj.weight`,
    v: `${p}.self_attn.v_proj.weight`,
    o: `${p}.self_attn.o_proj.weight`,
    qBias: `${p}.self_attn.q_proj.bias`,
    kBias: `${p}.self_attn.k_proj.bias`,
    vBias: `${p}.self_attn.v_proj.bias`,
    oBias: `${p}.self_attn.o_proj.bias`,
    qNorm: `${p}.self_attn.q_norm.weight`,
    kNorm: `${p}.self_attn.k_norm.weight`,
    router: `${moe}.gate.weight`,
    sharedExpert: mlpNames(`${p}.mlp.shared_expert`),
    sharedExpertGate: `${p}.mlp.shared_expert_gate.weight`,
    denseMlp: mlpNames(`${p}.mlp`),
  };
}

export function expertTensorNames(family: ModelFamily, layer: number, expert: number): ExpertTensorNames {
  if (family === 'mixtral') {
    const p = `model.layers.${layer}.block_sparse_moe.experts.${expert}`;
    return { gate: `${p}.w1.weight`, up: `${p}.w3.weight`, down: `${p}.w2.weight` };
  }
  return mlpNames(`model.layers.${layer}.mlp.experts.${expert}`);
}

export const EMBED_TOKENS = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

/**
 * Module-name patterns (compressed-tensors' "re:" targets) of each weight class, for a quantized
 * checkpoint's quantization_config: the routed experts, and the other matrices that follow --weight-dtype.
 */
export function moduleTargets(family: ModelFamily): { readonly experts: readonly string[]; readonly attention: readonly string[]; readonly weights: readonly string[] } {
  const experts = family === 'mixtral' ? ['re:.*block_sparse_moe\\.experts\\.\\d+\\.w[123]$'] : ['re:.*mlp\\.experts\\.\\d+\\.(gate|up|down)_proj$'];
  return {
    experts,
    attention: ['re:.*self_attn\\.[qkvo]_proj$'],
    weights: ['re:.*mlp\\.(shared_expert\\.)?(gate|up|down)_proj$', 'lm_head'],
  };
}
