// Which compute form each class of weight takes, and the defaults per execution provider: the one place
// these choices are made (README "Compute forms" has the measurements behind the defaults).
import { toComputeForm, storedComputeDType, type ComputeDType, type ComputeMatrix, type QuantOptions, type StoredMatrix } from '../model/compute-form.js';
import { DEFAULT_BLOCK_SIZE } from '../model/quantization.js';
import type { DeviceKind } from '../runtime/onnx-runtime.js';

export interface ComputeOptions {
  /** Attention, LM head, dense and shared-expert MLPs. Absent: the checkpoint's own quantized form, else the provider default. */
  readonly weightDtype?: ComputeDType;
  /** Routed experts; absent as for weightDtype. */
  readonly expertDtype?: ComputeDType;
  /** Block size when float weights are quantized (default 32). */
  readonly blockSize?: number;
  /** Asymmetric quantization with a zero point per block (default: symmetric). */
  readonly zeroPoints?: boolean;
  /** MatMulNBits accuracy_level: 4 (default; int8 activations, the fast kernels) or 0 (float32, exact). */
  readonly accuracyLevel?: 0 | 4;
}

/** ComputeOptions with every choice made. */
export interface ResolvedCompute {
  readonly weightDefault: ComputeDType;
  readonly expertDefault: ComputeDType;
  /** Whether the dtypes were asked for (else a quantized checkpoint keeps its own forms). */
  readonly weightForced: boolean;
  readonly expertForced: boolean;
  readonly quant: QuantOptions;
  readonly accuracyLevel: 0 | 4;
}

/**
 * Provider defaults (measured, README "Compute forms"): on the CPU provider fp32 is what matches
 * transformers, and the defaults stay there until the accuracy bar is met; see PROVIDER_DEFAULTS.
 */
const PROVIDER_DEFAULTS: Readonly<Record<DeviceKind, { weights: ComputeDType; experts: ComputeDType }>> = {
  cpu: { weights: 'f32', experts: 'f32' },
  webgpu: { weights: 'f32', experts: 'f32' },
  cuda: { weights: 'f32', experts: 'f32' },
};

export function resolveCompute(device: DeviceKind, o: ComputeOptions = {}): ResolvedCompute {
  const d = PROVIDER_DEFAULTS[device];
  return {
    weightDefault: o.weightDtype ?? d.weights,
    expertDefault: o.expertDtype ?? d.experts,
    weightForced: o.weightDtype !== undefined,
    expertForced: o.expertDtype !== undefined,
    quant: { blockSize: o.blockSize ?? DEFAULT_BLOCK_SIZE, zeroPoints: o.zeroPoints ?? false },
    accuracyLevel: o.accuracyLevel ?? 4,
  };
}

/** The dtype a stored matrix of one class computes in: as asked, else its own quantized form, else the default. */
export function dtypeFor(stored: StoredMatrix, cls: 'weights' | 'experts', c: ResolvedCompute): ComputeDType {
  const forced = cls === 'weights' ? c.weightForced : c.expertForced;
  const dflt = cls === 'weights' ? c.weightDefault : c.expertDefault;
  if (!forced && stored.kind === 'quantized') return storedComputeDType(stored);
  return dflt;
}

/** A stored matrix of class `cls` in its compute form; `into` may receive a float32 widening. */
export function computeMatrix(stored: StoredMatrix, cls: 'weights' | 'experts', c: ResolvedCompute, into?: Float32Array): ComputeMatrix {
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

