// Failures while locating and reading a model's weights. One class per failure; each message says what was
// expected, what was found, and what to do about it.

export type ModelLoadErrorCode =
  | 'weights_not_found'
  | 'missing_tensor'
  | 'checkpoint_tensors'
  | 'unsupported_dtype'
  | 'tensor_shape'
  | 'bad_safetensors_header'
  | 'bad_safetensors_index'
  | 'truncated_weights_file'
  | 'bad_model_config'
  | 'unsupported_model';

export abstract class ModelLoadError extends Error {
  abstract readonly code: ModelLoadErrorCode;

  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class WeightsNotFoundError extends ModelLoadError {
  readonly code = 'weights_not_found';

  constructor(
    readonly directory: string,
    readonly filesLookedFor: readonly string[],
    detail?: string,
  ) {
    super(
      `No safetensors weights in ${directory}: looked for ${filesLookedFor.join(', ')}` +
        (detail !== undefined ? ` (${detail})` : '') +
        '. Point the model path at a Hugging Face model directory that holds its *.safetensors files.',
    );
  }
}

export class MissingTensorError extends ModelLoadError {
  readonly code = 'missing_tensor';

  constructor(
    readonly tensorName: string,
    readonly filesSearched: readonly string[],
    readonly similarNames: readonly string[],
  ) {
    super(
      `Tensor "${tensorName}" is not in ${filesSearched.join(', ')}. ` +
        (similarNames.length > 0
          ? `Similar names present: ${similarNames.map((n) => `"${n}"`).join(', ')}. `
          : 'No similarly named tensor is present. ') +
        'The checkpoint may use another naming scheme or have fewer layers/experts than its config says.',
    );
  }
}

/** One tensor that a model needs and its checkpoint lacks or holds in another dtype or shape. */
export interface TensorProblem {
  readonly tensor: string;
  readonly kind: 'missing' | 'dtype' | 'shape' | 'packed';
  /** The file holding the tensor, or null when none does. */
  readonly file: string | null;
  /** What the model needs, e.g. "F32, F16 or BF16 [96, 64]". */
  readonly expected: string;
  /** What the file holds, e.g. "I8 [96, 64]"; null when missing. */
  readonly found: string | null;
}

/**
 * Every tensor a model needs that its checkpoint lacks or holds wrongly, found from the safetensors
 * headers when it loads: one error for all of them, so that a broken checkpoint fails before it serves
 * (and not later, at the first request routed to a broken expert) and is fixed in one go.
 */
export class CheckpointTensorsError extends ModelLoadError {
  readonly code = 'checkpoint_tensors';
  /** Problems listed in the message; the rest are counted. */
  static readonly maxListed = 20;

  constructor(
    readonly directory: string,
    readonly files: readonly string[],
    readonly problems: readonly TensorProblem[],
  ) {
    const listed = problems.slice(0, CheckpointTensorsError.maxListed).map((p) => `  ${describeProblem(p)}`);
    if (problems.length > listed.length) listed.push(`  ... and ${problems.length - listed.length} more`);
    const missing = problems.filter((p) => p.kind === 'missing').length;
    // A large model has tens of shards; the lines name the one holding each tensor found.
    const checked = files.length <= 3 ? files.join(', ') : `its ${files.length} files ${files[0]} ... ${files[files.length - 1]}`;
    super(
      `The weights in ${directory} do not match its config.json: ${missing} tensor${missing === 1 ? '' : 's'} missing, ` +
        `${problems.length - missing} with the wrong dtype or shape (checked against the headers of ${checked}):\n` +
        `${listed.join('\n')}\n` +
        'The checkpoint is incomplete or its config.json belongs to other weights: download the model again, or fix config.json.',
    );
  }
}

function describeProblem(p: TensorProblem): string {
  if (p.kind === 'missing') return `"${p.tensor}": missing; expected ${p.expected}`;
  const where = p.file === null ? '' : ` in ${p.file}`;
  if (p.kind === 'packed') return `"${p.tensor}"${where}: ${p.found ?? 'unreadable packed weight'}; expected ${p.expected}`;
  return `"${p.tensor}"${where}: ${p.found ?? '?'}; expected ${p.expected}`;
}

export class UnsupportedDTypeError extends ModelLoadError {
  readonly code = 'unsupported_dtype';

  constructor(
    readonly tensorName: string,
    readonly dtype: string,
    readonly supported: readonly string[],
  ) {
    super(
      `Tensor "${tensorName}" is stored as ${dtype}; expected one of ${supported.join(', ')}. ` +
        'Convert the checkpoint to one of those (quantised weights are not supported).',
    );
  }
}

export class TensorShapeError extends ModelLoadError {
  readonly code = 'tensor_shape';

  constructor(
    readonly tensorName: string,
    readonly expectedShape: readonly number[],
    readonly actualShape: readonly number[],
  ) {
    super(
      `Tensor "${tensorName}" has shape [${actualShape.join(', ')}]; expected [${expectedShape.join(', ')}]. ` +
        'Check that config.json belongs to these weights.',
    );
  }
}

export class BadSafetensorsHeaderError extends ModelLoadError {
  readonly code = 'bad_safetensors_header';

  constructor(
    readonly fileLabel: string,
    readonly detail: string,
  ) {
    super(`${fileLabel} is not a valid safetensors file: ${detail}. The file may be truncated or corrupt; download it again.`);
  }
}

export class BadSafetensorsIndexError extends ModelLoadError {
  readonly code = 'bad_safetensors_index';

  constructor(
    readonly indexPath: string,
    readonly detail: string,
  ) {
    super(`${indexPath} is not a valid safetensors index: ${detail}. Download the model's index and shards again.`);
  }
}

export class TruncatedWeightsFileError extends ModelLoadError {
  readonly code = 'truncated_weights_file';

  constructor(
    readonly fileLabel: string,
    readonly offset: number,
    readonly length: number,
    readonly bytesAvailable: number,
  ) {
    super(
      `${fileLabel}: wanted ${length} bytes at offset ${offset} but only ${bytesAvailable} could be read. ` +
        'The file was truncated or changed while the server was reading it; download it again and restart.',
    );
  }
}

export class ModelConfigError extends ModelLoadError {
  readonly code = 'bad_model_config';

  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(`${source} is not a usable model config:\n  ${problems.join('\n  ')}`);
  }
}

/** A model type or setting moe-serve does not implement; lists what it does support. */
export class UnsupportedModelError extends ModelLoadError {
  readonly code = 'unsupported_model';

  constructor(
    readonly what: string,
    readonly supported: readonly string[],
  ) {
    super(`unsupported ${what}; supported: ${supported.join(', ')}`);
  }
}
