// The onnxruntime sessions a model runs: the attention block of every layer, the LM head, and (GPU
// providers) the routed-experts block per slot count, built on first use. On the CPU provider each layer's
// session has that layer's weights baked in (prepacked initializers), so there is one per layer; on GPU
// providers weights are inputs and one session serves every layer of the same variant.
import { ATTN, attentionBlockKey, buildAttentionBlock, type AttentionBlockVariant } from '../graphs/attention-block.js';
import { buildLmHead, type LmHeadVariant } from '../graphs/lm-head.js';
import { buildMoeBlock, MOE, type ExpertForms } from '../graphs/moe-block.js';
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

export class ModelSessions {
  readonly moeBlocks: MoeBlockSessions;

  private constructor(
    runtime: Runtime,
    spec: ModelSpec,
    private readonly attention: readonly GraphSession[],
    readonly lmHead: GraphSession,
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
      const outputs = [ATTN.residual, ATTN.presentKey, ATTN.presentValue, ...(v.mlp === 'sparse' ? [ATTN.moeInput] : [])];
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
    return new ModelSessions(runtime, spec, attention, lmHead);
  }

  /** Layer `layer`'s attention block. */
  attentionFor(layer: number): GraphSession {
    const s = this.attention[layer];
    if (!s) throw new RangeError(`no attention session for layer ${layer}`);
    return s;
  }

  async release(): Promise<void> {
    const all = new Set([...this.attention, this.lmHead]);
    await Promise.all([...all].map((s) => s.release()));
    await this.moeBlocks.release();
  }
}
