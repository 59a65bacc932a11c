// `moe-serve bench prefix`: multi-turn chat sessions replayed on an engine with the prefix cache and on one
// without, turn by turn, one request at a time so that time to first token is the prompt's alone. Each
// engine keeps its own conversation (its greedy replies become its history), and the two must generate the
// same tokens: the cache may only save work, never change an answer.
import { prepareChat, type ResponseFormats } from '../api/completion-request.js';
import { BatchEngine, type CompletionRequest } from '../engine/batch-engine.js';
import { MoeModel, type ModelLoadOptions } from '../engine/moe-model.js';
import { PrefixCache, type PrefixCacheStats } from '../engine/prefix-cache.js';
import { createRng } from '../engine/sampler.js';
import type { Token } from '../tokenizer/token.js';
import { totalsSince, type Peaks, type UtilizationTotals } from '../engine/step-utilization.js';
import { median, round, utilizationCell, utilizationFields } from './bench-format.js';
import { UsageError } from './cli-error.js';

export interface PrefixBenchOptions {
  readonly modelDir: string;
  readonly load: ModelLoadOptions;
  readonly sessions: number;
  readonly turns: number;
  readonly systemTokens: number;
  readonly userTokens: number;
  readonly replyTokens: number;
  /** Every session starts from the same system prompt (sessions then share its blocks). */
  readonly sharedSystem: boolean;
  readonly prefixCacheMb: number;
  readonly maxBatchTokens: number;
  readonly peaks: Peaks;
}

export class PrefixBenchFailedError extends Error {
  readonly code = 'prefix_bench_failed';

  constructor(problems: readonly string[]) {
    super(`bench prefix: ${problems.join('; ')}`);
    this.name = 'PrefixBenchFailedError';
  }
}

type EngineName = 'cache' | 'no-cache';
const ENGINES: readonly EngineName[] = ['cache', 'no-cache'];

interface ChatMessage {
  readonly role: 'system' | 'user' | 'assistant';
  readonly content: string;
}

/** One request of one session's turn on one engine. */
interface TurnSample {
  readonly session: number;
  readonly turn: number;
  readonly engine: EngineName;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  /** promptTokens - cachedTokens, as the result reports them */
  readonly prefillTokens: number;
  /** The same from engine.stats.tokensComputed: the request's tokens less one per decode step. */
  readonly prefillFromStats: number;
  /** Leading prompt tokens the previous turn's prompt and reply already held (0 on turn 1). */
  readonly historyTokens: number;
  readonly ttftMs: number;
  readonly completionIds: readonly Token[];
}

interface TurnRow {
  readonly bench: 'prefix';
  readonly turn: number;
  readonly engine: EngineName;
  readonly sessions: number;
  readonly prompt_tokens: number;
  readonly history_share: number;
  readonly cached_tokens: number;
  readonly prefill_tokens: number;
  /** The same from the engine's count of tokens computed: must equal prefill_tokens. */
  readonly prefill_tokens_stats: number;
  readonly ttft_ms_median: number;
  readonly ttft_ms_min: number;
  readonly ttft_ms_max: number;
}

/** The API's formats, none compiled: the bench sends plain-text chats only. */
const NO_FORMATS: ResponseFormats = { compile: async () => null };
const MODEL_NAME = 'bench';

export async function benchPrefix(o: PrefixBenchOptions): Promise<void> {
  await using model = await MoeModel.load(o.modelDir, o.load);
  // The engine turns the prefix cache off on GPU providers (their KV is never copied out): nothing to compare.
  if (model.runtime.onGpu) throw new UsageError(`--device ${o.load.device}: bench prefix needs a host KV cache (--device cpu); the prefix cache is off on GPU providers`);
  if (!model.tokenizer.chatTemplate) throw new UsageError(`--model ${o.modelDir}: bench prefix replays chats and this model has no chat_template`);
  const texts = new SessionTexts(model);
  const sessions = Array.from({ length: o.sessions }, (_, s) => texts.session(s, o));
  await checkContext(model, sessions, o);

  const prefixCache = new PrefixCache(Math.round(o.prefixCacheMb * 2 ** 20));
  // One request at a time: the engines never hold two, so their limits only need to admit one.
  const config = { maxBatchTokens: o.maxBatchTokens, maxSeqs: 1, maxQueue: 1 };
  await using cached = new BatchEngine(model, config, { prefixCache });
  await using uncached = new BatchEngine(model, config);
  const engines: Record<EngineName, BatchEngine> = { cache: cached, 'no-cache': uncached };

  // A throwaway request each, so that turn 1 does not pay first-run allocations. Its text is no chat, so its
  // blocks share no prefix with the sessions' (the template puts a role first).
  const warmIds = model.tokenizer.encode(texts.cut(texts.sentences(999_999), o.systemTokens + o.userTokens));
  for (const name of ENGINES) await measure(engines[name], { promptIds: warmIds, maxTokens: o.replyTokens, sampling: GREEDY, ignoreEos: true });
  const stepsAfterWarmUp = { cache: cached.stats.utilization.totals, 'no-cache': uncached.stats.utilization.totals };

  const samples: TurnSample[] = [];
  const problems: string[] = [];
  for (const [s, session] of sessions.entries()) {
    const history: Record<EngineName, { messages: ChatMessage[]; seen: readonly Token[] }> = {
      cache: { messages: [{ role: 'system', content: session.system }], seen: [] },
      'no-cache': { messages: [{ role: 'system', content: session.system }], seen: [] },
    };
    for (const [t, user] of session.users.entries()) {
      // Alternate which engine goes first, from turn to turn and from session to session (so that each turn
      // number sees both orders), so that neither always runs right after the other's decode.
      const order = (s + t) % 2 === 0 ? ENGINES : [...ENGINES].reverse();
      const turn: Partial<Record<EngineName, TurnSample>> = {};
      for (const name of order) {
        const h = history[name];
        h.messages.push({ role: 'user', content: user });
        const prepared = await prepareChat(model, MODEL_NAME, { model: MODEL_NAME, messages: h.messages, max_tokens: o.replyTokens, temperature: 0, ignore_eos: true }, NO_FORMATS);
        const promptIds = prepared.prompts[0]?.promptIds ?? [];
        if (promptIds.length + o.replyTokens > model.spec.maxPositions) {
          throw new UsageError(`session ${s + 1} turn ${t + 1}: the prompt has ${promptIds.length} tokens and --reply-tokens ${o.replyTokens} more do not fit the context of ${model.spec.maxPositions}; lower --turns, --user-tokens, --reply-tokens or --system-tokens`);
        }
        const m = await measure(engines[name], { ...prepared.request, promptIds });
        turn[name] = {
          session: s,
          turn: t + 1,
          engine: name,
          promptTokens: m.promptTokens,
          cachedTokens: m.cachedTokens,
          prefillTokens: m.promptTokens - m.cachedTokens,
          prefillFromStats: m.prefillFromStats,
          historyTokens: commonPrefix(promptIds, h.seen),
          ttftMs: m.ttftMs,
          completionIds: m.completionIds,
        };
        h.messages.push({ role: 'assistant', content: m.text });
        h.seen = [...promptIds, ...m.completionIds];
      }
      for (const sample of Object.values(turn)) {
        samples.push(sample);
        if (sample.prefillFromStats !== sample.prefillTokens) {
          problems.push(`session ${s + 1} turn ${t + 1} (${sample.engine}): the result says ${sample.prefillTokens} prompt tokens were computed, engine.stats.tokensComputed says ${sample.prefillFromStats}`);
        }
      }
      const differs = firstDifference(turn.cache?.completionIds ?? [], turn['no-cache']?.completionIds ?? []);
      if (differs >= 0) problems.push(`session ${s + 1} turn ${t + 1}: the completion with the prefix cache differs from the one without at token ${differs}`);
    }
  }

  const rows = turnRows(samples, o.turns);
  for (const row of rows) process.stdout.write(`${JSON.stringify(row)}\n`);
  const steps = { cache: totalsSince(cached.stats.utilization.totals, stepsAfterWarmUp.cache), 'no-cache': totalsSince(uncached.stats.utilization.totals, stepsAfterWarmUp['no-cache']) };
  const summary = summarize(samples, problems.length === 0, prefixCache.stats, steps, o.peaks);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.stdout.write(`\n${table(rows, summary)}\n`);
  if (problems.length > 0) throw new PrefixBenchFailedError(problems);
}

const GREEDY = { temperature: 0, topP: 1, topK: 0 } as const;

/** Runs one request alone: time to its first token, its tokens, and the prompt tokens the engine computed. */
async function measure(engine: BatchEngine, req: CompletionRequest) {
  const before = engine.stats.tokensComputed;
  const t0 = performance.now();
  const stream = engine.submit(req);
  let ttftMs = Number.NaN;
  for await (const chunk of stream) if (Number.isNaN(ttftMs) && chunk.tokenId !== null) ttftMs = performance.now() - t0;
  const r = await stream.result;
  // Every token but the last generated one went through a forward pass: prompt chunks, then one per decode step.
  const prefillFromStats = engine.stats.tokensComputed - before - Math.max(0, r.completionIds.length - 1);
  return { ttftMs, promptTokens: r.promptTokens, cachedTokens: r.cachedTokens, completionIds: r.completionIds, text: r.text, prefillFromStats };
}

/**
 * Refuses settings whose last turn would not fit the context, before anything runs: the last prompt is
 * rendered with stand-in replies of --reply-tokens tokens each.
 */
async function checkContext(model: MoeModel, sessions: readonly Session[], o: PrefixBenchOptions): Promise<void> {
  const flags = `--system-tokens ${o.systemTokens}, --turns ${o.turns}, --user-tokens ${o.userTokens}, --reply-tokens ${o.replyTokens}`;
  const fix = 'lower --turns, --user-tokens, --reply-tokens or --system-tokens';
  for (const session of sessions) {
    const messages: ChatMessage[] = [{ role: 'system', content: session.system }];
    for (const [t, user] of session.users.entries()) {
      messages.push({ role: 'user', content: user });
      if (t < session.users.length - 1) messages.push({ role: 'assistant', content: session.standInReply });
    }
    const limit = model.spec.maxPositions;
    let last: number;
    try {
      const prepared = await prepareChat(model, MODEL_NAME, { model: MODEL_NAME, messages, max_tokens: 1, temperature: 0 }, NO_FORMATS);
      last = prepared.prompts[0]?.promptIds.length ?? 0;
    } catch (err) {
      throw new UsageError(`${flags}: the last turn's prompt alone does not fit the context of ${limit} tokens (${(err as Error).message}); ${fix}`);
    }
    if (last + o.replyTokens > limit) {
      throw new UsageError(`${flags}: the last turn needs about ${last} prompt + ${o.replyTokens} reply tokens, more than the context of ${limit}; ${fix}`);
    }
  }
}

interface Session {
  readonly system: string;
  readonly users: readonly string[];
  /** Text of --reply-tokens tokens, standing in for a reply when checking the context. */
  readonly standInReply: string;
}

/**
 * Deterministic chat texts from a fixed pool of documentation-like sentences (the embedded model's domain).
 * Each session draws its own order, and each starts from a different sentence, so that sessions share no
 * block unless --shared-system asks them to.
 */
class SessionTexts {
  constructor(private readonly model: MoeModel) {}

  session(s: number, o: PrefixBenchOptions): Session {
    const systemWords = this.sentences(o.sharedSystem ? 0 : s);
    const userWords = this.sentences(10_000 + s);
    let at = 0;
    const users = Array.from({ length: o.turns }, () => {
      const text = this.cut(userWords.slice(at), o.userTokens);
      at += text.split(' ').length;
      return text;
    });
    return { system: this.cut(systemWords, o.systemTokens), users, standInReply: this.cut(this.sentences(20_000 + s), o.replyTokens) };
  }

  /** The pool's sentences as words, shuffled by `seed` and started at sentence `seed`, repeated as needed. */
  sentences(seed: number): string[] {
    // The sampler's seeded generator: the same sessions on every run and machine.
    const rng = createRng(seed + 1);
    const next = () => rng.next();
    const order = POOL.map((_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    const first = order.indexOf(seed % POOL.length);
    const rotated = [...order.slice(first), ...order.slice(0, first)];
    // Enough words for any text: the context bounds every text's tokens.
    const words: string[] = [];
    while (words.length < this.model.spec.maxPositions) for (const i of rotated) words.push(...(POOL[i] as string).split(' '));
    return words;
  }

  /** The shortest run of leading `words` that encodes to at least `tokens` tokens. */
  cut(words: readonly string[], tokens: number): string {
    let lo = 1;
    let hi = words.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.model.tokenizer.encode(words.slice(0, mid).join(' ')).length >= tokens) hi = mid;
      else lo = mid + 1;
    }
    return words.slice(0, lo).join(' ');
  }
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** The first position where two token lists differ (a length difference included), -1 when identical. */
function firstDifference(a: readonly number[], b: readonly number[]): number {
  const common = commonPrefix(a, b);
  return common === a.length && common === b.length ? -1 : common;
}

const mean = (xs: readonly number[]) => xs.reduce((n, x) => n + x, 0) / xs.length;

/** Per turn number and engine, over the sessions: token counts are means, TTFT its median and range. */
function turnRows(samples: readonly TurnSample[], turns: number): TurnRow[] {
  const rows: TurnRow[] = [];
  for (let turn = 1; turn <= turns; turn++) {
    for (const engine of ENGINES) {
      const of = samples.filter((x) => x.turn === turn && x.engine === engine);
      const ttft = of.map((x) => x.ttftMs);
      rows.push({
        bench: 'prefix',
        turn,
        engine,
        sessions: of.length,
        prompt_tokens: round(mean(of.map((x) => x.promptTokens))),
        history_share: round(mean(of.map((x) => x.historyTokens / x.promptTokens)), 3),
        cached_tokens: round(mean(of.map((x) => x.cachedTokens))),
        prefill_tokens: round(mean(of.map((x) => x.prefillTokens))),
        prefill_tokens_stats: round(mean(of.map((x) => x.prefillFromStats))),
        ttft_ms_median: round(median(ttft), 2),
        ttft_ms_min: round(Math.min(...ttft), 2),
        ttft_ms_max: round(Math.max(...ttft), 2),
      });
    }
  }
  return rows;
}

interface Summary {
  readonly bench: 'prefix';
  readonly phase: 'summary';
  /** Requests of turns 2 and later, per engine. */
  readonly later_turns: number;
  readonly history_share: number | null;
  readonly ttft_ms_median_cache: number | null;
  readonly ttft_ms_median_no_cache: number | null;
  /** Median over the later turns' pairs of (TTFT without the cache / TTFT with it). */
  readonly ttft_ratio_median: number | null;
  readonly prefill_tokens_cache: number;
  readonly prefill_tokens_no_cache: number;
  readonly outputs_identical: boolean;
  readonly prefix_cache: PrefixCacheStats;
  /** S-MBU and S-MFU of each engine's steps over the sessions (fractions of the peaks) */
  readonly s_mbu_cache: number | null;
  readonly s_mfu_cache: number | null;
  readonly s_mbu_no_cache: number | null;
  readonly s_mfu_no_cache: number | null;
}

function summarize(samples: readonly TurnSample[], identical: boolean, stats: PrefixCacheStats, steps: Record<EngineName, UtilizationTotals>, peaks: Peaks): Summary {
  const later = (engine: EngineName) => samples.filter((x) => x.turn >= 2 && x.engine === engine);
  const withCache = later('cache');
  const without = later('no-cache');
  const ratios = withCache.flatMap((c) => {
    const n = without.find((x) => x.session === c.session && x.turn === c.turn);
    return n ? [n.ttftMs / c.ttftMs] : [];
  });
  const some = withCache.length > 0;
  const useCache = utilizationFields(steps.cache, peaks);
  const useNoCache = utilizationFields(steps['no-cache'], peaks);
  return {
    bench: 'prefix',
    phase: 'summary',
    later_turns: withCache.length,
    history_share: some ? round(mean(withCache.map((x) => x.historyTokens / x.promptTokens)), 3) : null,
    ttft_ms_median_cache: some ? round(median(withCache.map((x) => x.ttftMs)), 2) : null,
    ttft_ms_median_no_cache: some ? round(median(without.map((x) => x.ttftMs)), 2) : null,
    ttft_ratio_median: ratios.length > 0 ? round(median(ratios), 2) : null,
    prefill_tokens_cache: withCache.reduce((n, x) => n + x.prefillTokens, 0),
    prefill_tokens_no_cache: without.reduce((n, x) => n + x.prefillTokens, 0),
    outputs_identical: identical,
    prefix_cache: stats,
    s_mbu_cache: useCache.s_mbu,
    s_mfu_cache: useCache.s_mfu,
    s_mbu_no_cache: useNoCache.s_mbu,
    s_mfu_no_cache: useNoCache.s_mfu,
  };
}

function table(rows: readonly TurnRow[], s: Summary): string {
  const head =
    '| turn | prompt tokens | history share | TTFT ms with cache | TTFT ms without | ratio | prefill tokens with / without | cached tokens |\n' +
    '|---|---|---|---|---|---|---|---|';
  const body: string[] = [];
  for (const c of rows.filter((r) => r.engine === 'cache')) {
    const n = rows.find((r) => r.engine === 'no-cache' && r.turn === c.turn);
    if (!n) continue;
    body.push(
      `| ${c.turn} | ${c.prompt_tokens} | ${(c.history_share * 100).toFixed(1)}% | ${c.ttft_ms_median} | ${n.ttft_ms_median} | ${round(n.ttft_ms_median / c.ttft_ms_median, 2)}x | ${c.prefill_tokens} / ${n.prefill_tokens} | ${c.cached_tokens} |`,
    );
  }
  const p = s.prefix_cache;
  const lines = [
    head,
    ...body,
    '',
    s.ttft_ratio_median === null
      ? 'turns 2+: none (--turns 1)'
      : `turns 2+: median TTFT ${s.ttft_ms_median_cache} ms with the cache, ${s.ttft_ms_median_no_cache} ms without: ${s.ttft_ratio_median}x (median of ${s.later_turns} paired ratios); ` +
        `history ${(Number(s.history_share) * 100).toFixed(1)}% of the prompt; prefill tokens ${s.prefill_tokens_cache} with, ${s.prefill_tokens_no_cache} without`,
    `outputs identical with and without the cache: ${s.outputs_identical ? 'yes' : 'NO'}`,
    `S-MBU / S-MFU of the sessions' steps: ${utilizationCell({ s_mbu: s.s_mbu_cache, s_mfu: s.s_mfu_cache })} with the cache, ${utilizationCell({ s_mbu: s.s_mbu_no_cache, s_mfu: s.s_mfu_no_cache })} without`,
    `prefix cache (warm-up included): ${p.lookups} lookups, ${p.hits} hits, ${p.hitTokens} of ${p.lookupTokens} looked-up tokens found, ` +
      `${p.blocks} blocks (${round(p.bytes / 2 ** 20, 2)} of ${round(p.budgetBytes / 2 ** 20, 2)} MiB), ${p.storedBlocks} stored, ${p.evictedBlocks} evicted`,
  ];
  return lines.join('\n');
}

/**
 * Plain sentences in the style of the Python documentation, the embedded model's training domain. Fixed, so
 * that every run replays the same chats.
 */
const POOL: readonly string[] = [
  'The Python interpreter reads a source file, compiles it to bytecode and executes the result one statement at a time.',
  'A list comprehension consists of brackets containing an expression followed by a for clause, then zero or more for or if clauses.',
  'Dictionaries are indexed by keys, which can be any immutable type; strings and numbers can always be keys.',
  'The with statement is used to wrap the execution of a block with methods defined by a context manager.',
  'Exceptions raised during the execution of a try clause are handled by the first matching except clause.',
  'A generator function returns an iterator that produces a sequence of values, one for each yield expression it reaches.',
  'Default argument values are evaluated once, when the function definition is executed, and not each time the function is called.',
  'The open function returns a file object, and is most commonly used with two arguments: the file name and the mode.',
  'Modules can import other modules, and it is customary but not required to place all import statements at the beginning of a module.',
  'A class definition creates a new local namespace, and all assignments to local variables go into this new namespace.',
  'The built-in function len returns the number of items of a sequence or collection, such as a string, a list or a dictionary.',
  'Strings are immutable sequences of Unicode code points, and string literals can be enclosed in single or double quotes.',
  'The range type represents an immutable sequence of numbers and is commonly used for looping a specific number of times.',
  'Keyword arguments must follow positional arguments, and no argument may receive a value more than once.',
  'The asyncio module provides infrastructure for writing single-threaded concurrent code using coroutines.',
  'A set is an unordered collection with no duplicate elements; basic uses include membership testing and eliminating duplicate entries.',
  'The pathlib module offers classes representing filesystem paths with semantics appropriate for different operating systems.',
  'If the value is not found, the method raises a ValueError rather than returning a special marker.',
  'The sorted function returns a new sorted list from the items in an iterable, and accepts an optional key function.',
  'Tuples are immutable, and usually contain a heterogeneous sequence of elements that are accessed via unpacking or indexing.',
  'The json module can serialize Python objects to a string and deserialize a string back into Python objects.',
  'A lambda expression yields an anonymous function object, restricted to a single expression in its body.',
  'The logging module defines functions and classes which implement a flexible event logging system for applications and libraries.',
  'Each thread has its own stack, but all threads of a process share the same global variables and heap.',
  'The subprocess module allows you to spawn new processes, connect to their input and output pipes, and obtain their return codes.',
  'Type hints are not enforced at runtime, but they can be used by third party tools such as type checkers and editors.',
  'A decorator is a function that takes another function and extends its behaviour without explicitly modifying it.',
  'The collections module implements specialized container datatypes such as deque, Counter, OrderedDict and defaultdict.',
  'Floating point numbers are usually implemented using double in C, and their precision depends on the machine.',
  'The re module provides regular expression matching operations similar to those found in Perl.',
  'The itertools module standardizes a core set of fast, memory efficient tools that are useful by themselves or in combination.',
  'An iterator is an object representing a stream of data; repeated calls to its next method return successive items.',
  'The argparse module makes it easy to write user-friendly command-line interfaces for programs and scripts.',
  'Virtual environments let each project have its own independent set of installed packages in its site directories.',
  'The unittest framework supports test automation, sharing of setup and shutdown code, and aggregation of tests into collections.',
  'A namespace is a mapping from names to objects, and most namespaces are currently implemented as Python dictionaries.',
  'The datetime module supplies classes for manipulating dates and times, with support for time zones and arithmetic.',
  'Slicing a sequence returns a new sequence containing the requested elements, and negative indices count from the end.',
  'The global statement declares that the listed identifiers are to be interpreted as globals in the current code block.',
  'When a module is imported for the first time, its code is executed and a module object is created in sys.modules.',
];
