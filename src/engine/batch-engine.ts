// The engine loop of continuous batching: the scheduler decides each step's tokens, one batched forward
// pass computes them, each sequence samples and streams its token, and finished or cancelled sequences
// leave at once (iteration-level scheduling, as in Orca and vLLM). New requests join at the next step.
import type { FinishedStatus } from '../scheduler/request-status.js';
import { RequestStatus } from '../scheduler/request-status.js';
import { Scheduler, type SchedulerConfig, type SchedulerOutput } from '../scheduler/scheduler.js';
import type { Token } from '../tokenizer/token.js';
import { CompletionState, type CompletionOutput, type CompletionRequest, type FinishReason, type GeneratedChunk } from './completion-state.js';
import { ExpertAffinity, type ExpertPrediction } from './expert-affinity.js';
import type { BatchItem, RoutingObserver, StepRoutingObserver } from './forward.js';
import { kvRowsFor, type SequenceKvCache } from './kv-cache.js';
import { tokenLogprob, type TokenLogprob } from './logit-processing.js';
import type { MoeModel } from './moe-model.js';
import type { PrefixCache, PrefixCacheStats } from './prefix-cache.js';
import { checkRequest, completionLimit } from './request-rules.js';
import { SequenceSampler } from './sequence-sampler.js';
import { DEFAULT_PEAKS, DistinctExperts, stepCost, stepCostModel, UtilizationTally, type Peaks, type StepCostModel, type UtilizationTotals } from './step-utilization.js';

export type { CompletionRequest } from './completion-state.js';


/** Where one sequence's time went; forward steps are counted whole for every sequence in them. */
export interface SequenceTimings {
  readonly promptTokens: number;
  /** Forward steps up to and including the one whose logits chose the first token. */
  readonly promptMs: number;
  /** Forward steps after the prompt (one per generated token but the last). */
  readonly decodeSteps: number;
  readonly decodeMs: number;
  /** Choosing tokens (bias, penalties, grammar, sampling) and accepting them (detokenizing, stop strings). */
  readonly samplingMs: number;
}

export interface CompletionResult extends CompletionOutput {
  readonly id: string;
  readonly promptTokens: number;
  /** Of the prompt, tokens whose KV came from the prefix cache (OpenAI's cached_tokens). */
  readonly cachedTokens: number;
  /** Tokens generated, an end-of-sequence token included. */
  readonly completionTokens: number;
  /** Every prompt token's logprob, the first null, when the request asked for promptLogprobs. */
  readonly promptLogprobs?: readonly (TokenLogprob | null)[];
  readonly timings: SequenceTimings;
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

export interface EngineStats {
  readonly steps: number;
  readonly tokensComputed: number;
  readonly tokensGenerated: number;
  readonly running: number;
  readonly waiting: number;
  readonly kvTokensReserved: number;
  /** KV-cache rows the budget holds (the scheduler's maxKvTokens; Number.MAX_SAFE_INTEGER when unbounded). */
  readonly kvTokensCapacity: number;
  /** Prompt tokens whose KV a sequence took from another sequence of the same request (n > 1). */
  readonly forkedTokens: number;
  /** Times expert-aware admission admitted a request ahead of an older waiting one, once per older one (0 when off). */
  readonly passOvers: number;
  /** null when prefix caching is off. */
  readonly prefixCache: PrefixCacheStats | null;
  /** S-MBU and S-MFU's sums (step-utilization.ts): over every step, and over the recent window; the peaks they are judged against. */
  readonly utilization: { readonly totals: UtilizationTotals; readonly recent: UtilizationTotals; readonly peaks: Peaks };
}

export interface EngineOptions {
  /** KV of earlier prompts for later ones to reuse; host KV caches only (ignored on GPU providers). */
  readonly prefixCache?: PrefixCache;
  /** The machine's peak memory bandwidth and FLOP rate, for S-MBU and S-MFU (default DEFAULT_PEAKS). */
  readonly peaks?: Peaks;
}

/**
 * How many requests must fail in a row, with no token sampled for any request in between, before the
 * engine calls itself failing. One poisoned request (non-finite logits, say) fails alone and the next
 * token sampled clears the count; five in a row means every request fails (a missing weight, a broken
 * session, out of memory), and /health should take the server out of rotation.
 */
export const FAILING_AFTER = 5;

/** Most logits one step returns for a sequence that scores its prompt (echo with logprobs). */
const PROMPT_LOGITS_BYTES = 64 * 2 ** 20;

export interface EngineHealth {
  readonly failing: boolean;
  /** Why, when failing: the count and the latest error's kind (its message, which may hold paths, is in the log). */
  readonly reason?: string;
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
  /** The request's first sequence, whose prompt KV this one copies at admission (n > 1). */
  readonly leader: string | undefined;
  /** Top alternatives per prompt logprob, when the request asked for them. */
  readonly promptTop: number | undefined;
  readonly promptLogprobs: (TokenLogprob | null)[];
  /** Its experts as predicted while it waits (expert-aware admission); made again as the table learns. */
  predictedExperts: ExpertPrediction | undefined;
  kv: SequenceKvCache | null;
  /** What went wrong while admitting it (allocating or filling its KV cache): it fails after schedule(). */
  admitError: unknown;
  cachedTokens: number;
  timings: { promptMs: number; decodeMs: number; samplingMs: number };
  detachAbort: () => void;
}

export class BatchEngine implements AsyncDisposable {
  private readonly scheduler: Scheduler;
  private readonly sequences = new Map<string, Sequence>();
  private readonly prefixCache: PrefixCache | undefined;
  /** With expert-aware admission: the experts each token id was last routed to, learned from every step. */
  private readonly affinity: ExpertAffinity | undefined;
  /** Sequences whose prompt the last step finished computing, for the prefix cache. */
  private readonly toStore: Sequence[] = [];
  private nextId = 0;
  private loop: Promise<void> | null = null;
  private steps = 0;
  private tokensComputed = 0;
  private tokensGenerated = 0;
  private forkedTokens = 0;
  /** Each step's bytes, FLOPs and time (step-utilization.ts); the model's own tally gets them too. */
  private readonly utilization = new UtilizationTally();
  private readonly costModel: StepCostModel;
  private readonly peaks: Peaks;
  private readonly distinct: DistinctExperts;
  /** Distinct experts of the step in progress, summed over sparse layers (from every committed pass of it). */
  private stepExperts = 0;
  /** Sees each committed pass's routing: the expert-affinity table learns from it, the step counts its experts. */
  private readonly stepObserver: StepRoutingObserver;
  private failuresInARow = 0;
  private lastFailure = '';

  constructor(
    private readonly model: MoeModel,
    config: SchedulerConfig,
    options: EngineOptions = {},
  ) {
    this.affinity = config.expertAware ? new ExpertAffinity(model.spec) : undefined;
    this.scheduler = new Scheduler(config, {
      cachedTokens: (id) => this.admit(id),
      ...(this.affinity && { expertAffinity: (id: string) => this.expertAffinity(id) }),
    });
    this.prefixCache = model.runtime.onGpu ? undefined : options.prefixCache;
    this.costModel = stepCostModel(model.spec, model.forward.weightSizes);
    this.peaks = options.peaks ?? DEFAULT_PEAKS;
    this.distinct = new DistinctExperts(model.spec.numExperts);
    this.stepObserver = {
      onStepRouting: (layer, tokens, routing) => {
        this.affinity?.onStepRouting(layer, tokens, routing);
        this.stepExperts += this.distinct.count(routing.experts);
      },
    };
  }

  /** Most sequences one client's request can queue at once: more can never be accepted, whatever runs. */
  get queueCapacity(): number {
    const c = this.scheduler.config;
    return Math.min(c.maxQueue, c.maxQueuePerClient);
  }

  get stats(): EngineStats {
    return {
      steps: this.steps,
      tokensComputed: this.tokensComputed,
      tokensGenerated: this.tokensGenerated,
      running: this.scheduler.numRunning,
      waiting: this.scheduler.numWaiting,
      kvTokensReserved: this.scheduler.kvTokensReserved,
      kvTokensCapacity: this.scheduler.config.maxKvTokens,
      forkedTokens: this.forkedTokens,
      passOvers: this.scheduler.passOvers,
      prefixCache: this.prefixCache?.stats ?? null,
      utilization: { totals: this.utilization.totals, recent: this.utilization.recent(), peaks: this.peaks },
    };
  }

  get health(): EngineHealth {
    if (this.failuresInARow < FAILING_AFTER) return { failing: false };
    return { failing: true, reason: `the last ${this.failuresInARow} requests failed with no token generated in between; latest: ${this.lastFailure} (details in the log)` };
  }

  /**
   * Queues a request; its stream yields tokens as they are produced. Throws at once (QueueFullError,
   * EmptyPromptError, ContextLengthError, RequestFieldError) when it cannot be accepted, so the caller can
   * answer 429/400.
   */
  submit(req: CompletionRequest): CompletionStream {
    return this.submitChoices(req, 1)[0] as CompletionStream;
  }

  /**
   * Queues `n` sequences of one prompt (OpenAI's `n`): the first computes the prompt, the others start from
   * a copy of its KV (on host caches) and each samples with its own random stream. All are queued or none.
   */
  submitChoices(req: CompletionRequest, n: number, observerFor?: (choice: number) => RoutingObserver | undefined): CompletionStream[] {
    const spec = this.model.spec;
    checkRequest(req, n, spec);
    const maxTokens = completionLimit(req.promptIds.length, req.maxTokens, spec.maxPositions);
    const kvTokens = kvRowsFor(req.promptIds.length + maxTokens, spec.maxPositions);
    // Prompt logprobs need every prompt position's logits: such sequences compute their whole prompt.
    const shares = !this.model.runtime.onGpu && req.promptLogprobs === undefined;
    // Their chunks return a logits row per token: bounded, so that a long prompt of a large vocabulary
    // does not ask the LM head for hundreds of MB at once.
    const maxChunk = req.promptLogprobs === undefined ? undefined : Math.max(1, Math.floor(PROMPT_LOGITS_BYTES / (spec.vocabSize * Float32Array.BYTES_PER_ELEMENT)));
    const added: Sequence[] = [];
    try {
      for (let i = 0; i < n; i++) {
        const id = `seq-${this.nextId++}`;
        const leader = i > 0 && shares ? added[0]?.id : undefined;
        const seq = this.newSequence(id, { ...req, observer: observerFor ? observerFor(i) : req.observer }, i, leader);
        // Everything that can throw for a bad request has run: the scheduler never holds a request the
        // engine does not know (a throw after add() would leave a slot no step could fill).
        this.scheduler.add({ id, promptTokens: req.promptIds.length, maxTokens, kvTokens, client: req.client, after: leader, maxChunk });
        this.sequences.set(id, seq);
        added.push(seq);
      }
    } catch (err) {
      for (const seq of added) {
        this.scheduler.finish(seq.id, RequestStatus.FINISHED_ABORTED);
        this.release(seq);
      }
      throw err;
    }
    if (req.signal) {
      const signal = req.signal;
      const onAbort = () => {
        for (const seq of added) this.scheduler.abort(seq.id);
        this.kick();
      };
      if (signal.aborted) onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      // Each sequence detaches the listener when it leaves; it goes once every sequence has.
      let live = added.length;
      for (const seq of added) seq.detachAbort = () => --live === 0 && signal.removeEventListener('abort', onAbort);
    }
    this.kick();
    return added.map((s) => s.stream);
  }

  private newSequence(id: string, req: CompletionRequest, index: number, leader: string | undefined): Sequence {
    // Choice i > 0 of a seeded request has its own stream, derived from the seed: choices differ, and
    // choice 0 is what the same request with n = 1 gives.
    const seed = req.seed === undefined ? undefined : index === 0 ? req.seed : deriveSeed(req.seed, index);
    const sampler = new SequenceSampler({ ...req, seed }, req.constraint?.newConstraint());
    return {
      id,
      tokens: [...req.promptIds],
      promptIds: req.promptIds,
      sampler,
      state: new CompletionState(this.model.tokenizer, new Set(req.ignoreEos ? [] : this.model.eosTokenIds), req.stop ?? []),
      stream: new CompletionStream(id),
      observer: req.observer,
      leader,
      promptTop: req.promptLogprobs,
      promptLogprobs: req.promptLogprobs === undefined ? [] : [null],
      predictedExperts: undefined,
      kv: null,
      admitError: null,
      cachedTokens: 0,
      timings: { promptMs: 0, decodeMs: 0, samplingMs: 0 },
      detachAbort: () => undefined,
    };
  }

  /**
   * The scheduler admits `id`: its KV cache is made here, holding what the request need not compute (its
   * leader's prompt, or a cached prefix). Returns how many prompt tokens that is.
   */
  private admit(id: string): number {
    const seq = this.sequences.get(id);
    if (!seq) return 0;
    try {
      const kv = (seq.kv = this.model.newSequence());
      if (!kv.copiesRows || seq.promptTop !== undefined) return 0;
      const limit = seq.promptIds.length - 1;
      const leader = seq.leader === undefined ? undefined : this.sequences.get(seq.leader);
      if (limit > 0 && leader?.kv && leader.kv.length >= limit) {
        kv.importRows(leader.kv.exportRows(0, limit), limit);
        this.forkedTokens += limit;
        return limit;
      }
      seq.cachedTokens = this.prefixCache?.load(seq.promptIds, limit, kv) ?? 0;
      return seq.cachedTokens;
    } catch (err) {
      seq.admitError = err;
      return 0;
    }
  }

  /**
   * The scheduler's expert affinity of a waiting sequence: the share of its prompt's predicted experts
   * resident in the expert cache now (expert-affinity.ts).
   */
  private expertAffinity(id: string): number {
    const seq = this.sequences.get(id);
    if (!seq || !this.affinity) return 0;
    seq.predictedExperts = this.affinity.predict(seq.promptIds, seq.predictedExperts);
    return this.affinity.score(seq.predictedExperts, this.model.experts);
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
        if (seq?.admitError) this.failOne(seq, seq.admitError);
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
      this.storePrompts();
    }
  }

  private async step(plan: SchedulerOutput): Promise<void> {
    const chunks = plan.steps.flatMap((c) => {
      const seq = this.sequences.get(c.id);
      // Of the chunk, the prompt tokens (a prompt chunk never holds generated tokens: none exist yet).
      const promptCount = seq ? Math.max(0, Math.min(c.count, seq.promptIds.length - c.start)) : 0;
      return seq?.kv ? [{ chunk: c, seq, kv: seq.kv, promptCount }] : [];
    });
    const itemOf = ({ chunk, seq, kv, promptCount }: (typeof chunks)[number]): BatchItem => ({
      kv,
      tokens: seq.tokens.slice(chunk.start, chunk.start + chunk.count),
      logits: seq.promptTop !== undefined && promptCount > 0 ? 'all' : chunk.samples ? 'last' : 'none',
      observer: seq.observer,
    });
    const items = chunks.map(itemOf);
    // Positions in each KV cache before the step, for its KV bytes and attention FLOPs.
    const past = chunks.map((c) => c.kv.length);
    this.stepExperts = 0;
    const t0 = performance.now();
    const logits = await this.forwardIsolated(items, chunks.map((c) => c.seq));
    const stepMs = performance.now() - t0;
    this.steps++;
    const sampled = new Map<string, number>();
    const stopped: Sequence[] = [];
    const V = this.model.spec.vocabSize;
    chunks.forEach(({ chunk, seq, promptCount }, i) => {
      const rows = logits[i];
      if (rows === undefined) return; // its forward pass failed: already failed
      this.tokensComputed += chunk.count;
      // Steps before its first token are its prompt's, the rest decode.
      if (seq.tokens.length > seq.promptIds.length) seq.timings.decodeMs += stepMs;
      else seq.timings.promptMs += stepMs;
      try {
        if (promptCount > 0) this.promptComputed(seq, chunk.start, promptCount, rows);
        if (!chunk.samples || !rows) return;
        const ts = performance.now();
        const { token, logprob } = seq.sampler.next(rows.length === V ? rows : rows.subarray(rows.length - V));
        const out = seq.state.accept(token, logprob);
        seq.timings.samplingMs += performance.now() - ts;
        seq.tokens.push(token);
        this.tokensGenerated++;
        this.failuresInARow = 0;
        sampled.set(seq.id, token);
        if (out.text || out.tokenId !== null) seq.stream.push(out);
        if (seq.state.finishReason === 'stop') stopped.push(seq);
      } catch (err) {
        // One sequence's sampling or text accounting failed (non-finite logits, a grammar refusing its
        // token, say): it ends with the error, the others sample on.
        this.failOne(seq, err);
      }
    });
    const finished = this.scheduler.update(plan, sampled);
    for (const seq of stopped) this.scheduler.finish(seq.id, RequestStatus.FINISHED_STOPPED);
    for (const f of finished) this.end(f.id, reasonOf(f.status));
    for (const seq of stopped) this.end(seq.id, 'stop');
    this.recordStep(items, past, logits, (performance.now() - t0) / 1000);
  }

  /** The step's bytes, FLOPs and wall time (forward pass, sampling, bookkeeping), over the items whose pass committed. */
  private recordStep(items: readonly BatchItem[], past: readonly number[], logits: readonly (Float32Array | null | undefined)[], seconds: number): void {
    const sequences: { past: number; tokens: number }[] = [];
    let logitsRows = 0;
    items.forEach((item, i) => {
      if (logits[i] === undefined) return; // failed: nothing of it was committed
      sequences.push({ past: past[i] as number, tokens: item.tokens.length });
      logitsRows += item.logits === 'last' ? 1 : item.logits === 'all' ? item.tokens.length : 0;
    });
    if (sequences.length === 0) return;
    const cost = stepCost(this.costModel, { sequences, logitsRows, distinctExperts: this.stepExperts });
    const now = performance.now();
    this.utilization.record(cost, seconds, now);
    this.model.forward.utilization.record(cost, seconds, now);
  }

  /**
   * Prompt tokens [start, start + count) are now in the sequence's KV: their logprobs are taken from this
   * step's rows when asked for, and the prompt's blocks go to the prefix cache once it is all computed.
   */
  private promptComputed(seq: Sequence, start: number, count: number, rows: Float32Array | null): void {
    const P = seq.promptIds.length;
    if (seq.promptTop !== undefined && rows) {
      const V = this.model.spec.vocabSize;
      // Row t's logits give the distribution of the token at position start + t + 1.
      for (let t = 0; t < count && start + t + 1 < P; t++) {
        seq.promptLogprobs.push(tokenLogprob(rows.subarray(t * V, (t + 1) * V), seq.promptIds[start + t + 1] as Token, seq.promptTop));
      }
    }
    if (start + count < P) return;
    // Stored after the step has handed out its tokens: copying the blocks out is not on the way to the first token.
    if (this.prefixCache) this.toStore.push(seq);
    if (seq.promptTop !== undefined) seq.stream.push({ tokenId: null, text: '', promptLogprobs: seq.promptLogprobs });
  }

  /** Keeps the prompts computed last step in the prefix cache (those still running: end() stores the others). */
  private storePrompts(): void {
    for (const seq of this.toStore.splice(0)) {
      if (seq.kv && this.sequences.has(seq.id)) this.prefixCache?.store(seq.promptIds, seq.kv);
    }
  }

  /**
   * The batched forward pass; when it fails, each sequence again alone, so that one sequence's failure
   * (a session run, an expert load) fails that sequence only. A failed pass commits nothing to the KV
   * caches (forward.ts), so the retry starts from the same state. Returns each item's logits, null for
   * 'none', undefined where the sequence failed (and has been failed).
   */
  private async forwardIsolated(items: readonly BatchItem[], seqs: readonly Sequence[]): Promise<(Float32Array | null | undefined)[]> {
    try {
      return await this.model.forward.stepBatch(items, this.stepObserver);
    } catch (err) {
      if (items.length === 1) {
        this.failOne(seqs[0] as Sequence, err);
        return [undefined];
      }
    }
    const out: (Float32Array | null | undefined)[] = [];
    for (const [i, item] of items.entries()) {
      try {
        const [row] = await this.model.forward.stepBatch([item], this.stepObserver);
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

  /** Frees the sequence's KV cache (its blocks kept for later prompts first) and ends its stream. */
  private end(id: string, reason: FinishReason): void {
    const seq = this.sequences.get(id);
    if (!seq) return;
    // A multi-turn chat's next prompt holds this answer: its blocks are worth keeping too.
    if (reason !== 'abort' && seq.kv) this.prefixCache?.store(seq.tokens, seq.kv);
    this.release(seq);
    const tail = seq.state.finish(reason);
    if (tail) seq.stream.push(tail);
    const output = seq.state.output(seq.promptIds, seq.sampler.topLogprobs !== undefined);
    const completionTokens = output.completionIds.length;
    seq.stream.end({
      ...output,
      id,
      promptTokens: output.promptIds.length,
      cachedTokens: seq.cachedTokens,
      completionTokens,
      ...(seq.promptTop !== undefined && { promptLogprobs: seq.promptLogprobs }),
      timings: { promptTokens: output.promptIds.length, ...seq.timings, decodeSteps: Math.max(0, completionTokens - 1) },
    });
  }

  private release(seq: Sequence): void {
    this.sequences.delete(seq.id);
    seq.detachAbort();
    seq.detachAbort = () => undefined;
    seq.sampler.dispose();
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

/** A seed for choice `index` of a seeded request: SplitMix-style mixing, within the safe integers. */
function deriveSeed(seed: number, index: number): number {
  let x = BigInt.asUintN(64, BigInt(seed) + BigInt(index) * 0x9e3779b97f4a7c15n);
  x = BigInt.asUintN(64, (x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n);
  x = BigInt.asUintN(64, (x ^ (x >> 27n)) * 0x94d049bb133111ebn);
  return Number((x ^ (x >> 31n)) & 0x1fffffffffffffn);
}

function reasonOf(status: FinishedStatus): FinishReason {
  return status === RequestStatus.FINISHED_LENGTH ? 'length' : status === RequestStatus.FINISHED_STOPPED ? 'stop' : 'abort';
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
