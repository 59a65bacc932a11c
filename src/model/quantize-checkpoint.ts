// `moe-serve quantize`: rewrites a Hugging Face checkpoint with its weight matrices in chosen compute
// forms, so that it loads without converting anything: int8/int4 as compressed-tensors pack-quantized
// tensors (compressed-tensors.ts) declared in config.json's quantization_config, f16/f32 as plain float
// tensors. Two classes, as at load time: the routed experts, and the other matrices (attention, dense and
// shared-expert MLPs, LM head). Norms, routers, biases and embeddings are copied as they are. Streams:
// one tensor in memory at a time.
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { checkCheckpointTensors } from './checkpoint-tensors.js';
import { encodePacked, packedNames } from './compressed-tensors.js';
import { computeToFloat32, toComputeForm, storedComputeDType, type ComputeDType, type QuantOptions, type StoredMatrix, type WeightClass } from './compute-form.js';
import { loadModelConfig, quantizationConfigJson, type ModelSpec } from './hf-config.js';
import { blocksPerRow, DEFAULT_BLOCK_SIZE, type QuantScheme } from './quantization.js';
import { INDEX_FILE_NAME, SafetensorsArchive, SINGLE_FILE_NAME } from './safetensors.js';
import { writeSafetensors, type PlannedTensor } from './safetensors-writer.js';
import { EMBED_TOKENS, expertTensorNames, layerTensorNames, LM_HEAD, moduleTargets } from './tensor-names.js';
import { readStoredMatrix } from './weight-reader.js';

export interface QuantizeOptions {
  readonly modelDir: string;
  readonly outDir: string;
  /** Routed experts' form; absent: as stored. */
  readonly expertDtype?: ComputeDType;
  /** The other matrices' form (LM head, dense and shared-expert MLPs, and attention unless attentionDtype); absent: as stored. */
  readonly weightDtype?: ComputeDType;
  /** The attention projections' form; absent: weightDtype. */
  readonly attentionDtype?: ComputeDType;
  readonly blockSize?: number;
  readonly zeroPoints?: boolean;
  /** Largest shard in bytes (default 2 GiB; a larger tensor gets a shard of its own). */
  readonly shardBytes?: number;
  readonly onProgress?: (done: number, total: number) => void;
}

export class QuantizeTargetError extends Error {
  readonly code = 'bad_quantize_target';

  constructor(message: string) {
    super(message);
    this.name = 'QuantizeTargetError';
  }
}

interface MatrixJob {
  readonly name: string;
  readonly rows: number;
  readonly cols: number;
  readonly cls: WeightClass;
}

/** The weight matrices of each class, with their shapes. */
function matrixJobs(spec: ModelSpec): MatrixJob[] {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = spec;
  const jobs: MatrixJob[] = [];
  const mlp = (names: { gate: string; up: string; down: string }, I: number, cls: MatrixJob['cls']) =>
    jobs.push({ name: names.gate, rows: I, cols: H, cls }, { name: names.up, rows: I, cols: H, cls }, { name: names.down, rows: H, cols: I, cls });
  for (let l = 0; l < spec.numLayers; l++) {
    const n = layerTensorNames(spec.family, l);
    jobs.push(
      { name: n.q, rows: nH * D, cols: H, cls: 'attention' },
      { name: n.k, rows: nKv * D, cols: H, cls: 'attention' },
      { name: n.v, rows: nKv * D, cols: H, cls: 'attention' },
      { name: n.o, rows: H, cols: nH * D, cls: 'attention' },
    );
    if (!spec.sparseLayers[l]) {
      mlp(n.denseMlp, spec.denseIntermediateSize, 'weights');
      continue;
    }
    if (spec.sharedExpertIntermediateSize !== null) mlp(n.sharedExpert, spec.sharedExpertIntermediateSize, 'weights');
    for (let e = 0; e < spec.numExperts; e++) mlp(expertTensorNames(spec.family, l, e), spec.expertIntermediateSize, 'experts');
  }
  jobs.push({ name: LM_HEAD, rows: spec.vocabSize, cols: H, cls: 'weights' });
  return jobs;
}

/** The output form of a matrix, known from the archive's headers alone (so that sizes are planned before converting). */
type OutForm = { readonly dtype: 'f32' | 'f16' } | { readonly dtype: 'int8' | 'int4'; readonly scheme: QuantScheme } | { readonly dtype: 'copy' };

function outForm(archive: SafetensorsArchive, job: MatrixJob, requested: ComputeDType | undefined, q: QuantOptions): OutForm {
  if (requested === undefined) return { dtype: 'copy' };
  const p = packedNames(job.name);
  if (requested === 'int8' || requested === 'int4') {
    const bits = requested === 'int8' ? 8 : 4;
    // A matrix already packed at these bits is handed over with its own block size and zero points.
    if (!archive.has(job.name) && archive.has(p.packed)) {
      const words = archive.entry(p.packed).shape[1] ?? 0;
      if (Math.ceil((job.cols * bits) / 32) === words) {
        const groups = archive.entry(p.scale).shape[1] ?? 1;
        return { dtype: requested, scheme: { bits, blockSize: Math.ceil(job.cols / groups), zeroPoints: archive.has(p.zeroPoint) } };
      }
    }
    return { dtype: requested, scheme: { bits, ...q } };
  }
  return { dtype: requested };
}

/** The tensors one matrix becomes in the output. */
function plannedTensors(archive: SafetensorsArchive, job: MatrixJob, form: OutForm, spec: ModelSpec, q: QuantOptions): PlannedTensor[] {
  // A tied LM head is the embedding table: converted, it becomes an lm_head of its own (see writeConfig).
  const source = job.name === LM_HEAD && spec.tieWordEmbeddings ? EMBED_TOKENS : job.name;
  const read = () => readStoredMatrix(archive, source, job.rows, job.cols, spec.quantization);
  if (form.dtype === 'copy') {
    const names = archive.has(job.name) ? [job.name] : Object.values(packedNames(job.name)).filter((n) => archive.has(n));
    return names.map((name) => copied(archive, name));
  }
  if (form.dtype === 'f32' || form.dtype === 'f16') {
    const bytesPer = form.dtype === 'f32' ? 4 : 2;
    return [
      {
        name: job.name,
        dtype: form.dtype === 'f32' ? 'F32' : 'F16',
        shape: [job.rows, job.cols],
        byteLength: job.rows * job.cols * bytesPer,
        bytes: async () => {
          const m = toComputeForm(await read(), form.dtype, q);
          const data = m.dtype === 'f16' ? m.data : computeToFloat32(m);
          return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        },
      },
    ];
  }
  if (!('scheme' in form)) throw new Error(`no quantization scheme for ${job.name}`);
  const { bits, blockSize, zeroPoints } = form.scheme;
  const perWord = 32 / bits;
  const words = Math.ceil(job.cols / perWord);
  const groups = blocksPerRow(job.cols, blockSize);
  const p = packedNames(job.name);
  // One conversion feeds the tensors of the matrix, which the writer asks for one after another.
  let encoded: Promise<ReturnType<typeof encodePacked>> | null = null;
  const encode = () => {
    encoded ??= read().then((s: StoredMatrix) => {
      const m = toComputeForm(s, form.dtype, { blockSize, zeroPoints });
      if (m.dtype !== 'int8' && m.dtype !== 'int4') throw new Error(`${job.name} did not quantize`);
      return encodePacked(m.quantized);
    });
    return encoded;
  };
  const shape = new Uint8Array(16);
  new DataView(shape.buffer).setBigInt64(0, BigInt(job.rows), true);
  new DataView(shape.buffer).setBigInt64(8, BigInt(job.cols), true);
  const tensors: PlannedTensor[] = [
    { name: p.packed, dtype: 'I32', shape: [job.rows, words], byteLength: job.rows * words * 4, bytes: async () => (await encode()).packed },
    { name: p.scale, dtype: 'F32', shape: [job.rows, groups], byteLength: job.rows * groups * 4, bytes: async () => (await encode()).scale },
  ];
  if (zeroPoints) {
    const zpRows = Math.ceil(job.rows / perWord);
    tensors.push({
      name: p.zeroPoint,
      dtype: 'I32',
      shape: [zpRows, groups],
      byteLength: zpRows * groups * 4,
      bytes: async () => {
        const zp = (await encode()).zeroPoint;
        if (!zp) throw new Error(`${job.name} has no zero points`);
        return zp;
      },
    });
  }
  tensors.push({ name: p.shape, dtype: 'I64', shape: [2], byteLength: 16, bytes: async () => shape });
  return tensors;
}

function copied(archive: SafetensorsArchive, name: string): PlannedTensor {
  const e = archive.entry(name);
  return { name, dtype: e.dtype, shape: e.shape, byteLength: e.byteLength, bytes: () => archive.readBytes(name) };
}

/** Writes the converted checkpoint; returns the output directory's weight files. */
export async function quantizeCheckpoint(o: QuantizeOptions): Promise<string[]> {
  if (resolve(o.modelDir) === resolve(o.outDir)) throw new QuantizeTargetError('--out must be another directory than --model');
  await mkdir(o.outDir, { recursive: true });
  if ((await readdir(o.outDir)).length > 0) throw new QuantizeTargetError(`${o.outDir} is not empty; give a new or empty directory`);
  const spec = await loadModelConfig(o.modelDir);
  const q: QuantOptions = { blockSize: o.blockSize ?? DEFAULT_BLOCK_SIZE, zeroPoints: o.zeroPoints ?? false };
  await using archive = await SafetensorsArchive.open(o.modelDir);
  // Every tensor is checked before the first is written, so that a broken source fails at once, naming them all.
  checkCheckpointTensors(archive, spec, o.modelDir);
  const jobs = matrixJobs(spec);
  const consumed = new Set<string>();
  const planned: PlannedTensor[] = [];
  const classForms = new Map<MatrixJob['cls'], OutForm>();
  for (const job of jobs) {
    const tiedHead = job.name === LM_HEAD && spec.tieWordEmbeddings;
    if (tiedHead && o.weightDtype === undefined) continue;
    const requested = { experts: o.expertDtype, attention: o.attentionDtype ?? o.weightDtype, weights: o.weightDtype }[job.cls];
    const form = outForm(archive, job, requested, q);
    if (!classForms.has(job.cls)) classForms.set(job.cls, form.dtype === 'copy' ? storedForm(await readStoredMatrix(archive, job.name, job.rows, job.cols, spec.quantization)) : form);
    for (const n of [job.name, ...Object.values(packedNames(job.name))]) consumed.add(n);
    planned.push(...plannedTensors(archive, job, form, spec, q));
  }
  // Everything else (norms, routers, biases, embeddings) as it is, in the original order.
  const rest = archive.names().filter((n) => !consumed.has(n));
  const out = [...rest.map((n) => copied(archive, n)), ...planned];
  const files = await writeSafetensors(o.outDir, out, o.shardBytes ?? 2 ** 31, { format: 'pt' }, o.onProgress);
  await writeConfig(o.modelDir, o.outDir, spec, classForms, spec.tieWordEmbeddings && o.weightDtype !== undefined);
  await copyOtherFiles(o.modelDir, o.outDir);
  return files;
}

function storedForm(s: StoredMatrix): OutForm {
  const dtype = storedComputeDType(s);
  if (s.kind === 'quantized') return { dtype: dtype as 'int8' | 'int4', scheme: { bits: s.quantized.bits, blockSize: s.quantized.blockSize, zeroPoints: s.quantized.zeroPoints } };
  return { dtype: 'copy' };
}

/**
 * config.json with quantization_config for the int classes (removed when none is quantized), and untied
 * embeddings when the LM head was converted: the embedding table stays float for its lookups.
 */
async function writeConfig(modelDir: string, outDir: string, spec: ModelSpec, forms: ReadonlyMap<MatrixJob['cls'], OutForm>, untie: boolean): Promise<void> {
  const raw = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  if (untie) raw.tie_word_embeddings = false;
  const targets = moduleTargets(spec.family);
  const classes = [...forms].flatMap(([cls, f]) => ('scheme' in f ? [{ targets: targets[cls], scheme: f.scheme }] : []));
  delete raw.quantization_config;
  if (classes.length > 0) raw.quantization_config = quantizationConfigJson(classes);
  await writeFile(join(outDir, 'config.json'), `${JSON.stringify(raw, null, 2)}\n`);
}

/** Tokenizer, generation config, model card and the like: every file that is not weights or config.json. */
async function copyOtherFiles(modelDir: string, outDir: string): Promise<void> {
  for (const name of await readdir(modelDir)) {
    if (name === 'config.json' || name === INDEX_FILE_NAME || name === SINGLE_FILE_NAME || name.endsWith('.safetensors')) continue;
    if ((await stat(join(modelDir, name))).isFile()) await copyFile(join(modelDir, name), join(outDir, name));
  }
}
