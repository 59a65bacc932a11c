// The one place that reads Hugging Face config.json keys: everything else sees a ModelSpec.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelConfigError, UnsupportedModelError } from './errors.js';
import type { QuantBits, QuantScheme } from './quantization.js';

export const SUPPORTED_FAMILIES = ['mixtral', 'qwen2_moe', 'olmoe', 'qwen3_moe'] as const;
export type ModelFamily = (typeof SUPPORTED_FAMILIES)[number];

/** Where query/key RMSNorms sit: none, over the whole q/k projection (OLMoE), or per head (Qwen3). */
export type QkNorm = 'none' | 'projection' | 'head';

/** A normalized description of an MoE decoder, independent of the checkpoint's naming. */
export interface ModelSpec {
  readonly family: ModelFamily;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly maxPositions: number;
  readonly numExperts: number;
  readonly topK: number;
  readonly expertIntermediateSize: number;
  /** Whether the top-k routing weights are renormalized to sum to one. */
  readonly normTopKProb: boolean;
  /** Qwen2-MoE's always-on expert, scaled by a sigmoid gate; null where the family has none. */
  readonly sharedExpertIntermediateSize: number | null;
  /** Intermediate size of the dense MLP used by layers that are not sparse. */
  readonly denseIntermediateSize: number;
  /** Per layer: true for an MoE layer, false for a dense MLP layer. */
  readonly sparseLayers: readonly boolean[];
  readonly qkNorm: QkNorm;
  /** OLMoE's optional clamp of q, k and v to [-clip, clip]. */
  readonly clipQkv: number | null;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** How the checkpoint's weights are quantized (config.json's quantization_config), or null. */
  readonly quantization: CheckpointQuantization | null;
}

/** The model layers with routed experts, ascending: the order a forward pass visits them in. */
export function sparseLayerIndices(spec: Pick<ModelSpec, 'sparseLayers'>): number[] {
  return spec.sparseLayers.flatMap((sparse, layer) => (sparse ? [layer] : []));
}

/**
 * A checkpoint in compressed-tensors' pack-quantized format (compressed-tensors.ts): blockwise int4/int8
 * weights, float activations. Which tensors are quantized is read off the tensors themselves
 * (`*.weight_packed`); the bit widths listed here settle the rare shapes that do not tell.
 */
export interface CheckpointQuantization {
  readonly method: 'compressed-tensors';
  readonly format: 'pack-quantized';
  readonly bits: readonly QuantBits[];
  readonly groupSizes: readonly number[];
}

const tokenIds = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish();

const ropeParameters = z
  .object({ rope_theta: z.number().positive().optional(), rope_type: z.string().optional() })
  .passthrough();

const quantArgs = z
  .object({
    num_bits: z.number().int(),
    type: z.string().default('int'),
    symmetric: z.boolean().default(true),
    strategy: z.string().nullish(),
    group_size: z.number().int().nullish(),
    dynamic: z.union([z.boolean(), z.string()]).default(false),
  })
  .passthrough();

const quantizationConfig = z
  .object({
    quant_method: z.string(),
    format: z.string().nullish(),
    config_groups: z
      .record(z.string(), z.object({ targets: z.array(z.string()), weights: quantArgs.nullish(), input_activations: z.unknown().nullish(), output_activations: z.unknown().nullish() }).passthrough())
      .default({}),
    ignore: z.array(z.string()).default([]),
  })
  .passthrough();

const common = z.object({
  hidden_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().positive(),
  num_attention_heads: z.number().int().positive(),
  num_key_value_heads: z.number().int().positive().nullish(),
  head_dim: z.number().int().positive().nullish(),
  vocab_size: z.number().int().positive(),
  rms_norm_eps: z.number().positive(),
  rope_theta: z.number().positive().nullish(),
  rope_parameters: ropeParameters.nullish(),
  rope_scaling: ropeParameters.nullish(),
  max_position_embeddings: z.number().int().positive(),
  num_experts_per_tok: z.number().int().positive(),
  hidden_act: z.string().default('silu'),
  tie_word_embeddings: z.boolean().default(false),
  bos_token_id: z.number().int().nonnegative().nullish(),
  eos_token_id: tokenIds,
  quantization_config: z.unknown().nullish(),
});

const mixtral = common.extend({
  model_type: z.literal('mixtral'),
  num_local_experts: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
});

const qwen2Moe = common.extend({
  model_type: z.literal('qwen2_moe'),
  num_experts: z.number().int().positive(),
  moe_intermediate_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  shared_expert_intermediate_size: z.number().int().positive(),
  norm_topk_prob: z.boolean().default(false),
  decoder_sparse_step: z.number().int().positive().default(1),
  mlp_only_layers: z.array(z.number().int().nonnegative()).default([]),
});

const olmoe = common.extend({
  model_type: z.literal('olmoe'),
  num_experts: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  norm_topk_prob: z.boolean().default(false),
  clip_qkv: z.number().positive().nullish(),
});

const qwen3Moe = common.extend({
  model_type: z.literal('qwen3_moe'),
  // transformers 5 stores the expert count under this name; older configs say num_experts (KEY_ALIASES).
  num_local_experts: z.number().int().positive(),
  moe_intermediate_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  // transformers' Qwen3MoeConfig defaults to false; published Qwen3-MoE configs set it to true.
  norm_topk_prob: z.boolean().default(false),
  decoder_sparse_step: z.number().int().positive().default(1),
  mlp_only_layers: z.array(z.number().int().nonnegative()).default([]),
});

/**
 * Other names transformers accepts for a key read above: each config class's `attribute_map` (alias ->
 * canonical), copied from huggingface/transformers main (008e574), src/transformers/models/<model_type>/
 * configuration_<model_type>.py. PreTrainedConfig's own attribute_map (configuration_utils.py) is empty.
 * The schemas read the canonical name, the one transformers stores and writes back to config.json.
 */
const KEY_ALIASES: Readonly<Record<ModelFamily, Readonly<Record<string, string>>>> = {
  // MixtralConfig.attribute_map
  mixtral: { num_experts: 'num_local_experts' },
  // Qwen2MoeConfig declares no attribute_map: num_local_experts is not a qwen2_moe key.
  qwen2_moe: {},
  // OlmoeConfig.attribute_map
  olmoe: { num_local_experts: 'num_experts' },
  // Qwen3MoeConfig.attribute_map (new in transformers 5): its field is still called num_experts, but setting
  // it sets num_local_experts, so transformers 5 saves num_local_experts while older configs say num_experts.
  qwen3_moe: { num_experts: 'num_local_experts' },
};

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Renames each alias of `family` to its canonical key. A config that sets both to different values is
 * rejected rather than resolved: transformers keeps whichever of the two is not a dataclass field of the
 * class (it is set last, in __post_init__; JSON order plays no part), so the winner differs between
 * families (Mixtral: the alias; Qwen3-MoE: the canonical name) and between transformers versions (4.x
 * Qwen3-MoE read num_experts and ignored num_local_experts). Guessing would load a model with the wrong
 * number of experts that transformers itself may disagree on.
 */
function withCanonicalKeys(raw: Readonly<Record<string, unknown>>, family: ModelFamily, source: string): Record<string, unknown> {
  const out: Record<string, unknown> = { ...raw };
  const conflicts: string[] = [];
  for (const [alias, canonical] of Object.entries(KEY_ALIASES[family])) {
    if (!Object.hasOwn(out, alias)) continue;
    const aliasValue = out[alias];
    delete out[alias];
    if (!Object.hasOwn(out, canonical)) {
      out[canonical] = aliasValue;
    } else if (!sameJson(out[canonical], aliasValue)) {
      conflicts.push(
        `${alias} (${JSON.stringify(aliasValue)}) and ${canonical} (${JSON.stringify(out[canonical])}) disagree; ` +
          `transformers reads both as ${canonical} for model_type '${family}': keep one of them`,
      );
    }
  }
  if (conflicts.length > 0) throw new ModelConfigError(source, conflicts);
  return out;
}

/** " (or its alias X)" after a canonical key's name in an error, so a config written with the alias is understood. */
function aliasNote(family: ModelFamily, key: string): string {
  const aliases = Object.entries(KEY_ALIASES[family]).filter(([, canonical]) => canonical === key).map(([alias]) => alias);
  return aliases.length === 0 ? '' : ` (or its alias ${aliases.join(', ')})`;
}

const hfConfig = z.discriminatedUnion('model_type', [mixtral, qwen2Moe, olmoe, qwen3Moe]);
type HfConfig = z.infer<typeof hfConfig>;
type CommonConfig = z.infer<typeof common>;

function ropeTheta(c: CommonConfig): number {
  // transformers 5 moved rope_theta into rope_parameters; older checkpoints keep it at the top level.
  const theta = c.rope_parameters?.rope_theta ?? c.rope_scaling?.rope_theta ?? c.rope_theta ?? 10000;
  const ropeType = c.rope_parameters?.rope_type ?? c.rope_scaling?.rope_type ?? 'default';
  if (ropeType !== 'default') {
    throw new UnsupportedModelError(`rope type '${ropeType}'`, ['default']);
  }
  return theta;
}

/** What moe-serve can compute from config.json's quantization_config, or an error naming what it cannot. */
function checkpointQuantization(raw: unknown, source: string): CheckpointQuantization | null {
  if (raw === null || raw === undefined) return null;
  const parsed = quantizationConfig.safeParse(raw);
  if (!parsed.success) throw new ModelConfigError(source, parsed.error.issues.map((i) => `quantization_config.${i.path.join('.')}: ${i.message}`));
  const q = parsed.data;
  const supported = "compressed-tensors' pack-quantized int4/int8 group-wise weights (what `moe-serve quantize` writes)";
  if (q.quant_method !== 'compressed-tensors') throw new UnsupportedModelError(`quantization method '${q.quant_method}'`, [supported]);
  if (q.format !== 'pack-quantized') throw new UnsupportedModelError(`compressed-tensors format '${String(q.format)}'`, [supported]);
  const bits = new Set<QuantBits>();
  const groupSizes = new Set<number>();
  for (const [name, group] of Object.entries(q.config_groups)) {
    const w = group.weights;
    if (group.input_activations != null || group.output_activations != null) {
      throw new UnsupportedModelError(`quantized activations (config_groups.${name})`, ['weight-only quantization (activations stay float)']);
    }
    if (!w) continue;
    if (w.type !== 'int' || (w.num_bits !== 4 && w.num_bits !== 8)) throw new UnsupportedModelError(`${w.type}${w.num_bits} weights (config_groups.${name})`, ['int4', 'int8']);
    if (w.strategy !== 'group') throw new UnsupportedModelError(`quantization strategy '${String(w.strategy)}' (config_groups.${name})`, ['group']);
    bits.add(w.num_bits);
    if (w.group_size != null) groupSizes.add(w.group_size);
  }
  return { method: 'compressed-tensors', format: 'pack-quantized', bits: [...bits].sort(), groupSizes: [...groupSizes].sort((a, b) => a - b) };
}

/** The quantization_config that declares a checkpoint `moe-serve quantize` wrote: one group per weight class. */
export function quantizationConfigJson(classes: readonly { readonly targets: readonly string[]; readonly scheme: QuantScheme }[]): Record<string, unknown> {
  return {
    quant_method: 'compressed-tensors',
    format: 'pack-quantized',
    quantization_status: 'compressed',
    config_groups: Object.fromEntries(
      classes.map((c, i) => [
        `group_${i}`,
        {
          targets: c.targets,
          weights: {
            num_bits: c.scheme.bits,
            type: 'int',
            symmetric: !c.scheme.zeroPoints,
            strategy: 'group',
            group_size: c.scheme.blockSize,
            dynamic: false,
            actorder: null,
            observer: 'minmax',
          },
          input_activations: null,
          output_activations: null,
        },
      ]),
    ),
    ignore: [],
    kv_cache_scheme: null,
  };
}

function asList(ids: number | number[] | null | undefined): number[] {
  if (ids === null || ids === undefined) return [];
  return Array.isArray(ids) ? ids : [ids];
}

/** Qwen's rule: layer i is sparse unless listed in mlp_only_layers, and only every Nth layer is sparse. */
function qwenSparseLayers(numLayers: number, step: number, mlpOnly: readonly number[]): boolean[] {
  return Array.from({ length: numLayers }, (_, i) => !mlpOnly.includes(i) && (i + 1) % step === 0);
}

function toSpec(c: HfConfig, source: string): ModelSpec {
  if (c.hidden_act !== 'silu') throw new UnsupportedModelError(`hidden_act '${c.hidden_act}'`, ['silu']);
  const base = {
    hiddenSize: c.hidden_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads: c.num_key_value_heads ?? c.num_attention_heads,
    headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta: ropeTheta(c),
    maxPositions: c.max_position_embeddings,
    topK: c.num_experts_per_tok,
    tieWordEmbeddings: c.tie_word_embeddings,
    bosTokenId: c.bos_token_id ?? null,
    eosTokenIds: asList(c.eos_token_id),
    quantization: checkpointQuantization(c.quantization_config, source),
  };
  const allSparse = Array.from({ length: c.num_hidden_layers }, () => true);
  switch (c.model_type) {
    case 'mixtral':
      return {
        ...base,
        family: 'mixtral',
        numExperts: c.num_local_experts,
        expertIntermediateSize: c.intermediate_size,
        normTopKProb: true,
        sharedExpertIntermediateSize: null,
        denseIntermediateSize: c.intermediate_size,
        sparseLayers: allSparse,
        qkNorm: 'none',
        clipQkv: null,
      };
    case 'qwen2_moe':
      return {
        ...base,
        family: 'qwen2_moe',
        numExperts: c.num_experts,
        expertIntermediateSize: c.moe_intermediate_size,
        normTopKProb: c.norm_topk_prob,
        sharedExpertIntermediateSize: c.shared_expert_intermediate_size,
        denseIntermediateSize: c.intermediate_size,
        sparseLayers: qwenSparseLayers(c.num_hidden_layers, c.decoder_sparse_step, c.mlp_only_layers),
        qkNorm: 'none',
        clipQkv: null,
      };
    case 'olmoe':
      return {
        ...base,
        family: 'olmoe',
        numExperts: c.num_experts,
        expertIntermediateSize: c.intermediate_size,
        normTopKProb: c.norm_topk_prob,
        sharedExpertIntermediateSize: null,
        denseIntermediateSize: c.intermediate_size,
        sparseLayers: allSparse,
        qkNorm: 'projection',
        clipQkv: c.clip_qkv ?? null,
      };
    case 'qwen3_moe':
      return {
        ...base,
        family: 'qwen3_moe',
        numExperts: c.num_local_experts,
        expertIntermediateSize: c.moe_intermediate_size,
        normTopKProb: c.norm_topk_prob,
        sharedExpertIntermediateSize: null,
        denseIntermediateSize: c.intermediate_size,
        sparseLayers: qwenSparseLayers(c.num_hidden_layers, c.decoder_sparse_step, c.mlp_only_layers),
        qkNorm: 'head',
        clipQkv: null,
      };
  }
}

function isModelFamily(value: unknown): value is ModelFamily {
  return typeof value === 'string' && (SUPPORTED_FAMILIES as readonly string[]).includes(value);
}

/** Parses a config.json object (already JSON-decoded) into a ModelSpec. */
export function parseModelConfig(raw: unknown, source: string): ModelSpec {
  const modelType = (raw as { model_type?: unknown } | null)?.model_type;
  if (!isModelFamily(modelType)) {
    throw new UnsupportedModelError(`model_type '${String(modelType)}' in ${source}`, SUPPORTED_FAMILIES);
  }
  // Having a model_type, raw is a JSON object.
  const parsed = hfConfig.safeParse(withCanonicalKeys(raw as Record<string, unknown>, modelType, source));
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => {
      const key = i.path.join('.');
      const note = i.path.length === 1 && typeof i.path[0] === 'string' ? aliasNote(modelType, i.path[0]) : '';
      return `${key || '(root)'}${note}: ${i.message}`;
    });
    throw new ModelConfigError(source, issues);
  }
  const spec = toSpec(parsed.data, source);
  if (spec.numHeads % spec.numKvHeads !== 0) {
    throw new ModelConfigError(source, [`num_attention_heads ${spec.numHeads} is not a multiple of num_key_value_heads ${spec.numKvHeads}`]);
  }
  if (spec.topK > spec.numExperts) {
    throw new ModelConfigError(source, [`num_experts_per_tok ${spec.topK} exceeds the ${spec.numExperts} experts`]);
  }
  return spec;
}

export async function loadModelConfig(dir: string): Promise<ModelSpec> {
  const path = join(dir, 'config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ModelConfigError(path, [`cannot read it: ${(err as Error).message}`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ModelConfigError(path, [`not valid JSON: ${(err as Error).message}`]);
  }
  return parseModelConfig(raw, path);
}

/** What generation_config.json says about ending and sampling; every field is optional there. */
export interface GenerationDefaults {
  readonly eosTokenIds: readonly number[] | null;
  /** transformers samples only when do_sample is true; otherwise it decodes greedily. */
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
}

const generationConfig = z
  .object({
    eos_token_id: tokenIds,
    do_sample: z.boolean().default(false),
    temperature: z.number().nonnegative().nullish(),
    top_p: z.number().gt(0).lte(1).nullish(),
    top_k: z.number().int().nonnegative().nullish(),
  })
  .passthrough();

export async function loadGenerationDefaults(dir: string): Promise<GenerationDefaults> {
  const path = join(dir, 'generation_config.json');
  let raw: unknown = {};
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new ModelConfigError(path, [(err as Error).message]);
  }
  const parsed = generationConfig.safeParse(raw);
  if (!parsed.success) {
    throw new ModelConfigError(path, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));
  }
  const g = parsed.data;
  return {
    eosTokenIds: g.eos_token_id == null ? null : asList(g.eos_token_id),
    temperature: g.do_sample ? (g.temperature ?? 1) : 0,
    // transformers' own defaults when sampling: top_p 1.0, top_k 50
    topP: g.top_p ?? 1,
    topK: g.do_sample ? (g.top_k ?? 50) : 0,
  };
}
