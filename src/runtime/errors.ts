/** The requested execution provider cannot be used on this machine. */
export class DeviceUnavailableError extends Error {
  readonly code = 'device_unavailable';

  constructor(
    readonly device: string,
    reason: string,
  ) {
    super(`device '${device}' is unavailable: ${reason}`);
    this.name = 'DeviceUnavailableError';
  }
}

/** A session failed to build or run; `feeds` lists each input's type, shape and location. */
export class SessionRunError extends Error {
  readonly code = 'session_run_failed';

  constructor(
    readonly session: string,
    reason: string,
    readonly feeds: string,
  ) {
    super(`onnxruntime session '${session}' failed: ${reason}${feeds ? `\ninputs:\n${feeds}` : ''}`);
    this.name = 'SessionRunError';
  }
}
