// Writes the routing trace (`--trace FILE`): a header line, then one line per (request, step, sparse
// layer) with the forward pass it ran in, the experts each token was routed to, and the router
// lookahead's predictions with their votes; a request's first line also carries its prompt's token ids.
//
// A trace is a diagnostic: when writing it fails (a full disk, say) the writer reports the error once
// and turns itself off, and requests go on. The observer runs inside the forward pass, so an error
// thrown there would fail every request while /health still said 200.
import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';
import { finished } from 'node:stream/promises';
import type { RoutingEvent, RoutingObserver } from '../engine/forward.js';
import type { TraceHeader, TraceLine } from './trace-format.js';

/** Writing the routing trace failed; the trace stops there and serving goes on. */
export class TraceWriteError extends Error {
  readonly code = 'trace_write_failed';

  constructor(
    readonly path: string,
    override readonly cause: Error,
  ) {
    super(`routing trace ${path}: writing failed (${cause.message}); tracing is off from here on, requests go on. Free space or give --trace another path, and restart to trace again.`, { cause });
    this.name = 'TraceWriteError';
  }
}

export interface TraceWriterOptions {
  /** Called once, with the first write error; default: one line on stderr. */
  readonly onError?: (error: TraceWriteError) => void;
}

const writeToStderr = (error: TraceWriteError) => void process.stderr.write(`moe-serve: ${error.message}\n`);

export class TraceWriter implements AsyncDisposable {
  private requests = 0;
  private failure: TraceWriteError | null = null;
  private closing: Promise<TraceWriteError | null> | null = null;

  private constructor(
    readonly path: string,
    private readonly out: WriteStream,
    private readonly onError: (error: TraceWriteError) => void,
  ) {
    // Stream errors arrive here, after the write that caused them; this listener also keeps them from
    // being thrown as unhandled 'error' events.
    out.on('error', (err) => this.fail(err));
  }

  /** Opens `path` for writing (a failure to open it throws) and writes the header line. */
  static async open(path: string, header: Omit<TraceHeader, 'trace' | 'version'>, options: TraceWriterOptions = {}): Promise<TraceWriter> {
    const out = createWriteStream(path, { flags: 'w' });
    await once(out, 'open');
    const writer = new TraceWriter(path, out, options.onError ?? writeToStderr);
    writer.write({ trace: 'moe-serve routing trace', version: 1, ...header });
    return writer;
  }

  /** Whether writing failed, so that the trace is off (health reports it). */
  get failed(): boolean {
    return this.failure !== null;
  }

  /** The write error that turned the trace off, or null. */
  get error(): TraceWriteError | null {
    return this.failure;
  }

  /**
   * An observer for one request: its own request number, steps counted as its positions advance, and
   * `promptTokens` (when given) written on its first line. Never throws.
   */
  request(promptTokens?: readonly number[]): RoutingObserver {
    const request = this.requests++;
    let step = -1;
    let position = -1;
    let prompt = promptTokens === undefined ? undefined : [...promptTokens];
    return {
      onRouting: (e: RoutingEvent) => {
        if (e.position !== position) {
          position = e.position;
          step++;
        }
        if (this.failure) return;
        const r = e.routing;
        const line: TraceLine = {
          request,
          step,
          pass: e.pass,
          layer: e.layer,
          experts: Array.from({ length: r.tokens }, (_, t) => [...r.experts.subarray(t * r.topK, (t + 1) * r.topK)]),
          lookahead: e.lookahead.map((l) => [...l]),
          lookahead_votes: e.lookaheadVotes.map((v) => [...v]),
          ...(prompt === undefined ? {} : { prompt_tokens: prompt }),
        };
        prompt = undefined;
        this.write(line);
      },
    };
  }

  private write(value: object): void {
    if (this.failure || this.closing) return;
    this.out.write(`${JSON.stringify(value)}\n`);
  }

  /** Turns the trace off and reports the error, the first time only. */
  private fail(err: unknown): void {
    if (this.failure) return;
    this.failure = new TraceWriteError(this.path, err instanceof Error ? err : new Error(String(err)));
    this.out.destroy();
    this.onError(this.failure);
  }

  /**
   * Flushes and closes the file. Resolves with the write error that turned the trace off (already
   * reported through onError), or null; it does not throw for it.
   */
  close(): Promise<TraceWriteError | null> {
    this.closing ??= (async () => {
      if (!this.out.destroyed) this.out.end();
      try {
        await finished(this.out);
      } catch (err) {
        // A failed final flush, or the stream already destroyed by the error reported earlier.
        this.fail(err);
      }
      return this.failure;
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
