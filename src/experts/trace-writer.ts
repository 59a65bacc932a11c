// Writes the routing trace (`--trace FILE`): a header line, then one line per (request, step, sparse
// layer) with the experts each token was routed to and the router lookahead's predictions.
import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';
import type { RoutingEvent, RoutingObserver } from '../engine/forward.js';
import type { TraceHeader, TraceLine } from './trace-format.js';

export class TraceWriter implements AsyncDisposable {
  private requests = 0;
  private failure: Error | null = null;

  private constructor(private readonly out: WriteStream) {
    out.on('error', (err) => (this.failure = err));
  }

  static async open(path: string, header: Omit<TraceHeader, 'trace' | 'version'>): Promise<TraceWriter> {
    const out = createWriteStream(path, { flags: 'w' });
    await once(out, 'open');
    const writer = new TraceWriter(out);
    writer.write({ trace: 'moe-serve routing trace', version: 1, ...header });
    return writer;
  }

  /** An observer for one request: its own request number, steps counted as its positions advance. */
  request(): RoutingObserver {
    const request = this.requests++;
    let step = -1;
    let position = -1;
    return {
      onRouting: (e: RoutingEvent) => {
        if (e.position !== position) {
          position = e.position;
          step++;
        }
        const r = e.routing;
        const line: TraceLine = {
          request,
          step,
          layer: e.layer,
          experts: Array.from({ length: r.tokens }, (_, t) => [...r.experts.subarray(t * r.topK, (t + 1) * r.topK)]),
          lookahead: e.lookahead.map((l) => [...l]),
        };
        this.write(line);
      },
    };
  }

  private write(value: object): void {
    if (this.failure) throw this.failure;
    this.out.write(`${JSON.stringify(value)}\n`);
  }

  async close(): Promise<void> {
    this.out.end();
    await once(this.out, 'finish');
    if (this.failure) throw this.failure;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.out.writableFinished) await this.close();
  }
}
