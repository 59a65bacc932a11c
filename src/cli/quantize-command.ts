// `moe-serve quantize`: writes a checkpoint whose weights are stored in their compute forms.
import { parseArgs } from 'node:util';
import { quantizeCheckpoint } from '../model/quantize-checkpoint.js';
import { UsageError } from './cli-error.js';
import { loadProgressBar } from './load-progress.js';
import { computeOptions, DEFAULT_MODEL_DIR, intFlag, parseFlag } from './model-options.js';

export const QUANTIZE_HELP = `Usage: moe-serve quantize --out DIR [options]

Writes a copy of a Hugging Face checkpoint with its weight matrices converted, so that it loads without
converting anything: int8/int4 as compressed-tensors pack-quantized tensors, declared in config.json's
quantization_config (as quantized checkpoints on the hub do); f16/f32 as float tensors. Norms, routers,
biases and embeddings are copied as they are, and so are the tokenizer and the other files.

  --model DIR          the checkpoint to convert (default: the embedded tiny-moe)
  --out DIR            where to write it: a new or empty directory (required)
  --expert-dtype T     f32 | f16 | int8 | int4 for the routed experts (default: as stored)
  --weight-dtype T     the same for the LM head, dense and shared-expert MLPs and attention (default: as stored)
  --attention-dtype T  the attention projections alone (default: --weight-dtype)
  --block-size N       elements per scale when quantizing (default 32)
  --zero-points        asymmetric quantization with a zero point per block (default symmetric)
  --shard-mb N         largest safetensors shard in MiB (default 2048)
`;

export async function quantizeCommand(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
      'expert-dtype': { type: 'string' },
      'weight-dtype': { type: 'string' },
      'attention-dtype': { type: 'string' },
      'block-size': { type: 'string' },
      'zero-points': { type: 'boolean' },
      'shard-mb': { type: 'string', default: '2048' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(QUANTIZE_HELP);
    return;
  }
  if (values.out === undefined) throw new UsageError('--out is required');
  const compute = computeOptions(values);
  if (compute.expertDtype === undefined && compute.weightDtype === undefined && compute.attentionDtype === undefined) {
    throw new UsageError('give --expert-dtype, --weight-dtype or --attention-dtype: there is nothing to convert');
  }
  const shardMb = parseFlag('shard-mb', intFlag(1), values['shard-mb']);
  const progress = loadProgressBar();
  const t0 = performance.now();
  let files: string[];
  try {
    files = await quantizeCheckpoint({
      modelDir: values.model ?? DEFAULT_MODEL_DIR,
      outDir: values.out,
      ...compute,
      shardBytes: shardMb * 1024 * 1024,
      onProgress: (done, total) => progress.update('converted tensors', done, total),
    });
  } finally {
    progress.stop();
  }
  process.stderr.write(`wrote ${files.join(', ')} to ${values.out} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
}
