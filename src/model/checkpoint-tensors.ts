// Every tensor a model will read, with the dtype and shape it must have, checked against the safetensors
// headers when the model loads: before any weight byte is read or any session is built. Routed experts
// are read on demand (the host and device tiers), so without this a checkpoint lacking one expert's
// tensor loads, reports healthy, and fails every request routed to that expert.
//
// The list mirrors what the readers ask for: engine/resident-weights.ts (attention, norms, routers,
// shared experts, dense MLPs, LM head, embeddings) and experts/host-expert-cache.ts (every routed expert
// of every sparse layer). A weight matrix may be stored as a float tensor or in compressed-tensors'
// packed form (weight-reader.ts); norms, biases and the embedding table are always float.
import { basename } from 'node:path';
import { packedNames, packedScheme, PackedWeightError } from './compressed-tensors.js';
import { isWeightDType } from './dtype.js';
import { CheckpointTensorsError, type TensorProblem } from './errors.js';
import type { ModelSpec } from './hf-config.js';
import { sameShape, type SafetensorsArchive, type TensorEntry } from './safetensors.js';
import { EMBED_TOKENS, expertTensorNames, FINAL_NORM, layerTensorNames, LM_HEAD, type ExpertTensorNames } from './tensor-names.js';

export interface RequiredTensor {
  readonly name: string;
  readonly shape: readonly number[];
  /** A weight matrix read through weight-reader.ts, which also takes its compressed-tensors packed form. */
  readonly matrix: boolean;
}

const FLOAT = 'F32, F16 or BF16';

/**
 * The tensors a model of `spec` reads. `has` answers for the optional ones (attention biases), which
 * the loader detects by their presence.
 */
export function requiredTensors(spec: ModelSpec, has: (name: string) => boolean): RequiredTensor[] {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, vocabSize: V, numExperts: E } = spec;
  const out: RequiredTensor[] = [];
  const float = (name: string, ...shape: number[]) => out.push({ name, shape, matrix: false });
  const matrix = (name: string, rows: number, cols: number) => out.push({ name, shape: [rows, cols], matrix: true });
  const mlp = (n: ExpertTensorNames, I: number) => {
    matrix(n.gate, I, H);
    matrix(n.up, I, H);
    matrix(n.down, H, I);
  };
  const layers = Array.from({ length: spec.numLayers }, (_, l) => layerTensorNames(spec.family, l));
  // The loader builds each layer's attention from the biases that layer has. Biases in some layers but
  // not others is a damaged checkpoint (no family mixes them), which would compute silently wrong.
  const qkvBias = layers.some((n) => has(n.qBias));
  const oBias = layers.some((n) => has(n.oBias));
  // Looked up as stored (engine/embedding-table.ts), so never packed; it is also a tied LM head.
  float(EMBED_TOKENS, V, H);
  for (const [l, n] of layers.entries()) {
    float(n.inputNorm, H);
    matrix(n.q, nH * D, H);
    matrix(n.k, nKv * D, H);
    matrix(n.v, nKv * D, H);
    matrix(n.o, H, nH * D);
    if (qkvBias) {
      float(n.qBias, nH * D);
      float(n.kBias, nKv * D);
      float(n.vBias, nKv * D);
    }
    if (oBias) float(n.oBias, H);
    if (spec.qkNorm === 'projection') {
      float(n.qNorm, nH * D);
      float(n.kNorm, nKv * D);
    } else if (spec.qkNorm === 'head') {
      float(n.qNorm, D);
      float(n.kNorm, D);
    }
    float(n.postAttentionNorm, H);
    if (!(spec.sparseLayers[l] ?? true)) {
      mlp(n.denseMlp, spec.denseIntermediateSize);
      continue;
    }
    matrix(n.router, E, H);
    if (spec.sharedExpertIntermediateSize !== null) {
      mlp(n.sharedExpert, spec.sharedExpertIntermediateSize);
      matrix(n.sharedExpertGate, 1, H);
    }
    for (let e = 0; e < E; e++) mlp(expertTensorNames(spec.family, l, e), spec.expertIntermediateSize);
  }
  float(FINAL_NORM, H);
  if (!spec.tieWordEmbeddings) matrix(LM_HEAD, V, H);
  return out;
}

/**
 * Checks every tensor of requiredTensors against the archive's headers (no weight bytes are read) and
 * throws one CheckpointTensorsError listing all that are missing or wrong. `directory` names the model
 * in the message.
 */
export function checkCheckpointTensors(archive: SafetensorsArchive, spec: ModelSpec, directory: string): void {
  const problems = requiredTensors(spec, (name) => archive.has(name)).flatMap((t) => tensorProblems(archive, spec, t));
  if (problems.length > 0) throw new CheckpointTensorsError(directory, archive.fileLabels.map((f) => basename(f)), problems);
}

function tensorProblems(archive: SafetensorsArchive, spec: ModelSpec, t: RequiredTensor): TensorProblem[] {
  const entry = archive.find(t.name);
  const [rows, cols] = t.shape as [number, number];
  // As weight-reader.ts reads: the float tensor when present, else its packed form.
  const p = packedNames(t.name);
  if (!entry && t.matrix && archive.has(p.packed)) return packedProblems(archive, spec, t.name, rows, cols);
  if (!entry && t.matrix && (archive.has(p.scale) || archive.has(p.shape))) {
    // The rest of a packed weight is there: its packed values are what is missing.
    const words = `${Math.ceil(cols / 8)} (4 bits) or ${Math.ceil(cols / 4)} (8 bits)`;
    return [{ tensor: p.packed, kind: 'missing', file: null, expected: `I32 [${rows}, ${words}]`, found: null }];
  }
  const expected = `${FLOAT} ${shapeText(t.shape)}${t.matrix ? ' (or its compressed-tensors weight_packed form)' : ''}`;
  if (!entry) return [{ tensor: t.name, kind: 'missing', file: null, expected, found: null }];
  return entryProblems(entry, (d) => isWeightDType(d), FLOAT, t.shape);
}

/** The packed tensors of weight `name` (compressed-tensors.ts): every one present, each of the dtype and shape its scheme needs. */
function packedProblems(archive: SafetensorsArchive, spec: ModelSpec, name: string, rows: number, cols: number): TensorProblem[] {
  const p = packedNames(name);
  const packed = archive.find(p.packed) as TensorEntry;
  const scale = archive.find(p.scale);
  const shape = archive.find(p.shape);
  const problems: TensorProblem[] = [];
  if (!scale) problems.push({ tensor: p.scale, kind: 'missing', file: null, expected: `${FLOAT} [${rows}, groups]`, found: null });
  if (!shape) problems.push({ tensor: p.shape, kind: 'missing', file: null, expected: 'I64 [2]', found: null });
  else problems.push(...entryProblems(shape, (d) => d === 'I64' || d === 'I32', 'I64 or I32', [2]));
  if (packed.dtype !== 'I32') problems.push({ tensor: p.packed, kind: 'dtype', file: basename(packed.fileLabel), expected: 'I32', found: entryText(packed) });
  if (!scale) return problems;
  let bits: number;
  let groups: number;
  try {
    const hints = { bits: spec.quantization?.bits ?? [], groupSizes: spec.quantization?.groupSizes ?? [] };
    bits = packedScheme({ name, packedShape: packed.shape, scaleShape: scale.shape, scaleDType: scale.dtype, shape: [rows, cols] }, hints).bits;
    groups = scale.shape[1] as number;
  } catch (err) {
    if (!(err instanceof PackedWeightError)) throw err;
    return [...problems, { tensor: name, kind: 'packed', file: basename(packed.fileLabel), expected: `a packed [${rows}, ${cols}] weight`, found: err.reason }];
  }
  const zeroPoint = archive.find(p.zeroPoint);
  if (zeroPoint) problems.push(...entryProblems(zeroPoint, (d) => d === 'I32', 'I32', [Math.ceil(rows / (32 / bits)), groups]));
  return problems;
}

/** The entry's dtype and shape against what is expected: one problem naming both when both are wrong. */
function entryProblems(entry: TensorEntry, dtypeOk: (dtype: string) => boolean, dtypes: string, shape: readonly number[]): TensorProblem[] {
  const badDtype = !dtypeOk(entry.dtype);
  const badShape = !sameShape(entry.shape, shape);
  if (!badDtype && !badShape) return [];
  return [{ tensor: entry.name, kind: badDtype ? 'dtype' : 'shape', file: basename(entry.fileLabel), expected: `${dtypes} ${shapeText(shape)}`, found: entryText(entry) }];
}

const shapeText = (shape: readonly number[]) => `[${shape.join(', ')}]`;
const entryText = (e: TensorEntry) => `${e.dtype} ${shapeText(e.shape)}`;
