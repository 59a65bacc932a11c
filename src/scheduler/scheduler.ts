// A continuous-batching scheduler in the style of vLLM v1 (vllm/v1/core/sched/): `schedule()` returns plain data
// saying which tokens of which requests to compute this step, the engine runs them, and `update()` records what
// was computed and sampled. No tensors, no model, no I/O.
//
// There are no prefill and decode phases. Each request has a token count (prompt + generated) and a computed
// count that catches up with it: a new request has its whole prompt uncomputed, a decoding request has exactly
// one (the token sampled last step). A prompt longer than the step's budget is simply computed over several
// steps (chunked prefill), and only the chunk that reaches the end of the known tokens samples a new one.
//
// Per step, within `maxBatchTokens`:
//   1. aborts requested since the last step are applied and reported in `removed`;
//   2. running requests, in admission order, each get as many of their uncomputed tokens as the budget allows
//      (so decodes and unfinished prompts go before new prompts, and the oldest request is never starved);
//   3. waiting requests are admitted while fewer than `maxSeqs` run, budget remains and their KV reservation
//      fits `maxKvTokens`: the oldest request of the client with the fewest running requests first (FIFO when
//      one client sends everything), so a client with many requests queued cannot starve another's. When the
//      chosen request's reservation does not fit, nothing is admitted after it in that step.
// Nothing is ever preempted. A running request left without budget would wait for the next step, but admission
// makes that impossible: a request is admitted only with budget left after every running request's demand, and
// once its prompt is computed it needs one token per step, so only the newest request can get less than it needs,
// and it always gets at least one token.
//
// Expert-aware admission (`expertAware`, off by default; serve --expert-aware-scheduling). The client rule
// of step 3 still decides whose requests may go next: the candidates are the admissible requests (not
// waiting on an `after`) of every client tied at the fewest running. Among them the one the
// `expertAffinity` hook scores highest goes first (the share of its predicted experts resident in the
// expert cache; ties: the oldest) instead of the oldest. Affinity only reorders what the client rule
// already allows, because the client rule is a promise to clients and the cache is an optimisation: a
// client whose prompts happen to hit hot experts (one resending a prompt, say) must not crowd out the
// others, and it cannot, since each admission still goes to a client with the fewest running.
// Starvation bound: admitting a request ahead of an older candidate counts one pass-over for each older
// one; a request with `passOverLimit` pass-overs goes first (the oldest such first), and so does a
// request that was chosen and whose KV reservation did not fit (as in FIFO, nothing overtakes it). Once
// at the limit a request is passed over no more (whoever goes instead is a request that must go first and
// is older), so no request is ever passed over more than `passOverLimit` times: at most that many younger
// requests are admitted ahead of it while it could have gone. The waits that the client rule and the KV
// budget impose come on top, as without expert-aware admission. passOverLimit 0 is FIFO.
import { RequestStatus, isFinished, type FinishedStatus } from './request-status.js';

export interface SchedulerConfig {
  /** Most tokens computed in one step over all requests: prompt chunks plus one per decoding request. */
  readonly maxBatchTokens: number;
  /** Most requests running at once (each holds a KV cache). */
  readonly maxSeqs: number;
  /** Most requests waiting for admission; `add` beyond it throws QueueFullError. */
  readonly maxQueue: number;
  /** Most requests one client may have waiting; `add` beyond it throws ClientQueueFullError. Default maxQueue. */
  readonly maxQueuePerClient?: number;
  /** Most requests one client may have running; its others wait. Default maxSeqs. */
  readonly maxSeqsPerClient?: number;
  /**
   * KV-cache rows (tokens) all running requests may reserve together; each reserves its prompt plus its
   * max_tokens when admitted, since nothing is preempted: a request admitted can always run to its end.
   * Default: unbounded.
   */
  readonly maxKvTokens?: number;
  /** Admit by expert affinity within the client rule (see the header); undefined: oldest first. */
  readonly expertAware?: ExpertAwareAdmission;
}

export interface ExpertAwareAdmission {
  /** Most times a waiting request may be passed over by younger ones before it goes first; 0 is FIFO. */
  readonly passOverLimit: number;
}

/**
 * serve's --pass-over-limit default. Each pass-over makes a request wait for one more admission (one more
 * slot to free when all are busy): 4 leaves affinity room to reorder a queue several requests deep, while
 * no request waits more than four admissions longer than in FIFO order.
 */
export const DEFAULT_PASS_OVER_LIMIT = 4;

/** A validated config: every limit set; expertAware null when off. */
export type ValidSchedulerConfig = Required<Omit<SchedulerConfig, 'expertAware'>> & { readonly expertAware: ExpertAwareAdmission | null };

export interface NewRequest {
  readonly id: string;
  /** Tokens in the prompt, at least 1. */
  readonly promptTokens: number;
  /**
   * Tokens to generate at most; reaching it finishes the request with FINISHED_LENGTH. 0 computes the prompt
   * only (scoring a prompt's logprobs) and finishes once it is computed.
   */
  readonly maxTokens: number;
  /** Who sent it (an API key's or a peer address's label), for the per-client limits. */
  readonly client?: string;
  /** KV-cache rows to reserve while it runs; default promptTokens + maxTokens. */
  readonly kvTokens?: number;
  /**
   * Not admitted before this request has computed its prompt (or left): the n sequences of one prompt
   * follow the first, so that they take its prompt's KV instead of computing it again.
   */
  readonly after?: string;
  /** Most tokens of it one step computes (default: the step's budget), e.g. to bound a chunk's logits. */
  readonly maxChunk?: number;
}

/** What the scheduler asks its owner when it admits a request. */
export interface AdmissionHooks {
  /**
   * Prompt tokens whose KV the new request starts with (a cached prefix, or a sibling's prompt): the
   * scheduler computes from there. Clamped to promptTokens - 1, so the last prompt token is always computed
   * (its logits choose the first token).
   */
  cachedTokens(id: string): number;
  /**
   * With expert-aware admission: how much of the waiting request's predicted experts is resident now, in
   * [0, 1] (values outside are clamped, NaN counts as 0). Asked for each candidate at each admission, so
   * it should be cheap. Absent: every request scores 0, which leaves the oldest first.
   */
  expertAffinity?(id: string): number;
}

/** Tokens [start, start + count) of one request, computed this step. */
export interface ScheduledChunk {
  readonly id: string;
  /** Position of the first token to compute (= tokens already computed, i.e. in the KV cache). */
  readonly start: number;
  /** Tokens to compute this step, at least 1. */
  readonly count: number;
  /** After this chunk every known token is computed, so the step samples the request's next token. */
  readonly samples: boolean;
}

export interface FinishedRequest {
  readonly id: string;
  readonly status: FinishedStatus;
}

export interface SchedulerOutput {
  /** At most one chunk per request; their counts sum to at most maxBatchTokens. */
  readonly steps: readonly ScheduledChunk[];
  /** Requests admitted this step, in the order admitted (each also has a chunk in `steps`): allocate their KV cache. */
  readonly admitted: readonly string[];
  /** Requests aborted since the last step, always FINISHED_ABORTED: free their KV cache, end their streams. */
  readonly removed: readonly FinishedRequest[];
}

export interface RequestState {
  readonly status: RequestStatus;
  /** Tokens whose keys and values are in the KV cache. */
  readonly computedTokens: number;
  /** Prompt tokens plus generated tokens. */
  readonly totalTokens: number;
  readonly generatedTokens: number;
}

/**
 * The Retry-After hint for a full queue. The scheduler does not know how long a step takes, so it cannot predict
 * when a slot frees; one second is a conservative hint: a queue slot frees at the next step that admits a request,
 * which is at most one step after a running request finishes, and steps take well under a second.
 */
export const QUEUE_FULL_RETRY_AFTER_SECONDS = 1;

export class QueueFullError extends Error {
  readonly code: string = 'queue_full';
  readonly retryAfterSeconds = QUEUE_FULL_RETRY_AFTER_SECONDS;

  constructor(
    readonly queued: number,
    readonly maxQueue: number,
  ) {
    super(
      `The waiting queue is full (${queued} of ${maxQueue} requests queued); ` +
        `retry after ${QUEUE_FULL_RETRY_AFTER_SECONDS} s.`,
    );
    this.name = new.target.name;
  }
}

/** One client has as many requests waiting as it may. */
export class ClientQueueFullError extends QueueFullError {
  override readonly code = 'client_queue_full';

  constructor(queued: number, maxQueue: number) {
    super(queued, maxQueue);
    this.message = `This client already has ${queued} requests waiting, its most (of ${maxQueue} per client); retry after ${QUEUE_FULL_RETRY_AFTER_SECONDS} s.`;
  }
}

/** The request's prompt plus max_tokens would need more KV cache than the whole server has. */
export class KvBudgetError extends Error {
  readonly code = 'kv_budget_exceeded';

  constructor(
    readonly kvTokens: number,
    readonly maxKvTokens: number,
  ) {
    super(`the prompt plus max_tokens need ${kvTokens} tokens of KV cache; this server's KV budget holds ${maxKvTokens}: lower max_tokens or shorten the prompt`);
    this.name = 'KvBudgetError';
  }
}

export function validateSchedulerConfig(config: SchedulerConfig): ValidSchedulerConfig {
  const maxSeqs = requirePositiveInteger('SchedulerConfig.maxSeqs', config.maxSeqs);
  const maxQueue = requirePositiveInteger('SchedulerConfig.maxQueue', config.maxQueue);
  return Object.freeze({
    maxBatchTokens: requirePositiveInteger('SchedulerConfig.maxBatchTokens', config.maxBatchTokens),
    maxSeqs,
    maxQueue,
    maxQueuePerClient: requirePositiveInteger('SchedulerConfig.maxQueuePerClient', config.maxQueuePerClient ?? maxQueue),
    maxSeqsPerClient: requirePositiveInteger('SchedulerConfig.maxSeqsPerClient', config.maxSeqsPerClient ?? maxSeqs),
    maxKvTokens: config.maxKvTokens === undefined ? Number.MAX_SAFE_INTEGER : requirePositiveInteger('SchedulerConfig.maxKvTokens', config.maxKvTokens),
    expertAware: config.expertAware === undefined ? null : Object.freeze({ passOverLimit: requireNonNegativeInteger('SchedulerConfig.expertAware.passOverLimit', config.expertAware.passOverLimit) }),
  });
}

function requireNonNegativeInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got ${value}.`);
  }
  return value;
}

function requirePositiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${value}.`);
  }
  return value;
}

interface TrackedRequest {
  readonly id: string;
  readonly promptTokens: number;
  readonly maxTokens: number;
  readonly client: string;
  readonly kvTokens: number;
  readonly after: string | undefined;
  readonly maxChunk: number;
  status: RequestStatus;
  computedTokens: number;
  generatedTokens: number;
  /** Times a younger request was admitted ahead of it while both were candidates (expert-aware admission). */
  passOvers: number;
  /** It was chosen and its KV reservation did not fit: with expert-aware admission, it goes first until admitted. */
  kvBlocked: boolean;
}

function totalTokens(request: TrackedRequest): number {
  return request.promptTokens + request.generatedTokens;
}

interface PlannedChunk {
  readonly chunk: ScheduledChunk;
  readonly request: TrackedRequest;
}

/** One step's chunks and the budget they leave. */
class StepPlan {
  readonly chunks: PlannedChunk[] = [];

  constructor(public budgetTokens: number) {}

  /** Gives the request as many of its uncomputed tokens as the budget allows (maybe none). */
  take(request: TrackedRequest): void {
    const uncomputed = totalTokens(request) - request.computedTokens;
    const count = Math.min(uncomputed, this.budgetTokens, request.maxChunk);
    if (count <= 0) return;
    this.budgetTokens -= count;
    const chunk = { id: request.id, start: request.computedTokens, count, samples: count === uncomputed && request.maxTokens > 0 };
    this.chunks.push({ chunk, request });
  }
}

export class Scheduler {
  readonly config: ValidSchedulerConfig;
  /** Waiting and running requests by id; a request leaves when it finishes. */
  private readonly requests = new Map<string, TrackedRequest>();
  private readonly waiting: TrackedRequest[] = [];
  /** In admission order, which is the order they are served in. */
  private running: TrackedRequest[] = [];
  private readonly pendingAborts = new Set<string>();
  /** KV rows reserved by running requests. */
  private kvReserved = 0;
  private passOverCount = 0;
  /** The latest schedule()'s output until update() consumes it, with the request behind each chunk. */
  private inFlight: { readonly output: SchedulerOutput; readonly chunks: readonly PlannedChunk[] } | undefined;

  constructor(
    config: SchedulerConfig,
    private readonly hooks?: AdmissionHooks,
  ) {
    this.config = validateSchedulerConfig(config);
  }

  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length;
  }

  /** KV-cache rows the running requests have reserved. */
  get kvTokensReserved(): number {
    return this.kvReserved;
  }

  /** Pass-overs counted so far (see the header); 0 while expert-aware admission is off. */
  get passOvers(): number {
    return this.passOverCount;
  }

  /** True while a schedule() call has something to do: requests to run or admit, or aborts to report. */
  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0 || this.pendingAborts.size > 0;
  }

  /** A snapshot of a waiting or running request; undefined once it has finished (or if it never existed). */
  requestState(id: string): RequestState | undefined {
    const request = this.requests.get(id);
    if (request === undefined) return undefined;
    const { status, computedTokens, generatedTokens } = request;
    return { status, computedTokens, totalTokens: totalTokens(request), generatedTokens };
  }

  /**
   * Queues a request at the back of the FIFO.
   * @throws RangeError for a bad token count or an id already waiting or running; QueueFullError when
   *   `maxQueue` requests are waiting, ClientQueueFullError when `maxQueuePerClient` of its client's are;
   *   KvBudgetError when its KV reservation alone exceeds `maxKvTokens`.
   */
  add(request: NewRequest): void {
    const { id } = request;
    requirePositiveInteger(`request '${id}' promptTokens`, request.promptTokens);
    if (!Number.isSafeInteger(request.maxTokens) || request.maxTokens < 0) throw new RangeError(`request '${id}' maxTokens must be a non-negative integer, got ${request.maxTokens}.`);
    const kvTokens = requirePositiveInteger(`request '${id}' kvTokens`, request.kvTokens ?? request.promptTokens + request.maxTokens);
    if (this.requests.has(id)) throw new RangeError(`A request with id '${id}' is already waiting or running.`);
    if (kvTokens > this.config.maxKvTokens) throw new KvBudgetError(kvTokens, this.config.maxKvTokens);
    if (this.waiting.length >= this.config.maxQueue) throw new QueueFullError(this.waiting.length, this.config.maxQueue);
    const client = request.client ?? '';
    const queuedByClient = this.waiting.reduce((n, r) => n + (r.client === client ? 1 : 0), 0);
    if (queuedByClient >= this.config.maxQueuePerClient) throw new ClientQueueFullError(queuedByClient, this.config.maxQueuePerClient);
    const tracked: TrackedRequest = {
      id,
      promptTokens: request.promptTokens,
      maxTokens: request.maxTokens,
      client,
      kvTokens,
      after: request.after,
      maxChunk: request.maxChunk === undefined ? Number.MAX_SAFE_INTEGER : requirePositiveInteger(`request '${id}' maxChunk`, request.maxChunk),
      status: RequestStatus.WAITING,
      computedTokens: 0,
      generatedTokens: 0,
      passOvers: 0,
      kvBlocked: false,
    };
    this.requests.set(id, tracked);
    this.waiting.push(tracked);
  }

  /**
   * Marks a waiting or running request for removal; the next schedule() removes it and reports it in `removed`
   * (so the engine frees its KV cache there). Until then it stays where it is, and an update() for an output
   * already in flight still applies to it. Returns false, doing nothing, for unknown or finished ids.
   */
  abort(id: string): boolean {
    if (!this.requests.has(id)) return false;
    this.pendingAborts.add(id);
    return true;
  }

  /**
   * The engine ends a request (end-of-sequence token, stop string): it leaves the scheduler at once and is not
   * reported anywhere, since the caller already knows. A chunk of it in an output in flight is ignored by
   * update(). Returns false, doing nothing, for unknown or finished ids.
   */
  finish(id: string, status: FinishedStatus): boolean {
    if (!isFinished(status)) throw new RangeError(`finish() needs a finished status, got ${status}.`);
    const request = this.requests.get(id);
    if (request === undefined) return false;
    this.end(request, status);
    return true;
  }

  /**
   * Plans one step. Pass the output to update() once the step has run; calling schedule() again instead
   * discards this plan (nothing in it counts as computed, and its chunks are planned again).
   */
  schedule(): SchedulerOutput {
    const removed = this.applyAborts();
    const plan = new StepPlan(this.config.maxBatchTokens);
    this.scheduleRunning(plan);
    const admitted = this.scheduleWaiting(plan);
    const output: SchedulerOutput = { steps: plan.chunks.map((p) => p.chunk), admitted, removed };
    this.inFlight = { output, chunks: plan.chunks };
    return output;
  }

  /**
   * Records a step: each chunk's tokens are now computed, and each sampling chunk appends the token the engine
   * sampled for it. Returns the requests that reached maxTokens (FINISHED_LENGTH), which have left the scheduler:
   * free their KV cache. Checks everything before changing anything.
   * @param output the latest schedule()'s output, each passed once.
   * @param sampled the token sampled for every request whose chunk samples; other entries are ignored.
   */
  update(output: SchedulerOutput, sampled: ReadonlyMap<string, number>): FinishedRequest[] {
    const inFlight = this.inFlight;
    if (inFlight === undefined || inFlight.output !== output) {
      throw new Error('update() takes the output of the latest schedule(), once.');
    }
    // Requests the engine finished since schedule() are skipped: their tokens no longer matter.
    const live = inFlight.chunks.filter(({ request }) => !isFinished(request.status));
    for (const { chunk } of live) {
      if (chunk.samples && !sampled.has(chunk.id)) {
        throw new RangeError(`No sampled token for request '${chunk.id}', whose chunk ends its known tokens.`);
      }
    }
    this.inFlight = undefined;
    const finished: FinishedRequest[] = [];
    for (const { chunk, request } of live) {
      request.computedTokens += chunk.count;
      if (request.maxTokens === 0 && request.computedTokens >= request.promptTokens) {
        this.end(request, RequestStatus.FINISHED_LENGTH);
        finished.push({ id: request.id, status: RequestStatus.FINISHED_LENGTH });
        continue;
      }
      if (!chunk.samples) continue;
      request.generatedTokens += 1;
      if (request.generatedTokens >= request.maxTokens) {
        this.end(request, RequestStatus.FINISHED_LENGTH);
        finished.push({ id: request.id, status: RequestStatus.FINISHED_LENGTH });
      }
    }
    return finished;
  }

  private applyAborts(): FinishedRequest[] {
    const removed: FinishedRequest[] = [];
    for (const id of [...this.pendingAborts]) {
      const request = this.requests.get(id);
      if (request === undefined) continue;
      this.end(request, RequestStatus.FINISHED_ABORTED);
      removed.push({ id, status: RequestStatus.FINISHED_ABORTED });
    }
    this.pendingAborts.clear();
    return removed;
  }

  /** Running requests in admission order, each as many of its uncomputed tokens as the budget leaves. */
  private scheduleRunning(plan: StepPlan): void {
    for (const request of this.running) {
      if (plan.budgetTokens === 0) return;
      plan.take(request);
    }
  }

  /**
   * Admits while a sequence slot, step budget and KV budget remain; a prompt larger than the step budget gets
   * a first chunk now and the rest in later steps, as a running request. The next admitted is chooseAdmission()'s;
   * when its KV reservation does not fit, nothing overtakes it (a long request would starve otherwise).
   */
  private scheduleWaiting(plan: StepPlan): string[] {
    const admitted: string[] = [];
    while (this.running.length < this.config.maxSeqs && plan.budgetTokens > 0) {
      const candidates = this.admissible();
      const request = this.chooseAdmission(candidates);
      if (request === undefined) break;
      if (this.kvReserved + request.kvTokens > this.config.maxKvTokens) {
        request.kvBlocked = true;
        break;
      }
      // Candidates are in age order: those before the one admitted are older, and passed over.
      for (const older of candidates.slice(0, candidates.indexOf(request))) {
        older.passOvers++;
        this.passOverCount++;
      }
      this.waiting.splice(this.waiting.indexOf(request), 1);
      request.status = RequestStatus.RUNNING;
      this.running.push(request);
      this.kvReserved += request.kvTokens;
      const cached = this.hooks?.cachedTokens(request.id) ?? 0;
      request.computedTokens = Math.max(0, Math.min(Math.floor(cached), request.promptTokens - 1));
      plan.take(request);
      admitted.push(request.id);
    }
    return admitted;
  }

  /**
   * The waiting requests the client rule lets go next, oldest first: those not waiting on an `after`, of the
   * clients under maxSeqsPerClient tied at the fewest running requests.
   */
  private admissible(): TrackedRequest[] {
    const runningBy = new Map<string, number>();
    for (const r of this.running) runningBy.set(r.client, (runningBy.get(r.client) ?? 0) + 1);
    let fewest = Number.POSITIVE_INFINITY;
    let candidates: TrackedRequest[] = [];
    for (const r of this.waiting) {
      if (r.after !== undefined && this.promptPending(r.after)) continue;
      const n = runningBy.get(r.client) ?? 0;
      if (n >= this.config.maxSeqsPerClient || n > fewest) continue;
      if (n < fewest) {
        fewest = n;
        candidates = [];
      }
      candidates.push(r);
    }
    return candidates;
  }

  /**
   * The candidate to admit next: the oldest, or with expert-aware admission the oldest that must go first
   * (passed over passOverLimit times, or blocked on KV), else the one of highest affinity (ties: the oldest).
   */
  private chooseAdmission(candidates: readonly TrackedRequest[]): TrackedRequest | undefined {
    const aware = this.config.expertAware;
    // A lone candidate goes whatever it scores: the hook is not asked.
    if (aware === null || candidates.length <= 1) return candidates[0];
    const due = candidates.find((r) => r.kvBlocked || r.passOvers >= aware.passOverLimit);
    if (due !== undefined) return due;
    let best: TrackedRequest | undefined;
    let bestScore = -1;
    for (const r of candidates) {
      const score = this.affinity(r.id);
      if (score > bestScore) {
        best = r;
        bestScore = score;
      }
    }
    return best;
  }

  /** The hook's affinity clamped to [0, 1]; 0 without a hook or for NaN. */
  private affinity(id: string): number {
    const score = this.hooks?.expertAffinity?.(id) ?? 0;
    return Number.isNaN(score) ? 0 : Math.min(1, Math.max(0, score));
  }

  /** The request is waiting or running with part of its prompt still to compute. */
  private promptPending(id: string): boolean {
    const r = this.requests.get(id);
    return r !== undefined && r.computedTokens < r.promptTokens;
  }

  /** Removes a request from wherever it is; it can no longer be scheduled, aborted or updated. */
  private end(request: TrackedRequest, status: FinishedStatus): void {
    const wasWaiting = request.status === RequestStatus.WAITING;
    request.status = status;
    this.requests.delete(request.id);
    this.pendingAborts.delete(request.id);
    if (wasWaiting) {
      this.waiting.splice(this.waiting.indexOf(request), 1);
    } else {
      this.running = this.running.filter((r) => r !== request);
      this.kvReserved -= request.kvTokens;
    }
  }
}
