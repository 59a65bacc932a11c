// OpenAI's response_format as a grammar on each sequence's tokens: json_object (any JSON object) and
// json_schema (a value valid against the schema), with the model's stop token only once the JSON is complete.
// The grammar engine is xgrammar (the one vLLM and SGLang use), in its WebAssembly build; grammar/ holds what
// is particular to that build. The engine applies the result through token-constraint.ts's interface.
import { LRUCache } from 'lru-cache';
import { readGrammarVocabulary, type GrammarVocabulary } from './grammar/grammar-vocabulary.js';
import { findUnenforceableSchemaPart } from './grammar/schema-support.js';
import {
  loadXgrammar,
  nativeMatcherOf,
  readMaskNow,
  wrapNativeMatcher,
  xgrammarMessage,
  type CompiledGrammar,
  type GrammarCompiler,
  type GrammarMatcher,
  type MaskSource,
  type NativeMatcher,
  type NativeMatcherClass,
  type TokenizerInfo,
  type XgrammarInstance,
} from './grammar/xgrammar-module.js';
import type { ConstraintSource, TokenConstraint } from './token-constraint.js';

export type { GrammarVocabulary } from './grammar/grammar-vocabulary.js';
export { grammarVocabularyFromTokenizerJson, readGrammarVocabulary } from './grammar/grammar-vocabulary.js';
export type { TokenConstraint } from './token-constraint.js';

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | {
      type: 'json_schema';
      // null as absent, as the OpenAI SDKs may send it.
      json_schema: { name: string; schema?: Record<string, unknown> | null; strict?: boolean | null; description?: string | null };
    };

/** A compiled response format: one constraint per sequence (n > 1 makes several from one compile). */
export type CompiledFormat = ConstraintSource;

/** A schema the engine cannot compile (unsupported keyword, invalid schema): the API answers 400 with its message. */
export class ResponseFormatError extends Error {
  readonly code = 'invalid_response_format';
  readonly param = 'response_format';

  constructor(message: string) {
    super(message);
    this.name = 'ResponseFormatError';
  }
}

/** A token the grammar does not allow was fed to accept(): the mask was not applied, or not to this sequence. */
export class TokenNotAllowedError extends Error {
  readonly code = 'token_not_allowed';

  constructor(
    readonly token: number,
    reason: string,
  ) {
    super(`token ${token} cannot follow here: ${reason}`);
    this.name = 'TokenNotAllowedError';
  }
}

/** xgrammar itself failed (not the request's schema): a server error. */
export class GrammarEngineError extends Error {
  readonly code = 'grammar_engine_failed';

  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'GrammarEngineError';
  }
}

// The layout of the JSON: one line, with Python json.dumps' separators ", " and ": ". No whitespace is left to
// the model's choice: given any, small models emit spaces and newlines until max_tokens.
const ANY_WHITESPACE = false;
const ONE_LINE = -1; // xgrammar's "no indent"
const DEFAULT_SEPARATORS = undefined; // (", ", ": ") when on one line
// json_object: OpenAI's JSON mode promises an object at the top level, whatever it holds.
const ANY_OBJECT_SCHEMA = '{"type":"object"}';

export interface JsonConstraintOptions {
  /** Compiled formats kept for reuse, least recently used evicted first (64 if not given). */
  readonly maxCachedFormats?: number;
}

/** Per model: compiles response formats into per-sequence constraints, caching compiled grammars by schema text. */
export class JsonConstraintCompiler {
  private readonly checker = new SchemaChecker();
  private readonly cache: LRUCache<string, CompiledFormat>;
  private disposed = false;

  private constructor(
    private runtime: MatchingRuntime,
    private readonly rebuildRuntime: () => Promise<MatchingRuntime>,
    options: JsonConstraintOptions,
  ) {
    // Eviction only drops the cache's reference: a request may still hold the format, and the native grammar
    // is freed when the last holder lets it go (see XgrammarFormat).
    this.cache = new LRUCache({ max: options.maxCachedFormats ?? 64 });
  }

  /**
   * `vocabSize` is the model's (config.json vocab_size, the logits' row length), which may exceed the
   * tokenizer's; `stopTokenIds` the tokens that end a sequence (EOS), the only ones allowed once the JSON is
   * complete. Takes about 60 ms for an 8k vocabulary (the vocabulary is decoded and sorted once).
   */
  static async create(
    vocabulary: GrammarVocabulary,
    vocabSize: number,
    stopTokenIds: readonly number[],
    options: JsonConstraintOptions = {},
  ): Promise<JsonConstraintCompiler> {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < vocabulary.encodedTokens.length) {
      throw new RangeError(`vocabSize must be an integer of at least the tokenizer's ${vocabulary.encodedTokens.length} tokens, got ${vocabSize}`);
    }
    if (stopTokenIds.length === 0) throw new RangeError('at least one stop token id is needed: a constrained sequence ends with one');
    for (const id of stopTokenIds) {
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new RangeError(`stop token id ${id} is outside the vocabulary (0..${vocabSize - 1})`);
    }
    const build = (): Promise<MatchingRuntime> => MatchingRuntime.create(vocabulary, vocabSize, [...stopTokenIds]);
    return new JsonConstraintCompiler(await build(), build, options);
  }

  /** create() with the vocabulary of the model directory's tokenizer.json. */
  static async fromModelDir(
    modelDir: string,
    vocabSize: number,
    stopTokenIds: readonly number[],
    options: JsonConstraintOptions = {},
  ): Promise<JsonConstraintCompiler> {
    return JsonConstraintCompiler.create(await readGrammarVocabulary(modelDir), vocabSize, stopTokenIds, options);
  }

  /** Throws ResponseFormatError for a bad schema. Returns null for {type:'text'}. */
  async compile(format: ResponseFormat): Promise<CompiledFormat | null> {
    if (this.disposed) throw new Error('JsonConstraintCompiler used after dispose()');
    const spec = grammarSpecOf(format);
    if (spec === null) return null;
    // The schema's text as given: property order matters (the grammar writes properties in that order).
    const key = `${spec.strict ? 'strict' : 'loose'}:${spec.schemaText}`;
    const cached = this.cache.get(key);
    if (cached) return cached;
    await this.checker.check(spec);
    if (this.runtime.instance.aborted) {
      // Formats of the failed instance cannot make matchers any more.
      this.cache.clear();
      this.runtime = await this.rebuildRuntime();
    }
    const compiled = await this.runtime.compile(spec);
    this.cache.set(key, compiled);
    return compiled;
  }

  /** Frees the tokenizer data; formats already handed out keep working until dropped. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.cache.clear();
    this.runtime.dispose();
  }
}

interface GrammarSpec {
  readonly schemaText: string;
  /** xgrammar's strict mode: properties and items the schema does not name are refused, not allowed. */
  readonly strict: boolean;
}

function grammarSpecOf(format: ResponseFormat): GrammarSpec | null {
  switch (format.type) {
    case 'text':
      return null;
    case 'json_object':
      return { schemaText: ANY_OBJECT_SCHEMA, strict: false };
    case 'json_schema': {
      const schema = format.json_schema.schema;
      // OpenAI makes the schema optional; without one, the output is any JSON object, as in JSON mode.
      if (schema === undefined || schema === null) return { schemaText: ANY_OBJECT_SCHEMA, strict: false };
      if (typeof schema !== 'object' || Array.isArray(schema)) {
        throw new ResponseFormatError('response_format.json_schema.schema must be a JSON Schema object');
      }
      const problem = findUnenforceableSchemaPart(schema);
      if (problem) throw new ResponseFormatError(`response_format.json_schema.schema${problem.pointer ? ` at ${problem.pointer}` : ''}: ${problem.reason}`);
      // Strict whatever `strict` says: a property the schema does not name is valid JSON Schema unless
      // additionalProperties says otherwise, but a small model given the choice invents some; vLLM does the same.
      return { schemaText: JSON.stringify(schema), strict: true };
    }
  }
}

/**
 * Finds what xgrammar would reject in a schema, in an instance of its own: xgrammar reports a bad schema by
 * aborting the wasm instance, which must not be the one that serves the running sequences. It builds the
 * grammar (without the vocabulary: milliseconds) and throws it away; the serving instance then builds it
 * again, knowing it will not abort, and compiles it against the vocabulary.
 */
class SchemaChecker {
  private instance: XgrammarInstance | undefined;
  // One check at a time: each reads the instance's log, and one that aborts the instance must not share it.
  private queue: Promise<void> = Promise.resolve();

  check(spec: GrammarSpec): Promise<void> {
    const result = this.queue.then(() => this.checkNow(spec));
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async checkNow(spec: GrammarSpec): Promise<void> {
    const instance = (this.instance ??= loadXgrammar());
    instance.drainLog();
    try {
      const grammar = await instance.api.Grammar.fromJSONSchema(spec.schemaText, ANY_WHITESPACE, ONE_LINE, DEFAULT_SEPARATORS, spec.strict);
      grammar.dispose();
    } catch (error) {
      const log = instance.drainLog();
      if (instance.aborted) this.instance = undefined;
      const fatal = log.find((line) => line.startsWith('[FATAL]'));
      if (fatal !== undefined) throw new ResponseFormatError(`response_format.json_schema.schema: ${xgrammarMessage(fatal)}`);
      throw new GrammarEngineError('xgrammar failed to read the schema', { cause: error });
    }
    // A warning means xgrammar approximated the schema (an allOf of several schemas, a $ref outside the
    // document): the output might not be valid against it.
    const warning = instance.drainLog().find((line) => line.startsWith('[WARNING]'));
    if (warning !== undefined) throw new ResponseFormatError(`response_format.json_schema.schema: ${xgrammarMessage(warning)}`);
  }
}

/** The xgrammar instance that holds the vocabulary, compiles grammars and runs the matchers of the sequences. */
class MatchingRuntime {
  /** The embind class of GrammarMatcher, taken from the first matcher made through the public API. */
  private matcherClass: NativeMatcherClass | undefined;

  private constructor(
    readonly instance: XgrammarInstance,
    private readonly tokenizerInfo: TokenizerInfo,
    private readonly compiler: GrammarCompiler,
    readonly vocabSize: number,
    /** Bit t of word t >> 5 is set for each stop token t, as in xgrammar's masks. */
    readonly stopMask: Int32Array,
  ) {}

  static async create(vocabulary: GrammarVocabulary, vocabSize: number, stopTokenIds: number[]): Promise<MatchingRuntime> {
    const instance = loadXgrammar();
    const { api } = instance;
    const tokenizerInfo = await api.TokenizerInfo.createTokenizerInfo(
      [...vocabulary.encodedTokens], vocabulary.vocabType, vocabulary.addPrefixSpace, vocabSize, stopTokenIds,
    );
    // xgrammar's own cache is off: it has no bound in this build. Ours is the LRU in JsonConstraintCompiler.
    const compiler = await api.GrammarCompiler.createGrammarCompiler(tokenizerInfo, false);
    const stopMask = new Int32Array(Math.ceil(vocabSize / 32));
    for (const id of stopTokenIds) stopMask[id >> 5]! |= 1 << (id & 31);
    return new MatchingRuntime(instance, tokenizerInfo, compiler, vocabSize, stopMask);
  }

  async compile(spec: GrammarSpec): Promise<CompiledFormat> {
    let compiled: CompiledGrammar;
    try {
      compiled = await this.compiler.compileJSONSchema(spec.schemaText, ANY_WHITESPACE, ONE_LINE, DEFAULT_SEPARATORS, spec.strict);
    } catch (error) {
      const fatal = this.instance.drainLog().find((line) => line.startsWith('[FATAL]'));
      throw new GrammarEngineError(`xgrammar failed to compile a schema it had accepted${fatal ? `: ${xgrammarMessage(fatal)}` : ''}`, { cause: error });
    }
    if (this.matcherClass === undefined) {
      const template: GrammarMatcher = await this.instance.api.GrammarMatcher.createGrammarMatcher(compiled);
      const native = nativeMatcherOf(template);
      this.matcherClass = native.constructor as NativeMatcherClass;
      template.dispose();
    }
    return new XgrammarFormat(this, compiled, this.matcherClass);
  }

  dispose(): void {
    this.compiler.dispose();
    this.tokenizerInfo.dispose();
  }
}

const maskReads = { ahead: 0, synchronous: 0 };

/**
 * How the masks used so far were read, process-wide: ahead (the fast path, while the engine awaits a forward
 * pass) or synchronously when asked (one embind call per 32 tokens). For tests and metrics.
 */
export function maskReadCounts(): { readonly ahead: number; readonly synchronous: number } {
  return { ...maskReads };
}

// Native memory in the wasm instance is never collected: a format is freed when the last JS reference to it
// goes (a request and the cache may both hold it, and neither knows about the other); a constraint is
// freed by dispose(), or here if its owner forgot.
const nativeFinalizer = new FinalizationRegistry<{ delete(): void }>((handle) => {
  try {
    handle.delete();
  } catch {
    // Already deleted, or its instance aborted: nothing left to free.
  }
});

class XgrammarFormat implements CompiledFormat {
  constructor(
    private readonly runtime: MatchingRuntime,
    private readonly compiled: CompiledGrammar,
    private readonly matcherClass: NativeMatcherClass,
  ) {
    nativeFinalizer.register(this, compiled.handle as { delete(): void });
  }

  newConstraint(): TokenConstraint {
    if (this.runtime.instance.aborted) throw new GrammarEngineError('the grammar engine instance has failed; compile the format again');
    // The matcher keeps its own reference to the compiled grammar, so it outlives this format if need be.
    const native = new this.matcherClass(this.compiled.handle, undefined, false, -1);
    return new XgrammarConstraint(this.runtime, native);
  }
}

/** One sequence's grammar state. */
class XgrammarConstraint implements TokenConstraint {
  private native: NativeMatcher | null;
  /** The allowed-token bitmask of the current state, once read; bit t of word t >> 5 allows token t. */
  private mask: Int32Array | undefined;
  private onlyStopAllowed: boolean | undefined;
  private stopAccepted = false;
  /** Tokens accepted: a mask read ahead belongs to the state after exactly this many. */
  private step = 0;

  constructor(
    private readonly runtime: MatchingRuntime,
    native: NativeMatcher,
  ) {
    this.native = native;
    nativeFinalizer.register(this, native, this);
    this.readMaskAhead();
  }

  get terminated(): boolean {
    if (this.stopAccepted) return true;
    this.onlyStopAllowed ??= allowsOnly(this.currentMask(), this.runtime.stopMask);
    return this.onlyStopAllowed;
  }

  maskLogits(logits: Float32Array): void {
    const vocabSize = this.runtime.vocabSize;
    if (logits.length !== vocabSize) throw new RangeError(`a logits row has ${vocabSize} entries, got ${logits.length}`);
    const mask = this.stopAccepted ? this.runtime.stopMask : this.currentMask();
    for (let word = 0; word < mask.length; word++) {
      const bits = mask[word]!;
      if (bits === -1) continue; // all 32 allowed
      const first = word << 5;
      const end = Math.min(32, vocabSize - first);
      for (let bit = 0; bit < end; bit++) if (((bits >>> bit) & 1) === 0) logits[first + bit] = -Infinity;
    }
  }

  accept(token: number): void {
    const native = this.live();
    if (this.stopAccepted) throw new TokenNotAllowedError(token, 'the sequence already ended with a stop token');
    if (!Number.isInteger(token) || token < 0 || token >= this.runtime.vocabSize) throw new TokenNotAllowedError(token, `not a token id (0..${this.runtime.vocabSize - 1})`);
    if (!native.AcceptToken(token, false)) throw new TokenNotAllowedError(token, 'the grammar does not allow it');
    this.step++;
    this.mask = undefined;
    this.onlyStopAllowed = undefined;
    if (native.IsTerminated()) this.stopAccepted = true;
    else this.readMaskAhead();
  }

  dispose(): void {
    if (this.native === null) return;
    nativeFinalizer.unregister(this);
    this.native.delete();
    this.native = null;
  }

  private live(): NativeMatcher {
    if (this.native === null) throw new Error('TokenConstraint used after dispose()');
    return this.native;
  }

  // The engine asks for the mask after the next forward pass, an await away: by then the public asynchronous
  // read (one copy out of wasm memory) has run, and the synchronous read (one call per 32 tokens, about 5 ms
  // for a 150k vocabulary) is not needed. The asynchronous read reaches the matcher a few microtasks later,
  // through a guard: if a token was accepted meanwhile its state is another, and if that token was the stop
  // token xgrammar would abort the whole instance (every sequence's matcher) when asked for a mask.
  private readMaskAhead(): void {
    const step = this.step;
    const guard: MaskSource = {
      GetNextTokenBitmask: (vocabSize) => {
        if (step !== this.step || this.stopAccepted || this.native === null || this.mask !== undefined) throw new Error('stale mask read');
        return this.native.GetNextTokenBitmask(vocabSize);
      },
    };
    wrapNativeMatcher(this.runtime.instance.api, guard, this.runtime.vocabSize).getNextTokenBitmask().then(
      (mask) => {
        if (step !== this.step || this.mask !== undefined) return;
        this.mask = mask;
        maskReads.ahead++;
      },
      () => {
        // A stale read, refused by the guard; or a failure, which the synchronous read will meet again.
      },
    );
  }

  private currentMask(): Int32Array {
    if (this.mask === undefined) {
      this.mask = readMaskNow(this.live(), this.runtime.vocabSize);
      maskReads.synchronous++;
    }
    return this.mask;
  }
}

/** No bit is set in `mask` outside `allowed`. */
function allowsOnly(mask: Int32Array, allowed: Int32Array): boolean {
  for (let word = 0; word < mask.length; word++) if ((mask[word]! & ~allowed[word]!) !== 0) return false;
  return true;
}
