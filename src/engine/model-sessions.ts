// The onnxruntime sessions a model runs: one attention block per layer variant, one routed-experts
// block per slot count (built on first use), and the LM head. Weights are inputs, so the session count
// does not grow with the number of layers.
import { ATTN, attentionBlockKey, buildAttentionBlock, type AttentionBlockVariant } from '../graphs/attention-block.js';
import { buildLmHead } from '../graphs/lm-head.js';
import { buildMoeBlock, MOE } from '../graphs/moe-block.js';
import type { ModelSpec } from '../model/hf-config.js';
import type { GraphSession, Runtime } from '../runtime/onnx-runtime.js';

export class ModelSessions {
  private readonly moe = new Map<number, Promise<GraphSession>>();

  private constructor(
    private readonly runtime: Runtime,
    private readonly spec: ModelSpec,
    private readonly attention: ReadonlyMap<string, GraphSession>,
    readonly lmHead: GraphSession,
  ) {}

  static async create(runtime: Runtime, spec: ModelSpec, variants: readonly AttentionBlockVariant[]): Promise<ModelSessions> {
    const attention = new Map<string, GraphSession>();
    for (const v of variants) {
      const key = attentionBlockKey(v);
      if (attention.has(key)) continue;
      // Router and lookahead logits are not listed: they always come back to the host for routing in JS.
      const outputs = [ATTN.residual, ATTN.presentKey, ATTN.presentValue, ...(v.mlp === 'sparse' ? [ATTN.moeInput] : [])];
      attention.set(key, await runtime.createSession(`attention_block_${v.mlp}`, buildAttentionBlock(v), outputs));
    }
    const lmHead = await runtime.createSession(
      'lm_head',
      buildLmHead({ hiddenSize: spec.hiddenSize, vocabSize: spec.vocabSize, rmsNormEps: spec.rmsNormEps }),
      [], // logits come back to the host: the sampler runs in JS
    );
    return new ModelSessions(runtime, spec, attention, lmHead);
  }

  private readonly byVariant = new WeakMap<AttentionBlockVariant, GraphSession>();

  /** The attention session for a layer's variant (found by identity after the first lookup: this is per layer per step). */
  attentionFor(variant: AttentionBlockVariant): GraphSession {
    let s = this.byVariant.get(variant);
    if (!s) {
      s = this.attention.get(attentionBlockKey(variant));
      if (!s) throw new Error('no attention session for this layer variant');
      this.byVariant.set(variant, s);
    }
    return s;
  }

  private readonly decodeBatch = new Map<string, Promise<GraphSession>>();

  /** The attention session for several sequences' single decode tokens at once (built on first use). */
  decodeBatchFor(variant: AttentionBlockVariant): Promise<GraphSession> {
    const key = attentionBlockKey(variant);
    let s = this.decodeBatch.get(key);
    if (!s) {
      const v = { ...variant, decodeBatch: true };
      const outputs = [ATTN.residual, ATTN.presentKey, ATTN.presentValue, ...(v.mlp === 'sparse' ? [ATTN.moeInput] : [])];
      s = this.runtime.createSession(`attention_decode_batch_${v.mlp}`, buildAttentionBlock(v), outputs);
      this.decodeBatch.set(key, s);
    }
    return s;
  }

  /** The routed-experts block with `slots` expert slots. */
  moeBlock(slots: number): Promise<GraphSession> {
    let s = this.moe.get(slots);
    if (!s) {
      const bytes = buildMoeBlock({ hiddenSize: this.spec.hiddenSize, intermediateSize: this.spec.expertIntermediateSize, slots });
      s = this.runtime.createSession(`moe_block_${slots}`, bytes, [MOE.hidden]);
      this.moe.set(slots, s);
    }
    return s;
  }

  async release(): Promise<void> {
    const all = [...this.attention.values(), this.lmHead, ...(await Promise.all([...this.moe.values(), ...this.decodeBatch.values()]))];
    await Promise.all(all.map((s) => s.release()));
  }
}
