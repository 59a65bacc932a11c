// Failures while locating and reading a model's weights. One class per failure; each message says what was
// expected, what was found, and what to do about it.

export type ModelLoadErrorCode =
  | 'weights_not_found'
  | 'missing_tensor'
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
