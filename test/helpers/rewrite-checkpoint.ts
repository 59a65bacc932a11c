// Copies a model directory to a temporary one with its weights rewritten: tests of broken checkpoints
// (a tensor missing, of another shape or dtype, or moved to the end of the file to be cut off).
import { copyFile, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsArchive } from '../../src/model/safetensors.js';
import { buildSafetensors, type TensorBytes } from './safetensors-bytes.js';

export interface CheckpointCopy extends AsyncDisposable {
  readonly dir: string;
}

/**
 * `from`'s files in a fresh temporary directory, its weights as one model.safetensors holding the
 * tensors `edit` returns (given them in file order). Dispose it to delete the directory.
 */
export async function rewriteCheckpoint(from: string, edit: (tensors: TensorBytes[]) => TensorBytes[]): Promise<CheckpointCopy> {
  const tensors: TensorBytes[] = [];
  {
    await using archive = await SafetensorsArchive.open(from);
    for (const name of archive.names()) {
      const { dtype, shape } = archive.entry(name);
      tensors.push({ name, dtype, shape, data: await archive.readBytes(name) });
    }
  }
  const dir = await mkdtemp(join(tmpdir(), 'moe-serve-ckpt-'));
  try {
    for (const file of await readdir(from)) {
      if (file.endsWith('.safetensors') || file === 'model.safetensors.index.json') continue;
      if ((await stat(join(from, file))).isFile()) await copyFile(join(from, file), join(dir, file));
    }
    await writeFile(join(dir, 'model.safetensors'), buildSafetensors(edit(tensors)));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, [Symbol.asyncDispose]: () => rm(dir, { recursive: true, force: true }) };
}

/** Edits: without the named tensors. */
export const without =
  (...names: string[]) =>
  (tensors: TensorBytes[]): TensorBytes[] => {
    for (const n of names) if (!tensors.some((t) => t.name === n)) throw new Error(`no tensor ${n} to remove`);
    return tensors.filter((t) => !names.includes(t.name));
  };

/** Edits: the named tensor's header changed (its bytes kept; give a dtype and shape of the same byte size). */
export const relabel =
  (name: string, change: { dtype?: string; shape?: readonly number[] }) =>
  (tensors: TensorBytes[]): TensorBytes[] => {
    if (!tensors.some((t) => t.name === name)) throw new Error(`no tensor ${name} to change`);
    return tensors.map((t) => (t.name === name ? { ...t, ...change } : t));
  };

/** Edits: the named tensors moved to the end of the file (in their order), where truncating it cuts them off. */
export const toEnd =
  (...names: string[]) =>
  (tensors: TensorBytes[]): TensorBytes[] => {
    const moved = names.map((n) => {
      const t = tensors.find((x) => x.name === n);
      if (!t) throw new Error(`no tensor ${n} to move`);
      return t;
    });
    return [...tensors.filter((t) => !names.includes(t.name)), ...moved];
  };
