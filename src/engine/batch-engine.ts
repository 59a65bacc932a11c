// The engine loop of continuous batching: the scheduler decides each step's tokens, one batched forward
// pass computes them, each sequence samples and streams its token, and finished or cancelled sequences
// leave at once (iteration-level scheduling, as in Orca and vLLM). New requests join at the next step.
import type { FinishedStatus } from '../scheduler/request-status.js';
import { RequestStatus } from '../scheduler/request-status.js';
import { Scheduler, type SchedulerConfig, type SchedulerOutput } from '../scheduler/scheduler.js';
import type { Token } from '../tokenizer/token.js';
import { CompletionState, EmptyPromptError, type CompletionOutput, type CompletionRequest, type FinishReason, type GeneratedChunk } from './completion-state.js';

export type { CompletionRequest } from './completion-state.js';
import type { BatchItem, RoutingObserver } from './forward.js';
import { ContextLengthError, kvRowsFor, type SequenceKvCache } from './kv-cache.js';
import type { MoeModel } from './moe-model.js';
import { SequenceSampler } from './sequence-sampler.js';


export interface CompletionResult extends CompletionOutput {
  readonly id: string;
  readonly promptTokens: number;
  /** Tokens generated, an end-of-sequence token included. */
  readonly completionTokens: number;
}

/** A request's tokens as they are produced, then its result. */
export class CompletionStream implements AsyncIterable<GeneratedChunk> {
  private readonly chunks: GeneratedChunk[] = [];
  private waiter: (() => void) | null = null;
  private done = false;
  private failure: unknown = null;
  readonly result: Promise<CompletionResult>;
  private settle!: { resolve: (r: CompletionResult) => void; reject: (e: unknown) => void };

  constructor(readonly id: string) {
    this.result = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // A consumer that only iterates still sees the error; this keeps an unobserved result from crashing.
    this.result.catch(() => undefined);
  }

  push(chunk: GeneratedChunk): void {
    this.chunks.push(chunk);
    this.wake();
  }

  end(result: CompletionResult): void {
    this.done = true;
    this.settle.resolve(result);
    this.wake();
  }

  fail(err: unknown): void {
    this.done = true;
    this.failure = err;
    this.settle.reject(err);
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GeneratedChunk> {
    for (;;) {
      const next = this.chunks.shift();
      if (next) {
        yield next;
        continue;
      }
      if (this.done) {
        if (this.failure !== null) throw this.failure;
        return;
      }
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
}

interface Sequence {
  readonly id: string;
  /** prompt followed by the tokens generated so far */
  readonly tokens: number[];
  readonly promptIds: readonly Token[];
  readonly sampler: SequenceSampler;
  readonly state: CompletionState;
  readonly stream: CompletionStream;
  readonly observer: RoutingObserver | undefined;
  kv: SequenceKvCache | null;
  detachAbort: () => void;
}

export interface EngineStats {
  readonly steps: number;
  readonly tokensComputed: number;
  readonly tokensGenerated: number;
  readonly running: number;
  readonly waiting: number;
  readonly kvTokensReserved: number;
}

/**
 * How many requests must fail in a row, with no token sampled for any request in between, before the
 * engine calls itself failing. One poisoned request (non-finite logits, say) fails alone and the next
 * token sampled clears the count; five in a row means every request fails (a missing weight, a broken
 * session, out of memory), and /health should take the server out of rotation.
 */
export const FAILING_AFTER = 5;

export interface EngineHealth {
  readonly failing: boolean;
  /** Why, when failing: the count and the latest error's kind (its message, which may hold paths, is in the log). */
  readonly reason?: string;
}

export class BatchEngine implements AsyncDisposable {
  private readonly scheduler: Scheduler;
  private readonly sequences = new Map<string, Sequence>();
  private nextId = 0;
  private loop: Promise<void> | null = null;
  private steps = 0;
  private tokensComputed = 0;
  private tokensGenerated = 0;
  private failuresInARow = 0;
  private lastFailure = '';

  constructor(
    private readonly model: MoeModel,
    config: SchedulerConfig,
  ) {
    this.scheduler = new Scheduler(config);
  }

  get stats(): EngineStats {
    return {
      steps: this.steps,
      tokensComputed: this.tokensComputed,
      tokensGenerated: this.tokensGenerated,
      running: this.scheduler.numRunning,
      waiting: this.scheduler.numWaiting,
      kvTokensReserved: this.scheduler.kvTokensReserved,
    };
  }

  get health(): EngineHealth {
    if (this.failuresInARow < FAILING_AFTER) return { failing: false };
    return { failing: true, reason: `the last ${this.failuresInARow} requests failed with no token generated in between; latest: ${this.lastFailure} (details in the log)` };
  }

  /**
   * Queues a request; its stream yields tokens as they are produced. Throws at once (QueueFullError,
   * EmptyPromptError, ContextLengthError) when it cannot be accepted, so the caller can answer 429/400.
   */
  submit(req: CompletionRequest): CompletionStream {
    if (req.promptIds.length === 0) throw new EmptyPromptError();
    const maxPositions = this.model.spec.maxPositions;
    if (req.promptIds.length >= maxPositions) throw new ContextLengthError(req.promptIds.length + 1, maxPositions);
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 1) throw new RangeError(`maxTokens must be a positive integer, got ${req.maxTokens}`);
    const sampler = new SequenceSampler(req);
    const id = `seq-${this.nextId++}`;
    // The completion must fit the context window; it ends with 'length' where the window does.
    const maxTokens = Math.min(req.maxTokens, maxPositions - req.promptIds.length);
    const stream = new CompletionStream(id);
    const seq: Sequence = {
      id,
      tokens: [...req.promptIds],
      promptIds: req.promptIds,
      sampler,
      state: new CompletionState(this.model.tokenizer, new Set(req.ignoreEos ? [] : this.model.eosTokenIds), req.stop ?? [], maxTokens),
      stream,
      observer: req.observer,
      kv: null,
      detachAbort: () => undefined,
    };
    // Everything that can throw for a bad request has run: the scheduler never holds a request the
    // engine does not know (a throw after add() would leave a slot no step could fill).
    const kvTokens = kvRowsFor(req.promptIds.length + maxTokens, maxPositions);
    this.scheduler.add({ id, promptTokens: req.promptIds.length, maxTokens, kvTokens, client: req.client });
    this.sequences.set(id, seq);
    if (req.signal) {
      const onAbort = () => {
        this.scheduler.abort(id);
        this.kick();
      };
      if (req.signal.aborted) onAbort();
      req.signal.addEventListener('abort', onAbort, { once: true });
      seq.detachAbort = () => req.signal?.removeEventListener('abort', onAbort);
    }
    this.kick();
    return stream;
  }

  /** Starts the loop if it is not running; it stops by itself when there is no work. */
  private kick(): void {
    // run() handles its own failures; this catch is the last line: the loop's promise never rejects
    // unhandled (that would end the process and every other request with it).
    this.loop ??= this.run()
      .catch((err: unknown) => this.failAll(err))
      .finally(() => (this.loop = null));
  }

  private async run(): Promise<void> {
    // Let the submitting caller (an HTTP handler, say) return before the first step blocks the thread.
    await yieldToEventLoop();
    while (this.scheduler.hasWork) {
      const plan = this.scheduler.schedule();
      for (const r of plan.removed) this.end(r.id, 'abort');
      for (const id of plan.admitted) {
        const seq = this.sequences.get(id);
        if (!seq) continue;
        try {
          seq.kv = this.model.newSequence();
        } catch (err) {
          this.failOne(seq, err);
        }
      }
      if (plan.steps.length > 0) {
        try {
          await this.step(plan);
        } catch (err) {
          // A bug in the bookkeeping after sampling (the scheduler's update, say): the step's requests
          // cannot be trusted to go on; the loop and every other request can.
          for (const c of plan.steps) {
            const seq = this.sequences.get(c.id);
            if (seq) this.failOne(seq, err);
          }
        }
      }
      // Between steps the event loop serves I/O: each step blocks it (session.run is synchronous).
      await yieldToEventLoop();
    }
  }

  private async step(plan: SchedulerOutput): Promise<void> {
    const chunks = plan.steps.flatMap((c) => {
      const seq = this.sequences.get(c.id);
      return seq?.kv ? [{ chunk: c, seq, kv: seq.kv }] : [];
    });
    const itemOf = ({ chunk, seq, kv }: (typeof chunks)[number]): BatchItem => ({
      kv,
      tokens: seq.tokens.slice(chunk.start, chunk.start + chunk.count),
      logits: chunk.samples ? 'last' : 'none',
      observer: seq.observer,
    });
    const logits = await this.forwardIsolated(chunks.map(itemOf), chunks.map((c) => c.seq));
    this.steps++;
    const sampled = new Map<string, number>();
    const stopped: Sequence[] = [];
    chunks.forEach(({ chunk, seq }, i) => {
      const row = logits[i];
      if (row === undefined) return; // its forward pass failed: already failed
      this.tokensComputed += chunk.count;
      if (!chunk.samples || !row) return;
      try {
        const { token, logprob } = seq.sampler.next(row);
        const out = seq.state.accept(token, logprob);
        seq.tokens.push(token);
        this.tokensGenerated++;
        this.failuresInARow = 0;
        sampled.set(seq.id, token);
        if (out.text || out.tokenId !== null) seq.stream.push(out);
        if (seq.state.finishReason === 'stop') stopped.push(seq);
      } catch (err) {
        // One sequence's sampling or text accounting failed (non-finite logits, say): it ends with the
        // error, the others sample on.
        this.failOne(seq, err);
      }
    });
    const finished = this.scheduler.update(plan, sampled);
    for (const seq of stopped) this.scheduler.finish(seq.id, RequestStatus.FINISHED_STOPPED);
    for (const f of finished) this.end(f.id, reasonOf(f.status));
    for (const seq of stopped) this.end(seq.id, 'stop');
  }

  /**
   * The batched forward pass; when it fails, each sequence again alone, so that one sequence's failure
   * (a session run, an expert load) fails that sequence only. A failed pass commits nothing to the KV
   * caches (forward.ts), so the retry starts from the same state. Returns each item's logits, null for
   * 'none', undefined where the sequence failed (and has been failed).
   */
  private async forwardIsolated(items: readonly BatchItem[], seqs: readonly Sequence[]): Promise<(Float32Array | null | undefined)[]> {
    try {
      return await this.model.forward.stepBatch(items);
    } catch (err) {
      if (items.length === 1) {
        this.failOne(seqs[0] as Sequence, err);
        return [undefined];
      }
    }
    const out: (Float32Array | null | undefined)[] = [];
    for (const [i, item] of items.entries()) {
      try {
        const [row] = await this.model.forward.stepBatch([item]);
        out.push(row ?? null);
      } catch (err) {
        this.failOne(seqs[i] as Sequence, err);
        out.push(undefined);
      }
    }
    return out;
  }

  /** Ends one request with `err` and takes it out of the scheduler, whatever state it is in. */
  private failOne(seq: Sequence, err: unknown): void {
    this.failuresInARow++;
    // /health is open to anyone: the error's kind only, its message (paths, tensor names) goes to the log.
    this.lastFailure = err instanceof Error ? err.name : typeof err;
    this.scheduler.finish(seq.id, RequestStatus.FINISHED_ABORTED);
    this.release(seq);
    seq.stream.fail(err);
  }

  private failAll(err: unknown): void {
    for (const seq of [...this.sequences.values()]) this.failOne(seq, err);
  }

  /** Frees the sequence's KV cache and ends its stream. */
  private end(id: string, reason: FinishReason): void {
    const seq = this.sequences.get(id);
    if (!seq) return;
    this.release(seq);
    const tail = seq.state.finish(reason);
    if (tail) seq.stream.push(tail);
    const output = seq.state.output(seq.promptIds, seq.sampler.topLogprobs !== undefined);
    seq.stream.end({ ...output, id, promptTokens: output.promptIds.length, completionTokens: output.completionIds.length });
  }


  private release(seq: Sequence): void {
    this.sequences.delete(seq.id);
    seq.detachAbort();
    seq.kv?.[Symbol.dispose]();
    seq.kv = null;
  }

  /** Aborts every request and waits for the loop to stop. */
  async [Symbol.asyncDispose](): Promise<void> {
    for (const id of this.sequences.keys()) this.scheduler.abort(id);
    this.kick();
    await this.loop;
  }
}

function reasonOf(status: FinishedStatus): FinishReason {
  return status === RequestStatus.FINISHED_LENGTH ? 'length' : status === RequestStatus.FINISHED_STOPPED ? 'stop' : 'abort';
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
