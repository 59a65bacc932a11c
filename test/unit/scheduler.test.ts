import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RequestStatus, isFinished } from '../../src/scheduler/request-status.js';
import {
  ClientQueueFullError,
  KvBudgetError,
  QueueFullError,
  Scheduler,
  type AdmissionHooks,
  type FinishedRequest,
  type ScheduledChunk,
  type SchedulerConfig,
  type SchedulerOutput,
} from '../../src/scheduler/scheduler.js';

// ---- helpers: a scheduler, hand-made runner outputs, no model ----

function makeScheduler(config: Partial<SchedulerConfig> = {}): Scheduler {
  return new Scheduler({ maxBatchTokens: 16, maxSeqs: 4, maxQueue: 8, ...config });
}

function chunk(id: string, start: number, count: number, samples: boolean): ScheduledChunk {
  return { id, start, count, samples };
}

/** What a model would return for the output: one sampled token (7) for every chunk that samples. */
function sampledFor(output: SchedulerOutput): Map<string, number> {
  return new Map(output.steps.filter((c) => c.samples).map((c) => [c.id, 7]));
}

/** One engine step: plan, "run" it, record it. */
function step(scheduler: Scheduler): { output: SchedulerOutput; finished: FinishedRequest[] } {
  const output = scheduler.schedule();
  return { output, finished: scheduler.update(output, sampledFor(output)) };
}

function tokenSum(output: SchedulerOutput): number {
  return output.steps.reduce((sum, c) => sum + c.count, 0);
}

/** mulberry32: a tiny seeded generator so the randomized test is repeatable. */
function seededRandom(seed: number): (lo: number, hi: number) => number {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return (lo, hi) => lo + Math.floor(next() * (hi - lo + 1));
}

// ---- tests ----

describe('request status', () => {
  test('is ordered so that every status from FINISHED_STOPPED on is finished', () => {
    assert.equal(isFinished(RequestStatus.WAITING), false);
    assert.equal(isFinished(RequestStatus.RUNNING), false);
    assert.equal(isFinished(RequestStatus.FINISHED_STOPPED), true);
    assert.equal(isFinished(RequestStatus.FINISHED_LENGTH), true);
    assert.equal(isFinished(RequestStatus.FINISHED_ABORTED), true);
  });
});

describe('Scheduler', () => {
  test('rejects a config field that is not a positive integer, naming the field', () => {
    for (const field of ['maxBatchTokens', 'maxSeqs', 'maxQueue'] as const) {
      for (const bad of [0, -1, 1.5, Number.NaN]) {
        assert.throws(
          () => makeScheduler({ [field]: bad }),
          (e: unknown) => e instanceof RangeError && e.message.includes(field),
        );
      }
    }
  });

  test('rejects an empty prompt, a negative or fractional maxTokens and an id already queued', () => {
    const s = makeScheduler();
    assert.throws(() => s.add({ id: 'a', promptTokens: 0, maxTokens: 4 }), /promptTokens/);
    assert.throws(() => s.add({ id: 'a', promptTokens: 3, maxTokens: -1 }), /maxTokens/);
    assert.throws(() => s.add({ id: 'a', promptTokens: 3, maxTokens: 1.5 }), /maxTokens/);
    s.add({ id: 'a', promptTokens: 3, maxTokens: 4 });
    assert.throws(() => s.add({ id: 'a', promptTokens: 3, maxTokens: 4 }), RangeError);
    assert.equal(s.numWaiting, 1);
  });

  test('maxTokens 0 computes the prompt without sampling and finishes with length once it is computed', () => {
    const s = makeScheduler({ maxBatchTokens: 4 });
    s.add({ id: 'a', promptTokens: 6, maxTokens: 0 });
    const first = step(s);
    assert.deepEqual(first.output.steps, [chunk('a', 0, 4, false)]);
    assert.deepEqual(first.finished, []);
    const second = step(s);
    assert.deepEqual(second.output.steps, [chunk('a', 4, 2, false)]);
    assert.deepEqual(second.finished, [{ id: 'a', status: RequestStatus.FINISHED_LENGTH }]);
    assert.equal(s.hasWork, false);
  });

  test('a request after another is admitted only once that one has computed its prompt, from the tokens the hook says it holds', () => {
    const held = new Map<string, number>([['b', 5]]);
    const s = new Scheduler({ maxBatchTokens: 4, maxSeqs: 4, maxQueue: 8 }, { cachedTokens: (id) => held.get(id) ?? 0 });
    s.add({ id: 'a', promptTokens: 6, maxTokens: 2 });
    s.add({ id: 'b', promptTokens: 6, maxTokens: 2, after: 'a' });
    const first = step(s);
    // b waits although budget and slots remain: a's prompt is not computed yet.
    assert.deepEqual(first.output.admitted, ['a']);
    const second = step(s);
    assert.deepEqual(second.output.steps, [chunk('a', 4, 2, true)]);
    const third = step(s);
    // Admitted now, b computes only its last prompt token (the hook held 5 of 6) and samples.
    assert.deepEqual(third.output.admitted, ['b']);
    assert.deepEqual(third.output.steps, [chunk('a', 6, 1, true), chunk('b', 5, 1, true)]);
  });

  test('a hook holding the whole prompt still leaves the last prompt token to compute', () => {
    const s = new Scheduler({ maxBatchTokens: 8, maxSeqs: 4, maxQueue: 8 }, { cachedTokens: () => 100 });
    s.add({ id: 'a', promptTokens: 6, maxTokens: 2 });
    assert.deepEqual(s.schedule().steps, [chunk('a', 5, 1, true)]);
  });

  test('maxChunk bounds how many of a request\'s tokens one step computes', () => {
    const s = makeScheduler({ maxBatchTokens: 16 });
    s.add({ id: 'a', promptTokens: 7, maxTokens: 1, maxChunk: 3 });
    assert.deepEqual(step(s).output.steps, [chunk('a', 0, 3, false)]);
    assert.deepEqual(step(s).output.steps, [chunk('a', 3, 3, false)]);
    assert.deepEqual(step(s).output.steps, [chunk('a', 6, 1, true)]);
  });

  test('a request after one that left is admitted at once', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 6, maxTokens: 2 });
    s.add({ id: 'b', promptTokens: 6, maxTokens: 2, after: 'a' });
    s.finish('a', RequestStatus.FINISHED_ABORTED);
    assert.deepEqual(s.schedule().admitted, ['b']);
  });

  test('a lone request prefills its whole prompt in one step, then decodes one token per step', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 5, maxTokens: 3 });
    assert.equal(s.hasWork, true);

    const first = step(s);
    assert.deepEqual(first.output, { steps: [chunk('a', 0, 5, true)], admitted: ['a'], removed: [] });
    assert.deepEqual(s.requestState('a'), {
      status: RequestStatus.RUNNING,
      computedTokens: 5,
      totalTokens: 6,
      generatedTokens: 1,
    });

    assert.deepEqual(step(s).output.steps, [chunk('a', 5, 1, true)]);
    const last = step(s);
    assert.deepEqual(last.output.steps, [chunk('a', 6, 1, true)]);
    assert.deepEqual(last.finished, [{ id: 'a', status: RequestStatus.FINISHED_LENGTH }]);
    assert.equal(s.requestState('a'), undefined);
    assert.equal(s.hasWork, false);
  });

  test('chunks a prompt longer than maxBatchTokens over several steps, sampling only after the last chunk', () => {
    const s = makeScheduler({ maxBatchTokens: 4 });
    s.add({ id: 'a', promptTokens: 10, maxTokens: 2 });
    const plans: ScheduledChunk[][] = [];
    for (let i = 0; i < 4; i++) {
      const output = s.schedule();
      plans.push([...output.steps]);
      // Non-sampling chunks need no sampled token.
      s.update(output, output.steps[0]?.samples === true ? new Map([['a', 1]]) : new Map());
    }
    assert.deepEqual(plans, [
      [chunk('a', 0, 4, false)],
      [chunk('a', 4, 4, false)],
      [chunk('a', 8, 2, true)],
      [chunk('a', 10, 1, true)],
    ]);
    assert.equal(s.requestState('a'), undefined, 'finished after its 2 tokens');
  });

  test('update throws when a sampling chunk has no sampled token, and changes nothing', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 3, maxTokens: 2 });
    s.add({ id: 'b', promptTokens: 3, maxTokens: 2 });
    const output = s.schedule();
    assert.throws(() => s.update(output, new Map([['a', 1]])), /'b'/);
    assert.equal(s.requestState('a')?.computedTokens, 0);
    s.update(output, sampledFor(output));
    assert.equal(s.requestState('a')?.computedTokens, 3);
  });

  test('update takes only the latest output, once', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 3, maxTokens: 5 });
    const stale = s.schedule();
    const output = s.schedule();
    assert.deepEqual(output.steps, [chunk('a', 0, 3, true)], 'a discarded plan is planned again');
    assert.throws(() => s.update(stale, sampledFor(stale)), /latest schedule/);
    s.update(output, sampledFor(output));
    assert.throws(() => s.update(output, sampledFor(output)), /once/);
    assert.equal(s.requestState('a')?.computedTokens, 3);
  });

  test('schedules the decode tokens of running requests before new prompts', () => {
    const s = makeScheduler({ maxBatchTokens: 8 });
    s.add({ id: 'a', promptTokens: 4, maxTokens: 10 });
    s.add({ id: 'b', promptTokens: 4, maxTokens: 10 });
    step(s);
    s.add({ id: 'c', promptTokens: 20, maxTokens: 10 });
    const { output } = step(s);
    assert.deepEqual(output.steps, [chunk('a', 4, 1, true), chunk('b', 4, 1, true), chunk('c', 0, 6, false)]);
    assert.deepEqual(output.admitted, ['c']);
  });

  test('every running request gets a token every step: only the newest one can be short of its prompt', () => {
    const s = makeScheduler({ maxBatchTokens: 4 });
    s.add({ id: 'a', promptTokens: 6, maxTokens: 3 });
    s.add({ id: 'b', promptTokens: 5, maxTokens: 3 });
    assert.deepEqual(step(s).output.steps, [chunk('a', 0, 4, false)], 'no budget left to admit b');
    assert.deepEqual(step(s).output.steps, [chunk('a', 4, 2, true), chunk('b', 0, 2, false)]);
    assert.deepEqual(step(s).output.steps, [chunk('a', 6, 1, true), chunk('b', 2, 3, true)]);
    assert.deepEqual(step(s).output.steps, [chunk('a', 7, 1, true), chunk('b', 5, 1, true)]);
  });

  test('maxSeqs caps running requests; the next waiting one is admitted the step after one finishes', () => {
    const s = makeScheduler({ maxSeqs: 2 });
    s.add({ id: 'a', promptTokens: 2, maxTokens: 2 });
    s.add({ id: 'b', promptTokens: 2, maxTokens: 5 });
    s.add({ id: 'c', promptTokens: 2, maxTokens: 5 });
    const first = step(s);
    assert.deepEqual(first.output.admitted, ['a', 'b']);
    assert.equal(s.numRunning, 2);
    assert.equal(s.numWaiting, 1);
    const second = step(s);
    assert.deepEqual(second.output.admitted, []);
    assert.deepEqual(second.finished, [{ id: 'a', status: RequestStatus.FINISHED_LENGTH }]);
    const third = step(s);
    assert.deepEqual(third.output.admitted, ['c']);
    assert.deepEqual(third.output.steps, [chunk('b', 3, 1, true), chunk('c', 0, 2, true)]);
  });

  test('strict FIFO: a big prompt at the head is not overtaken by small ones behind it', () => {
    const s = makeScheduler({ maxBatchTokens: 8 });
    s.add({ id: 'decoding', promptTokens: 1, maxTokens: 100 });
    step(s);
    s.add({ id: 'big', promptTokens: 20, maxTokens: 1 });
    s.add({ id: 'small1', promptTokens: 2, maxTokens: 1 });
    s.add({ id: 'small2', promptTokens: 2, maxTokens: 1 });

    const plans = [1, 2, 3].map(() => step(s).output);
    assert.deepEqual(
      plans.map((o) => o.steps),
      [
        [chunk('decoding', 1, 1, true), chunk('big', 0, 7, false)],
        [chunk('decoding', 2, 1, true), chunk('big', 7, 7, false)],
        // The small prompts are admitted only once the big one's prompt leaves budget over.
        [chunk('decoding', 3, 1, true), chunk('big', 14, 6, true), chunk('small1', 0, 1, false)],
      ],
    );
    assert.deepEqual(
      plans.map((o) => o.admitted),
      [['big'], [], ['small1']],
    );
    assert.equal(s.requestState('small2')?.status, RequestStatus.WAITING);
  });

  test('strict FIFO: when no sequence slot is free, nothing behind the head is admitted either', () => {
    const s = makeScheduler({ maxSeqs: 1, maxBatchTokens: 100 });
    s.add({ id: 'a', promptTokens: 1, maxTokens: 3 });
    s.add({ id: 'b', promptTokens: 50, maxTokens: 1 });
    s.add({ id: 'c', promptTokens: 1, maxTokens: 1 });
    const admittedPerStep = [1, 2, 3, 4].map(() => step(s).output.admitted);
    assert.deepEqual(admittedPerStep, [['a'], [], [], ['b']]);
  });

  test('an aborted waiting or running request appears in removed at the next schedule and is never scheduled again', () => {
    const s = makeScheduler({ maxSeqs: 1 });
    s.add({ id: 'running', promptTokens: 3, maxTokens: 50 });
    s.add({ id: 'waiting', promptTokens: 3, maxTokens: 50 });
    step(s);
    assert.equal(s.abort('running'), true);
    assert.equal(s.abort('waiting'), true);
    assert.equal(s.abort('unknown'), false);
    assert.equal(s.requestState('running')?.status, RequestStatus.RUNNING, 'removed only at the next schedule');

    const { output } = step(s);
    assert.deepEqual(output.removed, [
      { id: 'running', status: RequestStatus.FINISHED_ABORTED },
      { id: 'waiting', status: RequestStatus.FINISHED_ABORTED },
    ]);
    assert.deepEqual(output.steps, []);
    assert.equal(s.requestState('running'), undefined);
    assert.equal(s.requestState('waiting'), undefined);
    assert.equal(s.abort('running'), false, 'a finished request cannot be aborted');
    assert.equal(s.hasWork, false);
    assert.deepEqual(s.schedule().removed, [], 'reported once');
  });

  test('an abort between schedule and update lets the update apply, and removes the request at the next schedule', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 3, maxTokens: 50 });
    const output = s.schedule();
    s.abort('a');
    s.update(output, sampledFor(output));
    assert.equal(s.requestState('a')?.computedTokens, 3);
    const next = s.schedule();
    assert.deepEqual(next.removed, [{ id: 'a', status: RequestStatus.FINISHED_ABORTED }]);
    assert.deepEqual(next.steps, []);
  });

  test('an abort that loses the race with maxTokens is dropped and does not touch a new request with the same id', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 3, maxTokens: 1 });
    const output = s.schedule();
    s.abort('a');
    assert.deepEqual(s.update(output, sampledFor(output)), [{ id: 'a', status: RequestStatus.FINISHED_LENGTH }]);
    assert.equal(s.hasWork, false);
    s.add({ id: 'a', promptTokens: 3, maxTokens: 1 });
    const next = s.schedule();
    assert.deepEqual(next.removed, []);
    assert.deepEqual(next.admitted, ['a']);
  });

  test('a full queue throws QueueFullError with code queue_full and a retry hint, and accepts again after an admission', () => {
    const s = makeScheduler({ maxQueue: 2, maxSeqs: 1 });
    s.add({ id: 'a', promptTokens: 3, maxTokens: 5 });
    s.add({ id: 'b', promptTokens: 3, maxTokens: 5 });
    assert.throws(
      () => s.add({ id: 'c', promptTokens: 3, maxTokens: 5 }),
      (e: unknown) => {
        assert.ok(e instanceof QueueFullError);
        assert.equal(e.code, 'queue_full');
        assert.ok(Number.isInteger(e.retryAfterSeconds) && e.retryAfterSeconds > 0);
        assert.equal(e.queued, 2);
        assert.equal(e.maxQueue, 2);
        assert.match(e.message, /queue is full.*retry after/);
        return true;
      },
    );
    assert.deepEqual(step(s).output.admitted, ['a']);
    s.add({ id: 'c', promptTokens: 3, maxTokens: 5 });
    assert.equal(s.numWaiting, 2);
  });

  test('update returns a request that reaches maxTokens as FINISHED_LENGTH, including one that finishes on its prefill', () => {
    const s = makeScheduler();
    s.add({ id: 'one', promptTokens: 4, maxTokens: 1 });
    s.add({ id: 'two', promptTokens: 4, maxTokens: 2 });
    assert.deepEqual(step(s).finished, [{ id: 'one', status: RequestStatus.FINISHED_LENGTH }]);
    assert.deepEqual(step(s).finished, [{ id: 'two', status: RequestStatus.FINISHED_LENGTH }]);
    assert.equal(s.hasWork, false);
  });

  test('finish() stops scheduling a request at once and frees its sequence slot', () => {
    const s = makeScheduler({ maxSeqs: 1 });
    s.add({ id: 'a', promptTokens: 2, maxTokens: 50 });
    s.add({ id: 'b', promptTokens: 2, maxTokens: 50 });
    step(s);
    assert.equal(s.finish('a', RequestStatus.FINISHED_STOPPED), true);
    assert.equal(s.requestState('a'), undefined);
    assert.equal(s.finish('a', RequestStatus.FINISHED_STOPPED), false);
    const { output } = step(s);
    assert.deepEqual(output.steps, [chunk('b', 0, 2, true)]);
    assert.deepEqual(output.removed, [], 'the engine already knows');
    assert.throws(() => s.finish('b', RequestStatus.RUNNING as never), RangeError);
  });

  test('a request finished between schedule and update has its chunk ignored, and its id can be reused', () => {
    const s = makeScheduler();
    s.add({ id: 'a', promptTokens: 2, maxTokens: 50 });
    const output = s.schedule();
    s.finish('a', RequestStatus.FINISHED_STOPPED);
    s.add({ id: 'a', promptTokens: 9, maxTokens: 50 });
    assert.deepEqual(s.update(output, new Map()), []);
    assert.deepEqual(s.requestState('a'), {
      status: RequestStatus.WAITING,
      computedTokens: 0,
      totalTokens: 9,
      generatedTokens: 0,
    });
  });

  test('randomized: never exceeds the budget, keeps exact token counts, finishes every request, starves none', () => {
    for (let seed = 1; seed <= 60; seed++) runRandomized(seed, { expertAware: false, constrained: false });
  });

  test('randomized with clients, n-sequence `after`s and a KV budget: admits exactly by the client rule, oldest first', () => {
    for (let seed = 1; seed <= 60; seed++) runRandomized(seed, { expertAware: false, constrained: true });
  });

  test('randomized with expert-aware admission and random affinities: passes no request over more than the limit, finishes every request', () => {
    for (let seed = 1; seed <= 60; seed++) runRandomized(seed, { expertAware: true, constrained: false });
  });

  test('randomized with expert-aware admission, clients, `after`s and a KV budget: the same, and nothing overtakes a request whose KV did not fit', () => {
    for (let seed = 1; seed <= 60; seed++) runRandomized(seed, { expertAware: true, constrained: true });
  });
});

interface Mirror {
  readonly id: string;
  readonly promptTokens: number;
  readonly maxTokens: number;
  readonly client: string;
  /** Not admitted before this one has computed its prompt (or left). */
  readonly after: string | undefined;
  readonly kvTokens: number;
  state: 'waiting' | 'running' | 'done';
  computed: number;
  generated: number;
  finalStatus?: RequestStatus;
  /** The schedule() index at which it was first the head of the queue, and the running work then. */
  headAt?: { step: number; runningWork: number };
  /** Younger requests admitted ahead of it while it was a candidate. */
  passOvers: number;
  /** It was the pick and its KV reservation did not fit. */
  kvBlocked: boolean;
}

interface RandomizedMode {
  /** config.expertAware with a random limit, and a random affinity per waiting request each step. */
  readonly expertAware: boolean;
  /** Up to three clients, a per-client running limit, `after`s, and sometimes a KV budget. */
  readonly constrained: boolean;
}

/** The hook's affinity as the scheduler must read it: clamped to [0, 1], NaN as 0. */
function clampedAffinity(score: number): number {
  return Number.isNaN(score) ? 0 : Math.min(1, Math.max(0, score));
}

function runRandomized(seed: number, mode: RandomizedMode): void {
  const rand = seededRandom(seed);
  const maxSeqs = rand(1, 5);
  const config: SchedulerConfig = {
    maxBatchTokens: rand(1, 24),
    maxSeqs,
    maxQueue: rand(1, 8),
    // A request reserves at most 40 + 12 rows: every request fits alone, several do not.
    ...(mode.constrained && { maxSeqsPerClient: rand(1, maxSeqs), ...(rand(0, 1) === 1 && { maxKvTokens: rand(52, 120) }) }),
    ...(mode.expertAware && { expertAware: { passOverLimit: rand(0, 4) } }),
  };
  const where = `seed ${seed} ${JSON.stringify(mode)} ${JSON.stringify(config)}`;
  // Affinities are drawn afresh every step (the cache changes between steps); the hook is there in every
  // mode, so the FIFO modes also check that it is ignored when expert-aware admission is off.
  const affinities = new Map<string, number>();
  const s = new Scheduler(config, { cachedTokens: () => 0, expertAffinity: (id) => affinities.get(id) ?? 0 });
  const clients = mode.constrained ? ['a', 'b', 'c'].slice(0, rand(1, 3)) : [''];
  const maxSeqsPerClient = config.maxSeqsPerClient ?? config.maxSeqs;
  const maxKvTokens = config.maxKvTokens ?? Number.MAX_SAFE_INTEGER;
  const passOverLimit = config.expertAware?.passOverLimit;
  const total = 60;
  const mirrors: Mirror[] = []; // in add order
  const byId = new Map<string, Mirror>();
  const pendingAborts = new Set<string>();
  let passOvers = 0;
  const live = (): Mirror[] => mirrors.filter((m) => m.state !== 'done');
  const randomAbort = (): void => {
    const candidates = live();
    const victim = candidates[rand(0, candidates.length - 1)];
    if (victim === undefined || rand(1, 10) > 1) return;
    assert.equal(s.abort(victim.id), true, where);
    pendingAborts.add(victim.id);
  };
  // Uncomputed prompt tokens plus tokens still to generate: every step that serves a request lowers it.
  const remainingWork = (m: Mirror): number => Math.max(0, m.promptTokens - m.computed) + m.maxTokens - m.generated;
  const promptPending = (id: string): boolean => {
    const m = byId.get(id);
    return m !== undefined && m.state !== 'done' && m.computed < m.promptTokens;
  };

  let stepIndex = 0;
  while (mirrors.length < total || s.hasWork) {
    assert.ok(stepIndex < 100_000, `${where}: did not finish`);
    for (let k = rand(0, 3); k > 0 && mirrors.length < total; k--) {
      const promptTokens = rand(1, 40);
      const maxTokens = rand(1, 12);
      const earlier = mirrors[rand(0, mirrors.length - 1)];
      const m: Mirror = {
        id: `r${mirrors.length}`,
        promptTokens,
        maxTokens,
        client: clients[rand(0, clients.length - 1)] as string,
        after: mode.constrained && rand(1, 5) === 1 ? earlier?.id : undefined,
        kvTokens: promptTokens + maxTokens,
        state: 'waiting',
        computed: 0,
        generated: 0,
        passOvers: 0,
        kvBlocked: false,
      };
      try {
        s.add(m);
      } catch (e) {
        assert.ok(e instanceof QueueFullError, where);
        assert.equal(s.numWaiting, config.maxQueue, where);
        break;
      }
      mirrors.push(m);
      byId.set(m.id, m);
    }
    randomAbort();

    const waitingBefore = mirrors.filter((m) => m.state === 'waiting' && !pendingAborts.has(m.id));
    const head = waitingBefore[0];
    if (head !== undefined && head.headAt === undefined) {
      const running = mirrors.filter((m) => m.state === 'running' && !pendingAborts.has(m.id));
      head.headAt = { step: stepIndex, runningWork: running.reduce((sum, m) => sum + remainingWork(m), 0) };
    }
    affinities.clear();
    for (const m of waitingBefore) {
      // Mostly a few levels (ties are common), sometimes out of range or NaN.
      const odd = rand(1, 20);
      affinities.set(m.id, odd === 1 ? Number.NaN : odd === 2 ? 1.5 : odd === 3 ? -0.5 : rand(0, 4) / 4);
    }

    const output = s.schedule();

    // Aborts: exactly the pending ones, then gone.
    assert.deepEqual(new Set(output.removed.map((r) => r.id)), pendingAborts, where);
    for (const r of output.removed) {
      assert.equal(r.status, RequestStatus.FINISHED_ABORTED, where);
      const m = byId.get(r.id);
      assert.ok(m !== undefined && m.state !== 'done', where);
      m.state = 'done';
      m.finalStatus = r.status;
    }
    pendingAborts.clear();
    const used = tokenSum(output);

    // Admissions, replayed from the rules: the candidates are the requests not waiting on an `after`, of
    // the clients under their running limit with the fewest running; FIFO takes the oldest, expert-aware
    // admission the oldest that must go first (passed over to the limit, or blocked on KV), else the
    // highest affinity, ties the oldest. Each older candidate passed counts one pass-over.
    const runningBy = new Map<string, number>();
    let kvReserved = 0;
    for (const m of mirrors.filter((x) => x.state === 'running')) {
      runningBy.set(m.client, (runningBy.get(m.client) ?? 0) + 1);
      kvReserved += m.kvTokens;
    }
    const waiting = [...waitingBefore];
    for (let i = 0; ; i++) {
      const runningCount = [...runningBy.values()].reduce((a, b) => a + b, 0);
      // After the last admission: stopped for want of a slot or budget, or else for a reason below.
      if (i === output.admitted.length && (runningCount === config.maxSeqs || used === config.maxBatchTokens)) break;
      const eligible = waiting.filter((m) => (m.after === undefined || !promptPending(m.after)) && (runningBy.get(m.client) ?? 0) < maxSeqsPerClient);
      const fewest = Math.min(...eligible.map((m) => runningBy.get(m.client) ?? 0));
      const candidates = eligible.filter((m) => (runningBy.get(m.client) ?? 0) === fewest);
      if (candidates.length === 0) {
        assert.equal(i, output.admitted.length, `${where}: admitted ${output.admitted[i]} with no candidate`);
        break;
      }
      let pick = candidates[0] as Mirror;
      if (passOverLimit !== undefined) {
        const due = candidates.find((m) => m.kvBlocked || m.passOvers >= passOverLimit);
        const best = Math.max(...candidates.map((m) => clampedAffinity(affinities.get(m.id) ?? 0)));
        pick = due ?? (candidates.find((m) => clampedAffinity(affinities.get(m.id) ?? 0) === best) as Mirror);
      }
      const fits = kvReserved + pick.kvTokens <= maxKvTokens;
      if (i === output.admitted.length) {
        // Slots and budget were left, and a candidate: only the KV budget can have stopped it.
        assert.ok(!fits, `${where}: step ${stepIndex} stopped admitting before ${pick.id}, which fits`);
        pick.kvBlocked = true;
        break;
      }
      assert.equal(output.admitted[i], pick.id, `${where}: step ${stepIndex} admission ${i}`);
      assert.ok(fits, `${where}: ${pick.id} admitted over the KV budget`);
      for (const older of candidates.slice(0, candidates.indexOf(pick))) {
        older.passOvers++;
        passOvers++;
        assert.ok(passOverLimit !== undefined && older.passOvers <= passOverLimit, `${where}: ${older.id} passed over ${older.passOvers} times`);
      }
      waiting.splice(waiting.indexOf(pick), 1);
      runningBy.set(pick.client, (runningBy.get(pick.client) ?? 0) + 1);
      kvReserved += pick.kvTokens;
    }
    assert.equal(s.passOvers, passOvers, where);
    assert.equal(s.kvTokensReserved, kvReserved, where);
    assert.ok(kvReserved <= maxKvTokens, where);

    if (!mode.expertAware && !mode.constrained) {
      // Strictly the head of the queue, in order, within bounded time.
      assert.deepEqual(output.admitted, waitingBefore.slice(0, output.admitted.length).map((m) => m.id), where);
      for (const [i, id] of output.admitted.entries()) {
        const m = byId.get(id);
        assert.ok(m !== undefined, where);
        // The ones behind the first became the head during this schedule(), as those before them were admitted.
        if (i > 0) m.headAt ??= { step: stepIndex, runningWork: 0 };
        assert.ok(m.headAt !== undefined, `${where}: ${id} admitted before being the head`);
        assert.ok(
          stepIndex - m.headAt.step <= m.headAt.runningWork,
          `${where}: ${id} waited ${stepIndex - m.headAt.step} steps at the head, running work was ${m.headAt.runningWork}`,
        );
      }
    }
    for (const id of output.admitted) (byId.get(id) as Mirror).state = 'running';

    // Chunks: within budget, each request once, each exactly continuing its computed tokens.
    assert.ok(used <= config.maxBatchTokens, `${where}: ${used} tokens scheduled`);
    assert.equal(new Set(output.steps.map((c) => c.id)).size, output.steps.length, where);
    const running = mirrors.filter((m) => m.state === 'running');
    assert.ok(running.length <= config.maxSeqs, where);
    assert.equal(s.numRunning, running.length, where);
    for (const c of output.steps) {
      const m = byId.get(c.id);
      assert.ok(m?.state === 'running', where);
      const known = m.promptTokens + m.generated;
      assert.ok(c.count >= 1, where);
      assert.equal(c.start, m.computed, where);
      assert.ok(c.start + c.count <= known, where);
      assert.equal(c.samples, c.start + c.count === known, where);
    }
    // Work-conserving: a request short of its tokens, or a queue left waiting, means the budget or slots ran
    // out (with clients, `after`s and a KV budget, the replay above says why admission stopped instead).
    const shortchanged = running.some((m) => {
      const c = output.steps.find((x) => x.id === m.id);
      return (c?.count ?? 0) < m.promptTokens + m.generated - m.computed;
    });
    if (shortchanged) assert.equal(used, config.maxBatchTokens, where);
    if (s.numWaiting > 0 && !mode.constrained) assert.ok(used === config.maxBatchTokens || running.length === config.maxSeqs, where);
    // Admission leaves every running request's next demand within budget, so none ever waits.
    assert.equal(output.steps.length, running.length, `${where}: a running request got no tokens`);

    if (rand(1, 2) === 1) randomAbort(); // sometimes between schedule and update

    const sampled = new Map(output.steps.filter((c) => c.samples).map((c) => [c.id, rand(0, 999)]));
    const finished = s.update(output, sampled);
    const expectFinished: string[] = [];
    for (const c of output.steps) {
      const m = byId.get(c.id);
      assert.ok(m !== undefined, where);
      m.computed += c.count;
      if (c.samples) m.generated += 1;
      if (m.generated === m.maxTokens) expectFinished.push(m.id);
    }
    assert.deepEqual(
      finished.map((f) => f.id),
      expectFinished,
      where,
    );
    for (const f of finished) {
      const m = byId.get(f.id);
      assert.ok(m !== undefined && f.status === RequestStatus.FINISHED_LENGTH, where);
      m.state = 'done';
      m.finalStatus = f.status;
      pendingAborts.delete(f.id);
    }

    // Bookkeeping agrees with the mirror.
    for (const m of mirrors) {
      const state = s.requestState(m.id);
      if (m.state === 'done') {
        assert.equal(state, undefined, where);
        continue;
      }
      assert.deepEqual(
        state,
        {
          status: m.state === 'waiting' ? RequestStatus.WAITING : RequestStatus.RUNNING,
          computedTokens: m.computed,
          totalTokens: m.promptTokens + m.generated,
          generatedTokens: m.generated,
        },
        `${where} ${m.id}`,
      );
    }
    stepIndex++;
  }

  assert.equal(mirrors.length, total, where);
  for (const m of mirrors) {
    assert.equal(m.state, 'done', where);
    assert.ok(
      m.finalStatus === RequestStatus.FINISHED_LENGTH || m.finalStatus === RequestStatus.FINISHED_ABORTED,
      `${where} ${m.id}`,
    );
    if (m.finalStatus === RequestStatus.FINISHED_LENGTH) assert.equal(m.generated, m.maxTokens, where);
  }
  if (mode.expertAware) assert.ok(mirrors.every((m) => m.passOvers <= (passOverLimit as number)), where);
}

describe('Scheduler: per-client shares and the KV budget', () => {
  test("another client's request is admitted at the next free slot, ahead of a busy client's queue", () => {
    const s = makeScheduler({ maxSeqs: 2, maxBatchTokens: 64, maxQueue: 64 });
    for (let i = 0; i < 10; i++) s.add({ id: `a${i}`, promptTokens: 2, maxTokens: 2, client: 'A' });
    s.add({ id: 'b0', promptTokens: 2, maxTokens: 2, client: 'B' });
    const first = s.schedule();
    // Slots were free for two: A's oldest, then B (its client runs nothing, A runs one).
    assert.deepEqual(first.admitted, ['a0', 'b0']);
  });

  test('with one client, admission is FIFO as before', () => {
    const s = makeScheduler({ maxSeqs: 3, maxBatchTokens: 64 });
    for (const id of ['x', 'y', 'z', 'w']) s.add({ id, promptTokens: 2, maxTokens: 2, client: 'A' });
    assert.deepEqual(s.schedule().admitted, ['x', 'y', 'z']);
  });

  test('a client at maxSeqsPerClient waits while other clients run', () => {
    const s = makeScheduler({ maxSeqs: 4, maxBatchTokens: 64, maxSeqsPerClient: 1 });
    for (const id of ['a0', 'a1']) s.add({ id, promptTokens: 2, maxTokens: 2, client: 'A' });
    s.add({ id: 'b0', promptTokens: 2, maxTokens: 2, client: 'B' });
    assert.deepEqual(s.schedule().admitted, ['a0', 'b0']);
    assert.equal(s.numWaiting, 1);
  });

  test('one client may queue maxQueuePerClient requests; more are refused with ClientQueueFullError, others still queue', () => {
    const s = makeScheduler({ maxSeqs: 1, maxQueue: 10, maxQueuePerClient: 3 });
    for (let i = 0; i < 3; i++) s.add({ id: `a${i}`, promptTokens: 2, maxTokens: 2, client: 'A' });
    assert.throws(() => s.add({ id: 'a3', promptTokens: 2, maxTokens: 2, client: 'A' }), (e: unknown) => e instanceof ClientQueueFullError && e.code === 'client_queue_full');
    s.add({ id: 'b0', promptTokens: 2, maxTokens: 2, client: 'B' });
    assert.equal(s.numWaiting, 4);
  });

  test('admission reserves prompt + max_tokens of KV; a request that does not fit waits, and nothing overtakes it', () => {
    const s = makeScheduler({ maxSeqs: 8, maxBatchTokens: 64, maxKvTokens: 100 });
    s.add({ id: 'a', promptTokens: 10, maxTokens: 50 });
    s.add({ id: 'b', promptTokens: 10, maxTokens: 50 });
    s.add({ id: 'c', promptTokens: 2, maxTokens: 2 });
    const out = s.schedule();
    assert.deepEqual(out.admitted, ['a']);
    assert.equal(s.kvTokensReserved, 60);
    s.finish('a', RequestStatus.FINISHED_STOPPED);
    assert.equal(s.kvTokensReserved, 0);
    assert.deepEqual(s.schedule().admitted, ['b', 'c']);
    assert.equal(s.kvTokensReserved, 64);
  });

  test('a request whose reservation alone exceeds the KV budget is refused with KvBudgetError', () => {
    const s = makeScheduler({ maxKvTokens: 100 });
    assert.throws(() => s.add({ id: 'big', promptTokens: 50, maxTokens: 51 }), (e: unknown) => e instanceof KvBudgetError && e.kvTokens === 101);
    s.add({ id: 'fits', promptTokens: 50, maxTokens: 50 });
  });
});

describe('Scheduler: expert-aware admission', () => {
  /** Hooks whose affinity is read from `affinity` at each call (0 for ids it lacks). */
  const affinityHooks = (affinity: Map<string, number>): AdmissionHooks => ({ cachedTokens: () => 0, expertAffinity: (id) => affinity.get(id) ?? 0 });
  const aware = (passOverLimit: number, config: Partial<SchedulerConfig> = {}): SchedulerConfig => ({ maxBatchTokens: 64, maxSeqs: 1, maxQueue: 8, expertAware: { passOverLimit }, ...config });

  test('admits a high-affinity request before an older low-affinity one, counting one pass-over', () => {
    const s = new Scheduler(aware(4), affinityHooks(new Map([['old', 0.1], ['hot', 0.9]])));
    s.add({ id: 'old', promptTokens: 2, maxTokens: 1 });
    s.add({ id: 'hot', promptTokens: 2, maxTokens: 1 });
    assert.deepEqual(s.schedule().admitted, ['hot']);
    assert.equal(s.passOvers, 1);
  });

  test('with expert-aware admission off, admission is FIFO whatever the affinities', () => {
    const s = new Scheduler({ maxBatchTokens: 64, maxSeqs: 3, maxQueue: 8 }, affinityHooks(new Map([['x', 0], ['y', 0.5], ['z', 1]])));
    for (const id of ['x', 'y', 'z']) s.add({ id, promptTokens: 2, maxTokens: 1 });
    assert.deepEqual(s.schedule().admitted, ['x', 'y', 'z']);
    assert.equal(s.passOvers, 0);
  });

  test('equal affinities go oldest first, and passOverLimit 0 is FIFO', () => {
    const tied = new Scheduler(aware(4, { maxSeqs: 3 }), affinityHooks(new Map([['x', 0.5], ['y', 0.5], ['z', 0.2]])));
    for (const id of ['x', 'y', 'z']) tied.add({ id, promptTokens: 2, maxTokens: 1 });
    assert.deepEqual(tied.schedule().admitted, ['x', 'y', 'z']);
    const fifo = new Scheduler(aware(0, { maxSeqs: 3 }), affinityHooks(new Map([['x', 0], ['y', 0.5], ['z', 1]])));
    for (const id of ['x', 'y', 'z']) fifo.add({ id, promptTokens: 2, maxTokens: 1 });
    assert.deepEqual(fifo.schedule().admitted, ['x', 'y', 'z']);
  });

  test('a request passed over passOverLimit times goes first, whatever its affinity', () => {
    const s = new Scheduler(aware(2), affinityHooks(new Map([['cold', 0], ['hot1', 1], ['hot2', 1], ['hot3', 1]])));
    for (const id of ['cold', 'hot1', 'hot2', 'hot3']) s.add({ id, promptTokens: 2, maxTokens: 1 });
    // Each finishes in the step that admits it, freeing the one slot for the next.
    const order = [1, 2, 3, 4].map(() => step(s).output.admitted);
    assert.deepEqual(order, [['hot1'], ['hot2'], ['cold'], ['hot3']]);
    assert.equal(s.passOvers, 2);
  });

  test('a request whose KV reservation does not fit is not overtaken by one of higher affinity that fits, in later steps either', () => {
    const affinity = new Map([['big', 0.9], ['small', 0.1]]);
    const s = new Scheduler(aware(4, { maxSeqs: 4, maxKvTokens: 100 }), affinityHooks(affinity));
    s.add({ id: 'running', promptTokens: 10, maxTokens: 50 });
    assert.deepEqual(step(s).output.admitted, ['running']);
    s.add({ id: 'big', promptTokens: 10, maxTokens: 50 });
    s.add({ id: 'small', promptTokens: 2, maxTokens: 2 });
    assert.deepEqual(step(s).output.admitted, [], 'big is chosen and does not fit: nothing after it');
    affinity.set('big', 0).set('small', 1);
    assert.deepEqual(step(s).output.admitted, [], 'small now scores higher, and still waits behind big');
    s.finish('running', RequestStatus.FINISHED_STOPPED);
    assert.deepEqual(step(s).output.admitted, ['big', 'small']);
  });

  test('affinity reorders only within the client rule: the client with fewer running goes first', () => {
    const s = new Scheduler(aware(4, { maxSeqs: 2 }), affinityHooks(new Map([['a1', 1], ['b0', 0]])));
    s.add({ id: 'a0', promptTokens: 2, maxTokens: 50, client: 'A' });
    assert.deepEqual(step(s).output.admitted, ['a0']);
    s.add({ id: 'a1', promptTokens: 2, maxTokens: 1, client: 'A' });
    s.add({ id: 'b0', promptTokens: 2, maxTokens: 1, client: 'B' });
    assert.deepEqual(s.schedule().admitted, ['b0']);
    assert.equal(s.passOvers, 0, 'a1 was no candidate: its client runs more');
  });

  test('clients tied at the fewest running compete on affinity', () => {
    const s = new Scheduler(aware(4), affinityHooks(new Map([['a0', 0.2], ['b0', 0.8]])));
    s.add({ id: 'a0', promptTokens: 2, maxTokens: 1, client: 'A' });
    s.add({ id: 'b0', promptTokens: 2, maxTokens: 1, client: 'B' });
    assert.deepEqual(s.schedule().admitted, ['b0']);
    assert.equal(s.passOvers, 1);
  });

  test('rejects a passOverLimit that is not a non-negative integer', () => {
    for (const bad of [-1, 1.5, Number.NaN]) {
      assert.throws(() => new Scheduler(aware(bad)), (e: unknown) => e instanceof RangeError && e.message.includes('passOverLimit'));
    }
  });
});
