// `npm run make-model -- --preset NAME --out DIR [--layers N] [--seed S] [--shard-mb N] [--force] [--no-measure]`:
// writes a synthetic checkpoint of a real MoE model's size in Hugging Face layout (sharded bf16
// safetensors, index, Mixtral config.json, the embedded tokenizer), whose routing has a trained model's
// statistics (synthetic-weights.ts), so the expert cache can be measured at real sizes without
// downloading real weights. Memory holds one tensor at a time.
import { copyFile, mkdir, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { z } from 'zod';
import { UsageError } from '../src/cli/cli-error.js';
import { DEFAULT_MODEL_DIR, intFlag, parseFlag } from '../src/cli/model-options.js';
import { writeSafetensors } from '../src/model/safetensors-writer.js';
import { MODEL_PRESETS, PRESET_NAMES, presetConfigJson, VOCAB_SIZE, type ModelPreset, type PresetName } from './model-presets.js';
import { printRoutingStats } from './routing-stats.js';
import { runScript } from './run-script.js';
import { plannedBytes, syntheticTensors } from './synthetic-weights.js';

export const MAKE_MODEL_HELP = `Usage: npm run make-model -- --preset NAME --out DIR [options]

  --preset NAME    ${PRESET_NAMES.join(' | ')}
  --out DIR        where to write the model (must be empty or absent unless --force)
  --layers N       number of decoder layers (default: the preset's); layer l is the same whatever N
  --seed S         random seed, 0 to 2^32-1 (default 0); the same seed writes the same bytes
  --shard-mb N     most MiB per safetensors shard (default 2048)
  --force          write into a non-empty --out (files of an earlier model there are replaced)
  --no-measure     do not run routing-stats afterwards (it runs by itself for models under 1 GiB)
`;

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
/** Routing statistics run by themselves below this size: a bigger model takes minutes to measure. */
const MEASURE_BELOW_BYTES = GIB;
/** Files of the embedded model every synthetic model shares: the vocabulary, chat template and generation settings. */
const COPIED_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json'] as const;

/** There is not room on the disk for the model; says how much is needed and how much there is. */
export class DiskSpaceError extends Error {
  readonly code = 'disk_space';

  constructor(
    readonly dir: string,
    readonly neededBytes: number,
    readonly freeBytes: number,
  ) {
    super(`the model needs ${gib(neededBytes)} but ${dir} has ${gib(freeBytes)} free; give --layers fewer layers or another --out`);
    this.name = 'DiskSpaceError';
  }
}

export interface MakeModelOptions {
  readonly preset: PresetName;
  readonly model: ModelPreset;
  readonly outDir: string;
  readonly seed: number;
  readonly shardBytes: number;
  readonly force: boolean;
  readonly measure: boolean;
}

export function parseMakeModelArgs(argv: readonly string[]): MakeModelOptions | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      preset: { type: 'string' },
      layers: { type: 'string' },
      out: { type: 'string' },
      seed: { type: 'string', default: '0' },
      'shard-mb': { type: 'string', default: '2048' },
      force: { type: 'boolean', default: false },
      'no-measure': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return 'help';
  if (values.preset === undefined) throw new UsageError(`--preset is required: one of ${PRESET_NAMES.join(', ')}`);
  const preset = parseFlag('preset', z.enum(PRESET_NAMES as [PresetName, ...PresetName[]], { message: `unknown preset; known presets: ${PRESET_NAMES.join(', ')}` }), values.preset);
  if (values.out === undefined) throw new UsageError('--out DIR is required');
  const base: ModelPreset = MODEL_PRESETS[preset];
  const layers = values.layers === undefined ? base.numLayers : parseFlag('layers', intFlag(1).max(1000), values.layers);
  return {
    preset,
    model: { ...base, numLayers: layers },
    outDir: resolve(values.out),
    seed: parseFlag('seed', intFlag(0).max(0xffffffff), values.seed),
    shardBytes: parseFlag('shard-mb', z.coerce.number().positive().max(1 << 20), values['shard-mb']) * MIB,
    force: values.force ?? false,
    measure: !(values['no-measure'] ?? false),
  };
}

function gib(bytes: number): string {
  return bytes >= GIB ? `${(bytes / GIB).toFixed(2)} GiB` : `${(bytes / MIB).toFixed(1)} MiB`;
}

/** Files in `dir`, or none when it does not exist. */
async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Free bytes on the filesystem that holds `dir` (or would: its nearest existing parent). */
async function freeBytes(dir: string): Promise<number> {
  for (let d = dir; ; d = dirname(d)) {
    try {
      const s = await statfs(d);
      return s.bavail * s.bsize;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(d) === d) throw err;
    }
  }
}

/** A model file an earlier run may have left: removed under --force so that no stale shard stays beside the new ones. */
const isModelFile = (f: string) => /^model(-\d+-of-\d+)?\.safetensors(\.partial)?$/.test(f) || f === 'model.safetensors.index.json' || f === 'config.json' || (COPIED_FILES as readonly string[]).includes(f);

export async function makeModel(o: MakeModelOptions, log: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<{ bytes: number; seconds: number }> {
  const existing = await listDir(o.outDir);
  if (existing.length > 0 && !o.force) throw new UsageError(`--out ${o.outDir} is not empty (${existing.length} entries); give --force to write into it`);
  const tensors = syntheticTensors(o.model, o.seed, VOCAB_SIZE);
  const total = plannedBytes(tensors);
  const p = o.model;
  log(`${o.preset}: ${p.numLayers} layers, hidden ${p.hiddenSize}, ${p.numExperts} experts of ${p.expertIntermediateSize} (top-${p.topK}), seed ${o.seed}: ${tensors.length} tensors, ${gib(total)} to ${o.outDir}`);
  const free = await freeBytes(o.outDir);
  // Files an earlier model left under --force are not counted as free: erring on the safe side.
  if (total > free) throw new DiskSpaceError(o.outDir, total, free);

  await mkdir(o.outDir, { recursive: true });
  for (const f of existing.filter(isModelFile)) await rm(join(o.outDir, f), { force: true });
  const cumulative: number[] = [];
  tensors.reduce((n, t) => (cumulative.push(n + t.byteLength), n + t.byteLength), 0);
  // cli-progress draws nothing when stderr is not a terminal, so logs and tests stay clean.
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: 'writing [{bar}] {percentage}% {value}/{total} MiB {rate} MB/s', hideCursor: true, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  bar.start(Math.ceil(total / MIB), 0, { rate: '-' });
  const started = performance.now();
  let files: string[];
  try {
    files = await writeSafetensors(o.outDir, tensors, o.shardBytes, { format: 'pt' }, (done) => {
      const bytes = cumulative[done - 1] ?? 0;
      bar.update(Math.floor(bytes / MIB), { rate: (bytes / 1e6 / ((performance.now() - started) / 1000)).toFixed(0) });
    });
  } finally {
    bar.stop();
  }
  const seconds = (performance.now() - started) / 1000;
  await writeFile(join(o.outDir, 'config.json'), `${JSON.stringify(presetConfigJson(p), null, 2)}\n`);
  for (const f of COPIED_FILES) await copyFile(join(DEFAULT_MODEL_DIR, f), join(o.outDir, f));
  log(`wrote ${total} bytes (${gib(total)}) in ${files.length} shard${files.length === 1 ? '' : 's'} in ${seconds.toFixed(1)} s: ${(total / 1e6 / seconds).toFixed(0)} MB/s`);
  return { bytes: total, seconds };
}

await runScript('make-model', import.meta.url, MAKE_MODEL_HELP, async (argv) => {
  const o = parseMakeModelArgs(argv);
  if (o === 'help') {
    process.stdout.write(MAKE_MODEL_HELP);
    return;
  }
  const { bytes } = await makeModel(o);
  const stats = { modelDir: o.outDir, prompts: 8, tokens: 32 };
  process.stdout.write(`routing statistics: npm run routing-stats -- --model ${o.outDir} --prompts ${stats.prompts} --tokens ${stats.tokens}\n`);
  if (o.measure && bytes < MEASURE_BELOW_BYTES) {
    process.stdout.write('measuring (--no-measure skips)...\n');
    await printRoutingStats(stats);
  }
});
