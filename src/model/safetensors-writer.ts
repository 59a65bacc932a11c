// Writes a checkpoint's tensors as safetensors in Hugging Face layout, streaming: every tensor's dtype and
// shape are declared first (so that the headers can be written before any data), then each tensor's
// bytes are produced and written one at a time, so memory holds one tensor, not the checkpoint. Tensors
// go to shards of at most `shardBytes` (a tensor larger than that gets a shard of its own) with
// model.safetensors.index.json, or to one model.safetensors when they fit in one.
import { open, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { INDEX_FILE_NAME, SINGLE_FILE_NAME } from './safetensors.js';

export interface PlannedTensor {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly byteLength: number;
  /** Produces the bytes when the writer gets to this tensor. */
  readonly bytes: () => Promise<Uint8Array>;
}

interface Shard {
  readonly file: string;
  readonly tensors: PlannedTensor[];
  bytes: number;
}

export class WrongTensorBytesError extends Error {
  readonly code = 'wrong_tensor_bytes';

  constructor(
    readonly tensor: string,
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`tensor "${tensor}" produced ${actual} bytes; its header declared ${expected}`);
    this.name = 'WrongTensorBytesError';
  }
}

/** Writes `tensors` into `dir`; `onTensor(done, total)` after each. Returns the files written. */
export async function writeSafetensors(
  dir: string,
  tensors: readonly PlannedTensor[],
  shardBytes: number,
  metadata: Readonly<Record<string, string>> = { format: 'pt' },
  onTensor?: (done: number, total: number) => void,
): Promise<string[]> {
  const shards: Shard[] = [];
  for (const t of tensors) {
    let last = shards[shards.length - 1];
    if (!last || (last.bytes > 0 && last.bytes + t.byteLength > shardBytes)) shards.push((last = { file: '', tensors: [], bytes: 0 }));
    last.tensors.push(t);
    last.bytes += t.byteLength;
  }
  if (shards.length === 0) shards.push({ file: '', tensors: [], bytes: 0 });
  const named = shards.map((s, i) => ({ ...s, file: shards.length === 1 ? SINGLE_FILE_NAME : `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors` }));
  let done = 0;
  for (const shard of named) {
    // Written under a temporary name and renamed when complete, so a failure never leaves a file that looks whole.
    const partial = join(dir, `${shard.file}.partial`);
    const handle = await open(partial, 'w');
    try {
      await writeShard(handle, shard, metadata, () => onTensor?.(++done, tensors.length));
    } catch (err) {
      await handle.close();
      await rm(partial, { force: true });
      throw err;
    }
    await handle.close();
    await rename(partial, join(dir, shard.file));
  }
  if (named.length > 1) {
    const weightMap = Object.fromEntries(named.flatMap((s) => s.tensors.map((t) => [t.name, s.file])));
    const totalSize = tensors.reduce((n, t) => n + t.byteLength, 0);
    await writeFile(join(dir, INDEX_FILE_NAME), `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`);
  }
  return named.map((s) => s.file);
}

async function writeShard(handle: FileHandle, shard: Shard, metadata: Readonly<Record<string, string>>, onTensor: () => void): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of shard.tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.byteLength] };
    offset += t.byteLength;
  }
  // Padded to 8 bytes of UTF-8 (not characters: names need not be ASCII), so that data starts aligned.
  const raw = new TextEncoder().encode(JSON.stringify(header));
  const jsonBytes = new Uint8Array(Math.ceil(raw.byteLength / 8) * 8).fill(0x20);
  jsonBytes.set(raw);
  const length = new Uint8Array(8);
  new DataView(length.buffer).setBigUint64(0, BigInt(jsonBytes.byteLength), true);
  await handle.write(length);
  await handle.write(jsonBytes);
  for (const t of shard.tensors) {
    const bytes = await t.bytes();
    if (bytes.byteLength !== t.byteLength) throw new WrongTensorBytesError(t.name, t.byteLength, bytes.byteLength);
    await handle.write(bytes);
    onTensor();
  }
}

function pad(n: number): string {
  return String(n).padStart(5, '0');
}
