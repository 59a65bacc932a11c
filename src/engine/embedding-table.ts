// Token embeddings stay in their stored dtype in host memory (a 32k x 4096 table is 256 MB in bf16,
// twice that in fp32) and only the looked-up rows are converted, once per step.
import { bytesPerElement, toFloat32, type WeightDType } from '../model/dtype.js';
import type { SafetensorsArchive } from '../model/safetensors.js';
import { TensorShapeError, UnsupportedDTypeError } from '../model/errors.js';

export class EmbeddingTable {
  private constructor(
    private readonly raw: Uint8Array,
    private readonly dtype: WeightDType,
    readonly vocabSize: number,
    readonly hiddenSize: number,
  ) {}

  get bytes(): number {
    return this.raw.byteLength;
  }

  static async load(archive: SafetensorsArchive, name: string, vocabSize: number, hiddenSize: number): Promise<EmbeddingTable> {
    const entry = archive.entry(name);
    if (entry.dtype !== 'F32' && entry.dtype !== 'F16' && entry.dtype !== 'BF16') {
      throw new UnsupportedDTypeError(name, entry.dtype, ['F32', 'F16', 'BF16']);
    }
    if (entry.shape.length !== 2 || entry.shape[0] !== vocabSize || entry.shape[1] !== hiddenSize) {
      throw new TensorShapeError(name, [vocabSize, hiddenSize], entry.shape);
    }
    return new EmbeddingTable(await archive.readBytes(name), entry.dtype, vocabSize, hiddenSize);
  }

  /** Rows for `ids`, as one (ids.length, hidden) fp32 buffer. */
  lookup(ids: readonly number[]): Float32Array {
    const H = this.hiddenSize;
    const rowBytes = H * bytesPerElement(this.dtype);
    const out = new Float32Array(ids.length * H);
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      }
      out.set(toFloat32(this.raw.subarray(id * rowBytes, (id + 1) * rowBytes), this.dtype), i * H);
    });
    return out;
  }
}
