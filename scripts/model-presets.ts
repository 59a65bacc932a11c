// Shapes of the synthetic checkpoints `npm run make-model` writes: real MoE models' sizes, so that the
// expert store, the disk tier and the benchmarks meet real byte counts, plus a small one for tests.

export interface ModelPreset {
  readonly hiddenSize: number;
  readonly numExperts: number;
  readonly expertIntermediateSize: number;
  readonly topK: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly numLayers: number;
  readonly ropeTheta: number;
  readonly rmsNormEps: number;
  readonly maxPositions: number;
}

/** Every preset shares the embedded model's tokenizer, hence its vocabulary. */
export const VOCAB_SIZE = 8192;

export const MODEL_PRESETS = {
  'qwen3-30b-a3b': {
    hiddenSize: 2048,
    numExperts: 128,
    expertIntermediateSize: 768,
    topK: 8,
    numHeads: 32,
    numKvHeads: 4,
    headDim: 128,
    numLayers: 48,
    ropeTheta: 1e6,
    rmsNormEps: 1e-6,
    maxPositions: 4096,
  },
  'mixtral-8x7b': {
    hiddenSize: 4096,
    numExperts: 8,
    expertIntermediateSize: 14336,
    topK: 2,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    numLayers: 32,
    ropeTheta: 1e6,
    rmsNormEps: 1e-5,
    maxPositions: 4096,
  },
  /** A few MB, for tests and CI. */
  small: {
    hiddenSize: 256,
    numExperts: 32,
    expertIntermediateSize: 128,
    topK: 4,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 64,
    numLayers: 4,
    ropeTheta: 1e6,
    rmsNormEps: 1e-6,
    maxPositions: 4096,
  },
} as const satisfies Record<string, ModelPreset>;

export type PresetName = keyof typeof MODEL_PRESETS;

export const PRESET_NAMES = Object.keys(MODEL_PRESETS) as PresetName[];

/** The Hugging Face config.json of a preset: Mixtral's architecture, the key set of models/tiny-moe's plus head_dim. */
export function presetConfigJson(p: ModelPreset): Record<string, unknown> {
  return {
    architectures: ['MixtralForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 0,
    dtype: 'bfloat16',
    eos_token_id: 0,
    head_dim: p.headDim,
    hidden_act: 'silu',
    hidden_size: p.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: p.expertIntermediateSize,
    max_position_embeddings: p.maxPositions,
    model_type: 'mixtral',
    num_attention_heads: p.numHeads,
    num_experts_per_tok: p.topK,
    num_hidden_layers: p.numLayers,
    num_key_value_heads: p.numKvHeads,
    num_local_experts: p.numExperts,
    output_router_logits: false,
    pad_token_id: null,
    rms_norm_eps: p.rmsNormEps,
    rope_parameters: { rope_theta: p.ropeTheta, rope_type: 'default' },
    router_aux_loss_coef: 0.02,
    router_jitter_noise: 0.0,
    sliding_window: null,
    tie_word_embeddings: false,
    transformers_version: '5.17.0',
    use_cache: true,
    vocab_size: VOCAB_SIZE,
  };
}
