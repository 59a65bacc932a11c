// The only module that imports onnxruntime-node: execution providers, sessions, tensors and the
// lifetimes of device memory. Everything else sees RtTensor, DeviceTensor and GraphSession.
import { createRequire } from 'node:module';
import ort from 'onnxruntime-node';
import { GraphBuilder, type ConstTensor, type ElemType, type GraphModel } from '../graphs/onnx-builder.js';
import { DeviceUnavailableError, SessionRunError } from './errors.js';

export type RtTensor = ort.Tensor;
export type DeviceKind = 'cpu' | 'webgpu' | 'cuda';
export const DEVICE_KINDS: readonly DeviceKind[] = ['cpu', 'webgpu', 'cuda'];

export interface RuntimeOptions {
  readonly device: DeviceKind;
  /** CPU provider intra-op threads; 0 lets onnxruntime choose (one per physical core). */
  readonly cpuThreads?: number;
}

/** A second runtime working for another (the CPU side of hybrid expert execution): its runs are tallied with the other's, under kinds prefixed `prefix`. */
export interface TallyShare {
  readonly with: Runtime;
  readonly prefix: string;
}

/**
 * gpu-buffer tensors returned by sessions and not yet disposed, process-wide. Every such tensor must be
 * released exactly once (garbage collection never frees GPU memory), so tests check that this returns
 * to its baseline after work and never drops below it.
 */
let liveGpuTensors = 0;

export function liveGpuTensorCount(): number {
  return liveGpuTensors;
}

function disposeGpu(t: RtTensor): void {
  t.dispose();
  liveGpuTensors--;
}

/**
 * A tensor with exactly one owner. On webgpu it holds GPU memory that garbage collection never frees
 * (PLATFORM.md), so the owner must call dispose() once; using it afterwards is a bug and throws here
 * rather than deep inside onnxruntime.
 */
export class DeviceTensor {
  private static live = 0;
  private value: RtTensor | null;

  constructor(tensor: RtTensor, readonly bytes: number) {
    this.value = tensor;
    DeviceTensor.live++;
  }

  /** DeviceTensors not yet disposed, process-wide: tests check that evicted experts are really freed. */
  static get liveCount(): number {
    return DeviceTensor.live;
  }

  get tensor(): RtTensor {
    if (this.value === null) throw new Error('DeviceTensor used after dispose()');
    return this.value;
  }

  get disposed(): boolean {
    return this.value === null;
  }

  dispose(): void {
    if (this.value === null) throw new Error('DeviceTensor disposed twice');
    if (this.value.location === 'gpu-buffer') disposeGpu(this.value);
    this.value = null;
    DeviceTensor.live--;
  }

  [Symbol.dispose](): void {
    if (this.value !== null) this.dispose();
  }
}

export type Feeds = Record<string, RtTensor>;

/**
 * onnxruntime-node's native session, which its public InferenceSession wraps. The public run() defers
 * every run to a setImmediate callback and re-validates its arguments: ~19 us per run measured here
 * (28 us for an Identity graph against 9 us natively), paid ~30 times per token. The native object is
 * what that wrapper calls, with the same arguments; it is used when this version of the package has it
 * (checked at start-up), else the public API. Runs are synchronous either way (PLATFORM.md); the
 * forward pass yields to the event loop between layers itself.
 */
interface NativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: ort.InferenceSession.SessionOptions): void;
  run(feeds: Feeds, fetches: Record<string, RtTensor | null>, options: object): Feeds;
  dispose(): void;
  readonly inputMetadata: readonly { readonly name: string }[];
  readonly outputMetadata: readonly { readonly name: string }[];
}

interface NativeBinding {
  readonly binding: { readonly InferenceSession: new () => NativeSession };
  initOrt(): void;
}

function loadNativeBinding(): NativeBinding | null {
  try {
    const b = createRequire(import.meta.url)('onnxruntime-node/dist/binding') as Partial<NativeBinding>;
    const ctor = b.binding?.InferenceSession;
    if (typeof b.initOrt !== 'function' || typeof ctor !== 'function') return null;
    const proto = ctor.prototype as Partial<NativeSession>;
    if (typeof proto.run !== 'function' || typeof proto.loadModel !== 'function' || typeof proto.dispose !== 'function') return null;
    return b as NativeBinding;
  } catch {
    return null;
  }
}

const native = loadNativeBinding();

/** Session runs and the time spent in them, by kind of session; the per-token breakdown of `generate --stats`. */
export interface RunTally {
  runs: number;
  ms: number;
}

interface SessionCore {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Feeds, fetches: Record<string, RtTensor | null>): Feeds | Promise<Feeds>;
  release(): void | Promise<void>;
}

function nativeCore(bytes: Uint8Array, options: ort.InferenceSession.SessionOptions, binding: NativeBinding): SessionCore {
  binding.initOrt();
  const s = new binding.binding.InferenceSession();
  s.loadModel(bytes.buffer, bytes.byteOffset, bytes.byteLength, options);
  const noOptions = {};
  return {
    inputNames: s.inputMetadata.map((m) => m.name),
    outputNames: s.outputMetadata.map((m) => m.name),
    run: (feeds, fetches) => s.run(feeds, fetches, noOptions),
    release: () => s.dispose(),
  };
}

function publicCore(session: ort.InferenceSession): SessionCore {
  return {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    run: (feeds, fetches) => session.run(feeds, fetches),
    release: () => session.release(),
  };
}

/** One onnxruntime session over a graph built in memory, with input checks and failure diagnostics. */
export class GraphSession {
  private readonly inputSet: ReadonlySet<string>;
  private readonly allOutputs: Record<string, null>;

  constructor(
    readonly name: string,
    private readonly core: SessionCore,
    private readonly tally: RunTally,
  ) {
    this.inputSet = new Set(core.inputNames);
    this.allOutputs = Object.fromEntries(core.outputNames.map((n) => [n, null]));
  }

  get inputNames(): readonly string[] {
    return this.core.inputNames;
  }

  /** Runs the graph. `fetches` may preallocate outputs (the CPU provider writes into them in place). */
  async run(feeds: Feeds, fetches?: Record<string, RtTensor | null>): Promise<Feeds> {
    let given = 0;
    for (const n in feeds) {
      if (!this.inputSet.has(n)) given = -Infinity;
      given++;
    }
    if (given !== this.inputSet.size) {
      const missing = this.core.inputNames.filter((n) => !(n in feeds));
      const unknown = Object.keys(feeds).filter((n) => !this.inputSet.has(n));
      throw new SessionRunError(this.name, `missing inputs [${missing.join(', ')}], unknown inputs [${unknown.join(', ')}]`, describeFeeds(feeds));
    }
    const t0 = performance.now();
    try {
      // Every output is fetched; a preallocated one is written in place (the CPU provider honours it).
      const out = await this.core.run(feeds, fetches ? { ...this.allOutputs, ...fetches } : this.allOutputs);
      for (const n in out) if (out[n]?.location === 'gpu-buffer') liveGpuTensors++;
      return out;
    } catch (err) {
      throw new SessionRunError(this.name, (err as Error).message, describeFeeds(feeds));
    } finally {
      this.tally.runs++;
      this.tally.ms += performance.now() - t0;
    }
  }

  async release(): Promise<void> {
    await this.core.release();
  }
}

function describeFeeds(feeds: Feeds): string {
  return Object.entries(feeds)
    .map(([name, t]) => `  ${name}: ${t.type} [${t.dims.join(', ')}] on ${t.location}`)
    .join('\n');
}

/** x0.. -> y0..: one Identity per input, of the given element types, any shapes. */
function buildIdentities(types: readonly ElemType[]): Uint8Array {
  const g = new GraphBuilder('identities');
  types.forEach((type, i) => g.output(g.op('Identity', [g.input(`x${i}`, type, null)], {}, { name: `y${i}` }), `y${i}`, type, null));
  return g.toModelBytes();
}


export interface SessionCreation {
  /** Groups runs in the tallies (default: the session's name). */
  readonly kind?: string;
  /**
   * For small graphs made often (an expert per cache miss): no graph optimizations (the graph is built
   * minimal), no memory pattern or arena, which make creation and the first run slower than they save,
   * and one intra-op thread (no pool of threads per session).
   */
  readonly quick?: boolean;
}

export class Runtime {
  /** upload sessions by their inputs' element types, comma-separated */
  private readonly uploaders = new Map<string, Promise<GraphSession>>();
  private downloader: GraphSession | null = null;
  /** Runs and milliseconds per kind of session (the `kind` given at creation), since the runtime started. */
  readonly tallies: Map<string, RunTally>;
  private readonly tallyPrefix: string;

  private constructor(
    readonly options: Required<RuntimeOptions>,
    share?: TallyShare,
  ) {
    this.tallies = share?.with.tallies ?? new Map<string, RunTally>();
    this.tallyPrefix = share?.prefix ?? '';
  }

  /** Whether runs go through onnxruntime-node's native session directly (see NativeSession). */
  static get nativeRuns(): boolean {
    return native !== null;
  }

  /** A copy of the run tallies, to subtract from a later one (per-token breakdowns). */
  tallySnapshot(): Record<string, RunTally> {
    return Object.fromEntries([...this.tallies].map(([k, t]) => [k, { ...t }]));
  }

  private tallyOf(kind: string): RunTally {
    const key = this.tallyPrefix + kind;
    let t = this.tallies.get(key);
    if (!t) this.tallies.set(key, (t = { runs: 0, ms: 0 }));
    return t;
  }

  get device(): DeviceKind {
    return this.options.device;
  }

  /** Whether tensors a session returns may live in device memory (and need dispose()). */
  get onGpu(): boolean {
    return this.options.device !== 'cpu';
  }

  static async create(options: RuntimeOptions, share?: TallyShare): Promise<Runtime> {
    const backends = ort.listSupportedBackends();
    const backend = backends.find((b) => b.name === options.device);
    if (!backend) {
      throw new DeviceUnavailableError(options.device, `onnxruntime-node has no '${options.device}' provider here (available: ${backends.map((b) => b.name).join(', ')})`);
    }
    if (!backend.bundled && options.device === 'cuda') {
      // The CUDA provider ships separately; creating a session fails later with an opaque message.
      const probe = new Runtime({ device: 'cuda', cpuThreads: options.cpuThreads ?? 0 });
      try {
        await probe.createSession('cuda-probe', buildIdentities(['float32']), []);
      } catch (err) {
        throw new DeviceUnavailableError(
          'cuda',
          `the CUDA execution provider is not installed (${(err as Error).message.split('\n')[0]}). ` +
            'Install it with `npm rebuild onnxruntime-node --onnxruntime-node-install=cuda12` on a machine with CUDA 12 and network access, or use --device cpu|webgpu.',
        );
      }
    }
    return new Runtime({ device: options.device, cpuThreads: options.cpuThreads ?? 0 }, share);
  }

  /**
   * Creates a session over graph bytes. `deviceOutputs` name the outputs that should stay in device
   * memory on GPU providers (hidden states, KV cache); all others come back to the CPU.
   */
  async createSession(name: string, model: Uint8Array | GraphModel, deviceOutputs: readonly string[], o: SessionCreation = {}): Promise<GraphSession> {
    const { bytes: modelBytes, external } = model instanceof Uint8Array ? { bytes: model, external: [] } : model;
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: [this.options.device],
      graphOptimizationLevel: o.quick ? 'disabled' : 'all',
      logSeverityLevel: 3,
    };
    if (o.quick) {
      // Measured for an int4 tiny-moe expert: creation + first run 2.2 ms -> 0.9 ms, the same run time.
      options.enableMemPattern = false;
      options.enableCpuMemArena = false;
    }
    if (this.options.device === 'cpu' && (this.options.cpuThreads > 0 || o.quick)) {
      // Every session owns its thread pool in onnxruntime-node (no shared pool, PLATFORM.md): a cache of
      // thousands of expert sessions must not each start threads, so quick sessions run on this one.
      options.intraOpNumThreads = o.quick ? 1 : this.options.cpuThreads;
      options.interOpNumThreads = 1;
    }
    // Spinning worker threads keep cores busy between the many short runs of a decode step; measured
    // on 2 cores with tiny-moe: 2 threads gave 66 decode tokens/s spinning, 140 without.
    options.extra = { session: { intra_op: { allow_spinning: '0' } } };
    if (external.length > 0) options.externalData = external.map((e) => ({ path: e.path, data: e.data }));
    if (this.onGpu && deviceOutputs.length > 0) {
      options.preferredOutputLocation = Object.fromEntries(deviceOutputs.map((o) => [o, 'gpu-buffer' as const]));
    }
    try {
      const core = native ? nativeCore(modelBytes, options, native) : publicCore(await ort.InferenceSession.create(modelBytes, options));
      return new GraphSession(name, core, this.tallyOf(o.kind ?? name));
    } catch (err) {
      throw new SessionRunError(name, `session creation failed on ${this.options.device}: ${(err as Error).message}`, '');
    }
  }

  float32(data: Float32Array, dims: readonly number[]): RtTensor {
    return new ort.Tensor('float32', data, dims);
  }

  /** A host tensor over a constant's bytes (no copy). */
  tensorOf(c: ConstTensor): RtTensor {
    const b = c.bytes;
    switch (c.type) {
      case 'float32':
        return new ort.Tensor('float32', new Float32Array(alignedBuffer(b, 4), alignedOffset(b, 4), b.byteLength / 4), c.dims);
      case 'float16':
        return new ort.Tensor('float16', new Uint16Array(alignedBuffer(b, 2), alignedOffset(b, 2), b.byteLength / 2), c.dims);
      case 'uint8':
        return new ort.Tensor('uint8', b, c.dims);
      case 'int32':
        return new ort.Tensor('int32', new Int32Array(alignedBuffer(b, 4), alignedOffset(b, 4), b.byteLength / 4), c.dims);
      case 'int64':
        return new ort.Tensor('int64', new BigInt64Array(alignedBuffer(b, 8), alignedOffset(b, 8), b.byteLength / 8), c.dims);
    }
  }

  int64(data: BigInt64Array, dims: readonly number[]): RtTensor {
    return new ort.Tensor('int64', data, dims);
  }

  int32(data: Int32Array, dims: readonly number[]): RtTensor {
    return new ort.Tensor('int32', data, dims);
  }

  /** Frees a tensor a session returned, if it lives in device memory; host tensors are left to the GC. */
  release(t: RtTensor | undefined): void {
    if (t?.location === 'gpu-buffer') disposeGpu(t);
  }

  /**
   * Makes a device-resident copy of a host tensor. There is no API to create a GPU tensor from JS
   * data, so on GPU providers an Identity session with a gpu-buffer output does the upload.
   */
  async toDevice(host: RtTensor): Promise<DeviceTensor> {
    const [d] = await this.toDeviceAll([host]);
    return d as DeviceTensor;
  }

  /**
   * Device-resident copies of several host tensors in one run (an Identity per tensor, one session per
   * list of element types): on GPU providers each run costs a fixed 0.4-1.9 ms (PLATFORM.md), which for
   * an expert's three or more pieces can cost more than moving its bytes.
   */
  async toDeviceAll(hosts: readonly RtTensor[]): Promise<DeviceTensor[]> {
    const bytes = hosts.map((h) => h.size * bytesPerElement(h.type));
    if (!this.onGpu) return hosts.map((h, i) => new DeviceTensor(h, bytes[i] as number));
    if (hosts.length === 0) return [];
    const types = hosts.map((h) => elemTypeOf(h.type));
    const key = types.join(',');
    let uploader = this.uploaders.get(key);
    if (!uploader) {
      uploader = this.createSession(`upload_${types.length}`, buildIdentities(types), types.map((_, i) => `y${i}`), { kind: 'upload' });
      this.uploaders.set(key, uploader);
      uploader.catch(() => this.uploaders.delete(key));
    }
    const out = await (await uploader).run(Object.fromEntries(hosts.map((h, i) => [`x${i}`, h])));
    return hosts.map((_, i) => new DeviceTensor(out[`y${i}`] as RtTensor, bytes[i] as number));
  }

  /** Reads a float32 tensor back to host memory. Never getData() on a gpu-buffer tensor: it aborts. */
  async toHost(t: RtTensor): Promise<Float32Array> {
    if (t.location !== 'gpu-buffer') return t.data as Float32Array;
    this.downloader ??= await this.createSession('download', buildIdentities(['float32']), [], { kind: 'download' });
    const out = await this.downloader.run({ x0: t });
    return (out.y0 as RtTensor).data as Float32Array;
  }
}

function elemTypeOf(type: RtTensor['type']): ElemType {
  if (type === 'float32' || type === 'float16' || type === 'uint8' || type === 'int32' || type === 'int64') return type;
  throw new RangeError(`no device upload for ${type} tensors`);
}

/** The buffer of a typed view of `b` with `align`-byte elements: b's own when aligned, else a copy's. */
function alignedBuffer(b: Uint8Array, align: number): ArrayBufferLike {
  return b.byteOffset % align === 0 ? b.buffer : b.slice().buffer;
}

function alignedOffset(b: Uint8Array, align: number): number {
  return b.byteOffset % align === 0 ? b.byteOffset : 0;
}

function bytesPerElement(type: RtTensor['type']): number {
  switch (type) {
    case 'float32':
    case 'int32':
    case 'uint32':
      return 4;
    case 'float16':
    case 'int16':
    case 'uint16':
      return 2;
    case 'int64':
    case 'uint64':
    case 'float64':
      return 8;
    default:
      return 1;
  }
}
