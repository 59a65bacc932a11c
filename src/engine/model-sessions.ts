// The onnxruntime sessions a model runs: the attention block of every layer, the LM head, and (GPU
// providers) the routed-experts block per slot count, built on first use. On the CPU provider each layer's
// session has that layer's weights baked in (prepacked initializers), so there is one per layer; on GPU
// providers weights are inputs and one session serves every layer of the same variant.
import { ATTN, attentionBlockKey, buildAttentionBlock, type AttentionBlockVariant } from '../graphs/attention-block.js';
import { KV_BATCH } from '../graphs/kv-batch.js';
import { buildLmHead, type LmHeadVariant } from '../graphs/lm-head.js';
import { buildMoeBlock, MOE, type ExpertForms, type ExpertsShape } from '../graphs/moe-block.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { GraphSession, Runtime } from '../runtime/onnx-runtime.js';
import type { BlockWeights } from './resident-weights.js';

/** The routed-experts graph with weights as inputs, one session per slot count and expert form, built on first use. */
export class MoeBlockSessions {
  private readonly moe = new Map<string, Promise<GraphSession>>();

  constructor(
    private readonly runtime: Runtime,
    private readonly hiddenSize: number,
  ) {}

  /** The routed-experts block with `slots` expert slots, for experts of the given forms. */
  forSlots(slots: number, forms: ExpertForms): Promise<GraphSession> {
    const key = JSON.stringify([slots, forms]);
    let s = this.moe.get(key);
    if (!s) {
      s = this.runtime.createSession(`moe_block_${slots}`, buildMoeBlock({ hiddenSize: this.hiddenSize, forms, slots }), [MOE.hidden], { kind: 'moe_block' });
      this.moe.set(key, s);
    }
    return s;
  }

  async release(): Promise<void> {
    await Promise.all([...this.moe.values()].map(async (s) => (await s).release()));
  }
}

/** What a GPU provider's attention run also does (attentionShapedFor); the empty shape is the plain block. */
export interface AttentionShape {
  readonly kvBatch?: number;
  readonly experts?: ExpertsShape;
}

export class ModelSessions {
  readonly moeBlocks: MoeBlockSessions;
  /** GPU providers' fused attention blocks by variant and shape (attentionShapedFor). */
  private readonly shaped = new Map<string, Promise<GraphSession>>();

  private constructor(
    private readonly runtime: Runtime,
    spec: ModelSpec,
    private readonly variants: readonly AttentionBlockVariant[],
    private readonly attention: readonly GraphSession[],
    readonly lmHead: GraphSession,
    private readonly headVariant: LmHeadVariant,
  ) {
    this.moeBlocks = new MoeBlockSessions(runtime, spec.hiddenSize);
  }

  static async create(runtime: Runtime, spec: ModelSpec, layers: readonly BlockWeights<AttentionBlockVariant>[], head: BlockWeights<LmHeadVariant>): Promise<ModelSessions> {
    const bake = !runtime.onGpu;
    const byVariant = new Map<string, GraphSession>();
    const attention: GraphSession[] = [];
    for (const [l, layer] of layers.entries()) {
      const v = layer.variant;
      // Router and lookahead logits are not listed: they always come back to the host for routing in JS.
      const outputs = [ATTN.presentKey, ATTN.presentValue, ...hiddenOutputs(v)];
      if (bake) {
        // On the CPU every output is a host array; the cache's new rows come back, not the cache (kv-cache.ts).
        attention.push(await runtime.createSession(`attention_block_${l}`, buildAttentionBlock(v, 'new_rows', { constants: layer.tensors }), [], { kind: 'attention' }));
        continue;
      }
      const key = attentionBlockKey(v);
      let s = byVariant.get(key);
      if (!s) byVariant.set(key, (s = await runtime.createSession(`attention_block_${v.mlp}`, buildAttentionBlock(v, 'present', { rowRange: true }), outputs, { kind: 'attention' })));
      attention.push(s);
    }
    // Logits come back to the host: the sampler runs in JS.
    const lmHead = await runtime.createSession('lm_head', buildLmHead(head.variant, bake ? head.tensors : undefined), [], { kind: 'lm_head' });
    return new ModelSessions(runtime, spec, layers.map((l) => l.variant), attention, lmHead, head.variant);
  }

  /** Layer `layer`'s attention block. */
  attentionFor(layer: number): GraphSession {
    const s = this.attention[layer];
    if (!s) throw new RangeError(`no attention session for layer ${layer}`);
    return s;
  }

  /**
   * GPU providers: layer `layer`'s attention block in one of its run-saving shapes, built on first use:
   * for `kvBatch` sequences decoding one token each, packing their KV caches and cutting them back out in
   * the same run (kv-batch.ts), and/or starting with the previous sparse layer's routed `experts`. One
   * session per variant and shape, as the pack has inputs per sequence and the experts per slot.
   */
  attentionShapedFor(layer: number, shape: AttentionShape): Promise<GraphSession> {
    const v = this.variants[layer];
    if (!v) throw new RangeError(`no attention variant for layer ${layer}`);
    const key = JSON.stringify([shape.kvBatch ?? 0, shape.experts ?? null, attentionBlockKey(v)]);
    let s = this.shaped.get(key);
    if (!s) {
      const B = shape.kvBatch;
      const kv = B === undefined ? [ATTN.presentKey, ATTN.presentValue] : Array.from({ length: B }, (_, b) => [KV_BATCH.key(b), KV_BATCH.value(b)]).flat();
      const name = `attention_block_${v.mlp}${B === undefined ? '' : `_kv_batch_${B}`}${shape.experts ? `_experts_${shape.experts.slots}${shape.experts.hostSum ? '_cpu' : ''}` : ''}`;
      s = this.runtime.createSession(name, buildAttentionBlock(v, 'present', { rowRange: true, ...shape }), [...hiddenOutputs(v), ...kv], { kind: 'attention' });
      this.shaped.set(key, s);
    }
    return s;
  }

  /** GPU providers: the LM head that starts with the last sparse layer's routed experts, built on first use. */
  lmHeadWithExperts(experts: ExpertsShape): Promise<GraphSession> {
    const key = JSON.stringify(['lm_head', experts]);
    let s = this.shaped.get(key);
    if (!s) this.shaped.set(key, (s = this.runtime.createSession(`lm_head_experts_${experts.slots}${experts.hostSum ? '_cpu' : ''}`, buildLmHead(this.headVariant, undefined, experts), [], { kind: 'lm_head' })));
    return s;
  }

  async release(): Promise<void> {
    const all = new Set([...this.attention, this.lmHead]);
    await Promise.all([...all, ...this.shaped.values()].map(async (s) => (await s).release()));
    await this.moeBlocks.release();
  }
}

/** The attention block's outputs that stay on a GPU: the residual stream and, before routed experts, their input. */
function hiddenOutputs(v: AttentionBlockVariant): string[] {
  return [ATTN.residual, ...(v.mlp === 'sparse' ? [ATTN.moeInput] : [])];
}
