// Hugging Face safetensors: parse the header, then read single tensors by byte range on demand.
// No file is ever loaded whole. Format (https://huggingface.co/docs/safetensors): u64 LE header length N,
// N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {...}}, then the data;
// data_offsets are relative to the end of the header.

import { constants as fsConstants } from 'node:fs';
import { access, open, readFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';

import { isWeightDType, toFloat32, type WeightDType } from './dtype.js';
import {
  BadSafetensorsHeaderError,
  BadSafetensorsIndexError,
  MissingTensorError,
  TensorShapeError,
  TruncatedWeightsFileError,
  UnsupportedDTypeError,
  WeightsNotFoundError,
} from './errors.js';

export interface TensorEntry {
  readonly name: string;
  /** As written in the file: 'F32', 'BF16', 'I64', ... */
  readonly dtype: string;
  readonly shape: readonly number[];
  /** The file holding the tensor (its path, for files on disk). */
  readonly fileLabel: string;
  /** Absolute offset of the first byte within the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** Random-access reads from one file; concurrent reads are allowed. */
export interface ByteRangeReader {
  readonly byteLength: number;
  /** Exactly `length` bytes from `offset`, in a fresh buffer that the caller owns. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Fills `target` with the bytes from `offset` on (a piece of a larger read). */
  readInto(offset: number, target: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

function checkRange(fileLabel: string, fileBytes: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new RangeError(`Invalid byte range offset=${offset} length=${length} for ${fileLabel}`);
  }
  if (offset + length > fileBytes) {
    throw new TruncatedWeightsFileError(fileLabel, offset, length, Math.max(0, fileBytes - offset));
  }
}

/**
 * A buffer for `length` bytes about to be read: its own memory (never a slice of Node's pool, so that it
 * can be kept or handed on), left uninitialised because the read overwrites every byte.
 */
export function allocateReadBuffer(length: number): Uint8Array {
  const owned = Buffer.allocUnsafeSlow(length);
  return new Uint8Array(owned.buffer, owned.byteOffset, length);
}

/** Reads with positioned reads (pread) on one handle, so any number of reads may be in flight at once. */
export class FileRangeReader implements ByteRangeReader {
  // FileHandle.read takes at most 2 GiB - 1 per call; big tensors (embeddings) are read in pieces.
  private static readonly maxChunkBytes = 1 << 30;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly byteLength: number,
  ) {}

  static async open(path: string): Promise<FileRangeReader> {
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      return new FileRangeReader(path, handle, size);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(this.path, this.byteLength, offset, length);
    const bytes = allocateReadBuffer(length);
    await this.readInto(offset, bytes);
    return bytes;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    const length = target.byteLength;
    checkRange(this.path, this.byteLength, offset, length);
    let filled = 0;
    while (filled < length) {
      const want = Math.min(length - filled, FileRangeReader.maxChunkBytes);
      const { bytesRead } = await this.handle.read(target, filled, want, offset + filled);
      if (bytesRead === 0) throw new TruncatedWeightsFileError(this.path, offset, length, filled);
      filled += bytesRead;
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** A ByteRangeReader over bytes in memory: for tests, and for weights built on the fly. */
export class BytesRangeReader implements ByteRangeReader {
  constructor(
    private readonly bytes: Uint8Array,
    readonly label = 'in-memory safetensors',
  ) {}

  get byteLength(): number {
    return this.bytes.byteLength;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(this.label, this.bytes.byteLength, offset, length);
    return this.bytes.slice(offset, offset + length);
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    checkRange(this.label, this.bytes.byteLength, offset, target.byteLength);
    target.set(this.bytes.subarray(offset, offset + target.byteLength));
  }

  async close(): Promise<void> {}
}

/** Headers beyond this are corrupt rather than large: a 100k-tensor checkpoint needs about 10 MB. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Element sizes of the safetensors dtypes, to check each tensor's byte length against its shape. */
const SAFETENSORS_ELEMENT_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1,
  U16: 2, I16: 2, F16: 2, BF16: 2,
  U32: 4, I32: 4, F32: 4,
  U64: 8, I64: 8, F64: 8,
};

const tensorHeaderSchema = z.object({
  dtype: z.string().min(1),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z
    .tuple([z.number().int().nonnegative(), z.number().int().nonnegative()])
    .refine(([begin, end]) => end >= begin, { message: 'end is before begin' }),
});

const headerSchema = z.record(z.string(), z.unknown());

/**
 * Parses a safetensors header (the JSON after the 8-byte length) into entries whose offsets are absolute
 * within the file; `dataStart` is 8 + the header length. Entries come in data order.
 */
export function parseSafetensorsHeader(headerJson: string | Uint8Array, dataStart: number, fileLabel: string): TensorEntry[] {
  let text: string;
  if (typeof headerJson === 'string') {
    text = headerJson;
  } else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(headerJson);
    } catch {
      throw new BadSafetensorsHeaderError(fileLabel, 'the header is not valid UTF-8');
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new BadSafetensorsHeaderError(fileLabel, `the header is not valid JSON (${(error as Error).message})`);
  }
  const header = headerSchema.safeParse(json);
  if (!header.success) throw new BadSafetensorsHeaderError(fileLabel, 'the header is not a JSON object');

  const entries: TensorEntry[] = [];
  for (const [name, value] of Object.entries(header.data)) {
    if (name === '__metadata__') continue;
    const parsed = tensorHeaderSchema.safeParse(value);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'entry'}: ${i.message}`).join('; ');
      throw new BadSafetensorsHeaderError(fileLabel, `tensor "${name}" has an invalid entry (${problems})`);
    }
    const { dtype, shape, data_offsets: [begin, end] } = parsed.data;
    const byteLength = end - begin;
    const elementBytes = SAFETENSORS_ELEMENT_BYTES[dtype];
    if (elementBytes !== undefined) {
      const expected = shape.reduce((n, d) => n * d, 1) * elementBytes;
      if (expected !== byteLength) {
        throw new BadSafetensorsHeaderError(
          fileLabel,
          `tensor "${name}" (${dtype} [${shape.join(', ')}]) should take ${expected} bytes but data_offsets [${begin}, ${end}] give ${byteLength}`,
        );
      }
    }
    entries.push({ name, dtype, shape, fileLabel, byteOffset: dataStart + begin, byteLength });
  }
  return entries.sort((a, b) => a.byteOffset - b.byteOffset);
}

/** Reads and validates the header of the safetensors file behind `reader`, checking every tensor lies within it. */
export async function readSafetensorsEntries(reader: ByteRangeReader, fileLabel: string): Promise<TensorEntry[]> {
  if (reader.byteLength < 8) {
    throw new BadSafetensorsHeaderError(fileLabel, `the file is ${reader.byteLength} bytes, too short for the 8-byte header length`);
  }
  const lengthBytes = await reader.read(0, 8);
  const headerBytes = new DataView(lengthBytes.buffer, lengthBytes.byteOffset, 8).getBigUint64(0, true);
  if (headerBytes > BigInt(MAX_HEADER_BYTES)) {
    throw new BadSafetensorsHeaderError(fileLabel, `the header length is ${headerBytes} bytes, above the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const dataStart = 8 + Number(headerBytes);
  if (dataStart > reader.byteLength) {
    throw new BadSafetensorsHeaderError(
      fileLabel,
      `the header length is ${headerBytes} bytes but the file has only ${reader.byteLength - 8} bytes after the length`,
    );
  }
  const entries = parseSafetensorsHeader(await reader.read(8, Number(headerBytes)), dataStart, fileLabel);
  for (const entry of entries) {
    if (entry.byteOffset + entry.byteLength > reader.byteLength) {
      throw new BadSafetensorsHeaderError(
        fileLabel,
        `tensor "${entry.name}" ends at byte ${entry.byteOffset + entry.byteLength} but the file has ${reader.byteLength} bytes`,
      );
    }
  }
  return entries;
}

export const SINGLE_FILE_NAME = 'model.safetensors';
export const INDEX_FILE_NAME = 'model.safetensors.index.json';

const indexSchema = z.object({ weight_map: z.record(z.string(), z.string()) });

export interface SafetensorsSource {
  readonly fileLabel: string;
  readonly reader: ByteRangeReader;
}

const FLOAT_DTYPES: readonly WeightDType[] = ['F32', 'F16', 'BF16'];

/** Where tensors are read from by name: an archive, or bytes already read for them (experts/expert-disk-reader.ts). */
export interface TensorSource {
  has(name: string): boolean;
  entry(name: string): TensorEntry;
  readBytes(name: string): Promise<Uint8Array>;
}

/**
 * A model's weights, in one safetensors file or in shards: tensor names, and reads of single tensors.
 * Reads may run concurrently. Closing while reads are in flight is not supported.
 */
export class SafetensorsArchive implements TensorSource, AsyncDisposable {
  private readonly entries = new Map<string, TensorEntry>();
  private readonly readers = new Map<string, ByteRangeReader>();
  private tensorBytesRead = 0;
  /** The files it reads, by label (their paths, for files on disk), in the order given. */
  readonly fileLabels: readonly string[];

  private constructor(sources: readonly SafetensorsSource[], entries: readonly TensorEntry[]) {
    for (const { fileLabel, reader } of sources) this.readers.set(fileLabel, reader);
    for (const entry of entries) this.entries.set(entry.name, entry);
    this.fileLabels = sources.map((s) => s.fileLabel);
  }

  /**
   * Opens the weights of a Hugging Face model directory: the shards named by model.safetensors.index.json
   * when it exists, else model.safetensors.
   */
  static async open(dir: string): Promise<SafetensorsArchive> {
    const indexPath = join(dir, INDEX_FILE_NAME);
    if (await fileExists(indexPath)) {
      const weightMap = await readWeightMap(indexPath);
      const shardPaths = shardPathsOf(weightMap, indexPath);
      const missing: string[] = [];
      for (const path of shardPaths) if (!(await fileExists(path))) missing.push(basename(path));
      if (missing.length > 0) {
        throw new WeightsNotFoundError(dir, shardPaths.map((p) => basename(p)), `${INDEX_FILE_NAME} names shards that are missing: ${missing.join(', ')}`);
      }
      const archive = await SafetensorsArchive.fromFiles(shardPaths);
      try {
        archive.checkWeightMap(indexPath, weightMap);
      } catch (error) {
        await archive.close();
        throw error;
      }
      return archive;
    }
    const singlePath = join(dir, SINGLE_FILE_NAME);
    if (await fileExists(singlePath)) return SafetensorsArchive.fromFiles([singlePath]);
    throw new WeightsNotFoundError(dir, [INDEX_FILE_NAME, SINGLE_FILE_NAME]);
  }

  /** Opens the given safetensors files as one archive. */
  static async fromFiles(paths: readonly string[]): Promise<SafetensorsArchive> {
    const sources: SafetensorsSource[] = [];
    try {
      for (const path of paths) sources.push({ fileLabel: path, reader: await FileRangeReader.open(path) });
      return await SafetensorsArchive.fromSources(sources);
    } catch (error) {
      await Promise.allSettled(sources.map((s) => s.reader.close()));
      throw error;
    }
  }

  /** An archive over already-open readers (it takes ownership and closes them); names must be unique across them. */
  static async fromSources(sources: readonly SafetensorsSource[]): Promise<SafetensorsArchive> {
    const perFile = await Promise.all(sources.map((s) => readSafetensorsEntries(s.reader, s.fileLabel)));
    const seen = new Map<string, string>();
    for (const entry of perFile.flat()) {
      const other = seen.get(entry.name);
      if (other !== undefined) {
        throw new BadSafetensorsHeaderError(entry.fileLabel, `tensor "${entry.name}" is also in ${other}`);
      }
      seen.set(entry.name, entry.fileLabel);
    }
    return new SafetensorsArchive(sources, perFile.flat());
  }

  /** Tensor data read so far, in bytes (headers not counted). */
  get bytesRead(): number {
    return this.tensorBytesRead;
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  /** The tensor's header entry, or undefined when no file holds it. */
  find(name: string): TensorEntry | undefined {
    return this.entries.get(name);
  }

  entry(name: string): TensorEntry {
    const entry = this.entries.get(name);
    if (entry === undefined) throw new MissingTensorError(name, [...this.readers.keys()], similarNames(name, this.entries.keys(), 5));
    return entry;
  }

  /** The tensor's raw little-endian bytes, in a fresh buffer the caller owns. */
  async readBytes(name: string): Promise<Uint8Array> {
    const entry = this.entry(name);
    const reader = this.readers.get(entry.fileLabel);
    if (reader === undefined) throw new Error(`Cannot read "${name}": the weights archive has been closed`);
    const bytes = await reader.read(entry.byteOffset, entry.byteLength);
    this.tensorBytesRead += bytes.byteLength;
    return bytes;
  }

  /** Fills `target` with the bytes of file `fileLabel` from `offset` on: one piece of a read spanning several tensors. */
  async readSpanInto(fileLabel: string, offset: number, target: Uint8Array): Promise<void> {
    const reader = this.readers.get(fileLabel);
    if (reader === undefined) throw new Error(`Cannot read ${fileLabel}: the weights archive has been closed`);
    await reader.readInto(offset, target);
    this.tensorBytesRead += target.byteLength;
  }

  /** The tensor as float32 (row-major, as stored), checking its dtype and, when given, its shape. */
  async readFloat32(name: string, expectedShape?: readonly number[]): Promise<Float32Array> {
    const entry = this.entry(name);
    if (!isWeightDType(entry.dtype)) throw new UnsupportedDTypeError(name, entry.dtype, FLOAT_DTYPES);
    if (expectedShape !== undefined && !sameShape(expectedShape, entry.shape)) {
      throw new TensorShapeError(name, expectedShape, entry.shape);
    }
    return toFloat32(await this.readBytes(name), entry.dtype);
  }

  async close(): Promise<void> {
    const readers = [...this.readers.values()];
    this.readers.clear();
    await Promise.all(readers.map((r) => r.close()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The index must agree with the shards' own headers about where each tensor is. */
  private checkWeightMap(indexPath: string, weightMap: Readonly<Record<string, string>>): void {
    for (const [name, shard] of Object.entries(weightMap)) {
      const entry = this.entries.get(name);
      if (entry === undefined || basename(entry.fileLabel) !== shard) {
        throw new BadSafetensorsIndexError(
          indexPath,
          `it puts tensor "${name}" in ${shard}, but ${entry === undefined ? 'no shard holds it' : `it is in ${basename(entry.fileLabel)}`}`,
        );
      }
    }
  }
}

async function fileExists(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.R_OK);
    return true;
  } catch {
    return false;
  }
}

async function readWeightMap(indexPath: string): Promise<Record<string, string>> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (error) {
    throw new BadSafetensorsIndexError(indexPath, `it is not valid JSON (${(error as Error).message})`);
  }
  const parsed = indexSchema.safeParse(json);
  if (!parsed.success) throw new BadSafetensorsIndexError(indexPath, 'it has no "weight_map" object of tensor name -> shard file');
  return parsed.data.weight_map;
}

/** The distinct shard files named by the index, in first-mention order, as paths beside the index. */
function shardPathsOf(weightMap: Readonly<Record<string, string>>, indexPath: string): string[] {
  const dir = dirname(indexPath);
  const shards = [...new Set(Object.values(weightMap))];
  for (const shard of shards) {
    // Shards live beside the index; a path here could point anywhere on the machine.
    if (basename(shard) !== shard || shard === '..' || shard === '.') {
      throw new BadSafetensorsIndexError(indexPath, `shard "${shard}" is not a plain file name`);
    }
  }
  if (shards.length === 0) throw new BadSafetensorsIndexError(indexPath, 'its weight_map is empty');
  return shards.map((s) => join(dir, s));
}

/** Equal rank and equal dimensions. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Up to `limit` names sharing the longest common prefix + suffix with `wanted` (e.g. the same weight in other layers). */
function similarNames(wanted: string, names: Iterable<string>, limit: number): string[] {
  const scored: { name: string; score: number }[] = [];
  for (const name of names) {
    let prefix = 0;
    while (prefix < wanted.length && prefix < name.length && wanted[prefix] === name[prefix]) prefix++;
    let suffix = 0;
    const maxSuffix = Math.min(wanted.length, name.length) - prefix;
    while (suffix < maxSuffix && wanted[wanted.length - 1 - suffix] === name[name.length - 1 - suffix]) suffix++;
    if (prefix + suffix > 0) scored.push({ name, score: prefix + suffix });
  }
  scored.sort((a, b) => b.score - a.score || a.name.localeCompare(b.name, 'en', { numeric: true }));
  return scored.slice(0, limit).map((s) => s.name);
}
