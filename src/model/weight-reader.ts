// Reads a weight matrix from a checkpoint in whichever form it is stored: a float tensor `X.weight`, or
// the pack-quantized tensors that replace it in a compressed-tensors checkpoint (compressed-tensors.ts).
import { storedToFloat32, type StoredMatrix } from './compute-form.js';
import { decodePacked, packedNames } from './compressed-tensors.js';
import { isWeightDType } from './dtype.js';
import { TensorShapeError, UnsupportedDTypeError } from './errors.js';
import type { CheckpointQuantization } from './hf-config.js';
import type { TensorSource } from './safetensors.js';

const FLOAT_DTYPES = ['F32', 'F16', 'BF16'];

/** Whether the checkpoint has weight `name`, stored as a float tensor or packed. */
export function hasMatrix(archive: TensorSource, name: string): boolean {
  return archive.has(name) || archive.has(packedNames(name).packed);
}

/** Weight `name` of shape (rows, cols) as stored; a missing weight throws MissingTensorError naming `name`. */
export async function readStoredMatrix(archive: TensorSource, name: string, rows: number, cols: number, quant: CheckpointQuantization | null): Promise<StoredMatrix> {
  const p = packedNames(name);
  if (!archive.has(name) && archive.has(p.packed)) {
    const shape = await readShape(archive, p.shape);
    if (shape[0] !== rows || shape[1] !== cols) throw new TensorShapeError(p.shape, [rows, cols], shape);
    const scaleEntry = archive.entry(p.scale);
    const [packed, scale, zeroPoint] = await Promise.all([
      archive.readBytes(p.packed),
      archive.readBytes(p.scale),
      archive.has(p.zeroPoint) ? archive.readBytes(p.zeroPoint) : Promise.resolve(null),
    ]);
    const packedEntry = archive.entry(p.packed);
    if (packedEntry.dtype !== 'I32') throw new UnsupportedDTypeError(p.packed, packedEntry.dtype, ['I32']);
    const quantized = decodePacked(
      { name, packed, packedShape: packedEntry.shape, scale, scaleDType: scaleEntry.dtype, scaleShape: scaleEntry.shape, zeroPoint, shape: [rows, cols] },
      { bits: quant?.bits ?? [], groupSizes: quant?.groupSizes ?? [] },
    );
    return { kind: 'quantized', quantized };
  }
  const entry = archive.entry(name);
  if (!isWeightDType(entry.dtype)) throw new UnsupportedDTypeError(name, entry.dtype, FLOAT_DTYPES);
  if (entry.shape.length !== 2 || entry.shape[0] !== rows || entry.shape[1] !== cols) throw new TensorShapeError(name, [rows, cols], entry.shape);
  return { kind: 'float', dtype: entry.dtype, rows, cols, bytes: await archive.readBytes(name) };
}

/** Weight `name` as float32, dequantized when the checkpoint stores it packed. */
export async function readFloat32Matrix(archive: TensorSource, name: string, rows: number, cols: number, quant: CheckpointQuantization | null): Promise<Float32Array> {
  return storedToFloat32(await readStoredMatrix(archive, name, rows, cols, quant));
}

async function readShape(archive: TensorSource, name: string): Promise<number[]> {
  const entry = archive.entry(name);
  const bytes = await archive.readBytes(name);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (entry.dtype === 'I64') return [Number(view.getBigInt64(0, true)), Number(view.getBigInt64(8, true))];
  if (entry.dtype === 'I32') return [view.getInt32(0, true), view.getInt32(4, true)];
  throw new UnsupportedDTypeError(name, entry.dtype, ['I64', 'I32']);
}
