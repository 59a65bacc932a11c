// Per-connection output limits: a client that stops reading leaves every token we send in a buffer in
// this process (node's writable buffer for SSE, the ws sender's queue for WebSockets), and that buffer
// would grow without bound. A connection whose unsent output stays over `bufferBytes` for `stallMs` is
// cut: its requests are cancelled and it is closed, so one client's memory stays bounded (by the limit
// plus what the engine makes in stallMs) and its slots go to clients that read.

export interface ClientLimits {
  /** Unsent bytes a connection may hold before it counts as not reading. */
  readonly bufferBytes: number;
  /** How long it may stay over bufferBytes before it is cut. */
  readonly stallMs: number;
  /** Requests one WebSocket may have running or waiting at once. */
  readonly maxSocketRequests: number;
}

export const DEFAULT_CLIENT_LIMITS: ClientLimits = { bufferBytes: 1 << 20, stallMs: 10_000, maxSocketRequests: 8 };

export class OutputWatch implements Disposable {
  private timer: NodeJS.Timeout | null = null;
  private cut = false;

  /**
   * @param unsent bytes written but not yet handed to the kernel
   * @param onStall called once, when the connection has stayed over the limit for stallMs
   */
  constructor(
    private readonly limits: ClientLimits,
    private readonly unsent: () => number,
    private readonly onStall: () => void,
  ) {}

  /** Call after every write. */
  wrote(): void {
    if (this.cut || this.timer || this.unsent() <= this.limits.bufferBytes) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.unsent() <= this.limits.bufferBytes) return;
      this.cut = true;
      this.onStall();
    }, this.limits.stallMs);
    // A pending check must not keep a closing server alive.
    this.timer.unref();
  }

  [Symbol.dispose](): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** The reason a stalled connection is given, in the log and in a WebSocket close frame. */
export function stallReason(limits: ClientLimits): string {
  return `client not reading: over ${Math.round(limits.bufferBytes / 1024)} KiB of output unsent for ${limits.stallMs / 1000} s`;
}
