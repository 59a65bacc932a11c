// Which compute form each class of weight takes, and the defaults per execution provider: the one place
// these choices are made (README "Compute forms" has the measurements behind the defaults).
//
// Three classes, because they differ in what quantization costs them (`npm run bench -- quant`,
// tiny-moe): the routed experts (most of the bytes; int8 agrees with f32 on every greedy token, int4 on
// most), the attention projections (the one place where MatMulNBits' int8 activations hurt: int8
// attention takes greedy agreement with transformers from 128 to 56 of 128 tokens, while the same
// weights with float activations keep all 128), and the rest (LM head, dense and shared-expert MLPs).
import { toComputeForm, storedComputeDType, type ComputeDType, type ComputeMatrix, type StoredMatrix, type WeightClass } from '../model/compute-form.js';
import { DEFAULT_BLOCK_SIZE } from '../model/quantization.js';
import type { QuantOptions } from '../model/compute-form.js';
import type { DeviceKind } from '../runtime/onnx-runtime.js';

export interface ComputeOptions {
  /** LM head, dense and shared-expert MLPs, and attention unless attentionDtype says otherwise. */
  readonly weightDtype?: ComputeDType;
  /** The attention projections q, k, v, o; default: weightDtype when given, else the provider's. */
  readonly attentionDtype?: ComputeDType;
  /** Routed experts. */
  readonly expertDtype?: ComputeDType;
  /** Block size when float weights are quantized (default 32). */
  readonly blockSize?: number;
  /** Asymmetric quantization with a zero point per block (default: symmetric). */
  readonly zeroPoints?: boolean;
  /**
   * MatMulNBits accuracy_level: 4 (int8 activations, the CPU provider's fast kernels; its default) or 0
   * (float activations; the default on GPU providers, see DEFAULT_ACCURACY_LEVEL).
   */
  readonly accuracyLevel?: 0 | 4;
}

/** ComputeOptions with every choice made: per class, the dtype and whether it was asked for. */
export interface ResolvedCompute {
  readonly classes: Readonly<Record<WeightClass, { readonly dtype: ComputeDType; readonly forced: boolean }>>;
  readonly quant: QuantOptions;
  readonly accuracyLevel: 0 | 4;
}

/**
 * Provider defaults: the fastest forms that keep the accuracy bar (int8 perplexity within 0.5% of f32,
 * int4 within 5%, greedy agreement with transformers at least llama.cpp's at the same bits: q8_0 100 and
 * q4_0 63 of 128 tokens on this project's machines). Measured on the CPU (`npm run bench -- quant`,
 * tiny-moe): int4 experts with int8 LM head and MLPs and f32 attention decode fastest within the bar
 * (perplexity +0.9%, 84 of 128 tokens); int4 LM head falls to 22 of 128, int8 attention to 56. GPU
 * providers keep f32 until their speed is measured on a GPU (lavapipe checks correctness only).
 */
const PROVIDER_DEFAULTS: Readonly<Record<DeviceKind, Readonly<Record<WeightClass, ComputeDType>>>> = {
  cpu: { experts: 'int4', attention: 'f32', weights: 'int8' },
  webgpu: { experts: 'f32', attention: 'f32', weights: 'f32' },
  cuda: { experts: 'f32', attention: 'f32', weights: 'f32' },
};

/**
 * `budgeted`: the expert cache cannot hold every expert, so misses will happen. On the CPU provider a
 * quantized expert's miss is a session creation (~50 of its runs, `bench offload`: LRU with prefetch at
 * 25% 11.7x slower than everything resident with int4 experts, 3.9x with f32), so experts then default
 * to f32, whose miss is a widening of bf16; --expert-dtype int4 still asks for int4 (more experts per MiB).
 */
export function resolveCompute(device: DeviceKind, o: ComputeOptions = {}, budgeted = false): ResolvedCompute {
  const d = budgeted && device === 'cpu' ? { ...PROVIDER_DEFAULTS.cpu, experts: 'f32' as const } : PROVIDER_DEFAULTS[device];
  // Asking for a weight dtype asks it of attention too (what --weight-dtype has always meant), unless
  // --attention-dtype says otherwise.
  const attention = o.attentionDtype ?? o.weightDtype;
  return {
    classes: {
      experts: { dtype: o.expertDtype ?? d.experts, forced: o.expertDtype !== undefined },
      attention: { dtype: attention ?? d.attention, forced: attention !== undefined },
      weights: { dtype: o.weightDtype ?? d.weights, forced: o.weightDtype !== undefined },
    },
    quant: { blockSize: o.blockSize ?? DEFAULT_BLOCK_SIZE, zeroPoints: o.zeroPoints ?? false },
    accuracyLevel: o.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL[device],
  };
}

/**
 * On GPU providers a missed expert may be computed on the CPU provider (hybrid-experts.ts), which must
 * give what the device computes, or a token would depend on the cache's state. Level 4 rounds
 * activations to int8 differently on each provider (tiny fixtures' logits moved by up to 0.36 between
 * the CPU and WebGPU on lavapipe), so GPU providers compute quantized weights with float activations;
 * whether level 4 is faster on a GPU is unmeasured.
 */
const DEFAULT_ACCURACY_LEVEL: Readonly<Record<DeviceKind, 0 | 4>> = { cpu: 4, webgpu: 0, cuda: 0 };

/** The dtype a stored matrix of one class computes in: as asked, else its own quantized form, else the default. */
export function dtypeFor(stored: StoredMatrix, cls: WeightClass, c: ResolvedCompute): ComputeDType {
  const { dtype, forced } = c.classes[cls];
  if (!forced && stored.kind === 'quantized') return storedComputeDType(stored);
  return dtype;
}

/** A stored matrix of class `cls` in its compute form; `into` may receive a float32 widening. */
export function computeMatrix(stored: StoredMatrix, cls: WeightClass, c: ResolvedCompute, into?: Float32Array): ComputeMatrix {
  return toComputeForm(stored, dtypeFor(stored, cls, c), c.quant, into);
}

/**
 * The form the host tier keeps an expert in: as stored, unless experts compute quantized in another form,
 * then quantized (once, on the way in), so that no cache miss quantizes.
 */
export function expertHostForm(stored: StoredMatrix, c: ResolvedCompute): StoredMatrix {
  const dtype = dtypeFor(stored, 'experts', c);
  if (dtype !== 'int8' && dtype !== 'int4') return stored;
  const m = toComputeForm(stored, dtype, c.quant);
  return m.dtype === 'int8' || m.dtype === 'int4' ? { kind: 'quantized', quantized: m.quantized } : stored;
}
