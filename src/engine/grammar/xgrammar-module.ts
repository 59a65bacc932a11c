// Loads xgrammar's WebAssembly build (@mlc-ai/web-xgrammar) under Node, and names the few internals of it we use.
// The only module that touches the package at run time; json-constraint.ts builds on what this exports.
//
// Why not a plain `import`: the package declares "type": "module" but ships a UMD bundle that calls require()
// while loading, so Node's ESM loader fails ("require is not defined in ES module scope") and require() refuses
// the file as ESM. We evaluate the bundle as CommonJS ourselves. The .wasm is inlined in the bundle as base64,
// so nothing is fetched: it loads offline, from node_modules.
//
// Each loadXgrammar() evaluates the bundle anew and so gets its own wasm instance and memory. That is how we
// survive xgrammar's errors: an invalid schema makes its C++ code log "[FATAL] ..." and call abort(), after
// which that instance must not be trusted; we throw it away and load a fresh one.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type * as Xgrammar from '@mlc-ai/web-xgrammar';

export type XgrammarApi = typeof Xgrammar;
export type { CompiledGrammar, GrammarCompiler, GrammarMatcher, TokenizerInfo } from '@mlc-ai/web-xgrammar';

// Internals, from the package's lib/index.js and web/src/xgrammar_binding.cc (0.1.27, pinned in package.json):
// the public GrammarMatcher can only be created and asked for its mask asynchronously, because each method
// first awaits the wasm's start-up; the engine's sampler needs both synchronously. So we call the embind
// object behind a matcher (its `handle`) directly, with the method names the binding registers, and build
// the JS wrapper around a handle with its (TypeScript-private) constructor. test/unit/json-constraint.test.ts
// exercises each of these, so a package update that renames one fails there.

/** The embind std::vector<int32_t> GetNextTokenBitmask returns (embind's register_vector methods). */
interface NativeIntVector {
  size(): number;
  get(index: number): number;
  delete(): void;
}

/** The embind object behind a GrammarMatcher. */
export interface NativeMatcher {
  AcceptToken(tokenId: number, verbose: boolean): boolean;
  IsTerminated(): boolean;
  GetNextTokenBitmask(vocabSize: number): NativeIntVector;
  delete(): void;
}

/** The embind class of NativeMatcher: (compiled grammar, override stop tokens, terminate without stop token, max rollback). */
export type NativeMatcherClass = new (
  compiledGrammar: unknown,
  overrideStopTokens: undefined,
  terminateWithoutStopToken: boolean,
  maxRollbackTokens: number,
) => NativeMatcher;

export type MaskSource = Pick<NativeMatcher, 'GetNextTokenBitmask'>;
type GrammarMatcherConstructor = new (handle: MaskSource, vocabSize: number) => Xgrammar.GrammarMatcher;

export function nativeMatcherOf(matcher: Xgrammar.GrammarMatcher): NativeMatcher {
  return (matcher as unknown as { handle: NativeMatcher }).handle;
}

/**
 * The JS wrapper around a native matcher, for its asynchronous getNextTokenBitmask, which copies the mask out of
 * wasm memory at once. That method is all the wrapper may be used for: `native` needs only the one method it calls.
 */
export function wrapNativeMatcher(api: XgrammarApi, native: MaskSource, vocabSize: number): Pick<Xgrammar.GrammarMatcher, 'getNextTokenBitmask'> {
  return new (api.GrammarMatcher as unknown as GrammarMatcherConstructor)(native, vocabSize);
}

/**
 * The mask of the matcher's current state, read synchronously: bit t of word t >> 5 is set when token t is
 * allowed. One embind call per 32 tokens (about 1 µs each), so it is the slow path: the fast one is the
 * wrapper's getNextTokenBitmask, which copies the whole vector out of wasm memory at once.
 */
export function readMaskNow(native: NativeMatcher, vocabSize: number): Int32Array {
  const vector = native.GetNextTokenBitmask(vocabSize);
  try {
    const mask = new Int32Array(vector.size());
    for (let i = 0; i < mask.length; i++) mask[i] = vector.get(i);
    return mask;
  } finally {
    vector.delete();
  }
}

/** Lines a wasm instance wrote to stdout or stderr (xgrammar logs "[WARNING] ..." and "[FATAL] ..." there). */
class InstanceLog {
  private static readonly keptLines = 32;
  private lines: string[] = [];
  /** Set once the instance has called abort(): its memory may be half-updated, so it is not used again. */
  aborted = false;

  add(line: string): void {
    if (line.startsWith('Aborted(')) this.aborted = true;
    this.lines.push(line);
    if (this.lines.length > InstanceLog.keptLines) this.lines.shift();
  }

  /** The lines logged since the last call. */
  drain(): string[] {
    const lines = this.lines;
    this.lines = [];
    return lines;
  }
}

/** One wasm instance of xgrammar and what it has logged. */
export class XgrammarInstance {
  constructor(
    readonly api: XgrammarApi,
    private readonly log: InstanceLog,
  ) {}

  get aborted(): boolean {
    return this.log.aborted;
  }

  /** What the instance has logged since the last call: xgrammar's warnings, and the reason for an abort. */
  drainLog(): string[] {
    return this.log.drain();
  }
}

let bundle: { source: string; file: string } | undefined;

/** A fresh, independent xgrammar instance. The wasm itself starts on the first (async) API call. */
export function loadXgrammar(): XgrammarInstance {
  if (bundle === undefined) {
    const file = createRequire(import.meta.url).resolve('@mlc-ai/web-xgrammar');
    bundle = { source: readFileSync(file, 'utf8'), file };
  }
  const log = new InstanceLog();
  const write = (...args: unknown[]): void => log.add(args.map(String).join(' '));
  // The emscripten runtime binds console.log / console.error once, when the wasm starts; a console of our own,
  // passed in place of the global one, gives each instance its own log and keeps xgrammar's messages (which
  // are about a request's schema) out of the server's stderr.
  const instanceConsole = { log: write, info: write, warn: write, error: write, debug: write };
  const module = { exports: {} as Record<string, unknown> };
  // The dynamic import() inside the bundle (of 'module') resolves with Node's default loader from code made
  // by the Function constructor; vm.runInThisContext would need an experimental option for it.
  const evaluate = new Function('exports', 'require', 'module', '__filename', '__dirname', 'console', bundle.source);
  evaluate.call(module.exports, module.exports, createRequire(bundle.file), module, bundle.file, path.dirname(bundle.file), instanceConsole);
  return new XgrammarInstance(module.exports as unknown as XgrammarApi, log);
}

/** The message of xgrammar's log line without its "[FATAL] /path/file.cc:123: " prefix and failed-check text. */
export function xgrammarMessage(line: string): string {
  const match = /^\[(?:FATAL|WARNING|ERROR)\] [^:]*:\d+: (?:Check failed: .*? is false: )?(.*)$/s.exec(line);
  return (match?.[1] ?? line).trim();
}
