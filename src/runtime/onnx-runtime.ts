// The only module that imports onnxruntime-node: execution providers, sessions, tensors and the
// lifetimes of device memory. Everything else sees RtTensor, DeviceTensor and GraphSession.
import ort from 'onnxruntime-node';
import { GraphBuilder, type ElemType } from '../graphs/onnx-builder.js';
import { DeviceUnavailableError, SessionRunError } from './errors.js';

export type RtTensor = ort.Tensor;
export type DeviceKind = 'cpu' | 'webgpu' | 'cuda';
export const DEVICE_KINDS: readonly DeviceKind[] = ['cpu', 'webgpu', 'cuda'];

export interface RuntimeOptions {
  readonly device: DeviceKind;
  /** CPU provider intra-op threads; 0 lets onnxruntime choose (one per physical core). */
  readonly cpuThreads?: number;
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

/** One onnxruntime session over a graph built in memory, with input checks and failure diagnostics. */
export class GraphSession {
  constructor(
    readonly name: string,
    private readonly session: ort.InferenceSession,
  ) {}

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  /** Runs the graph. `fetches` may preallocate outputs (the CPU provider writes into them in place). */
  async run(feeds: Feeds, fetches?: Record<string, RtTensor | null>): Promise<Feeds> {
    const missing = this.session.inputNames.filter((n) => !(n in feeds));
    const unknown = Object.keys(feeds).filter((n) => !this.session.inputNames.includes(n));
    if (missing.length > 0 || unknown.length > 0) {
      throw new SessionRunError(this.name, `missing inputs [${missing.join(', ')}], unknown inputs [${unknown.join(', ')}]`, describeFeeds(feeds));
    }
    try {
      let out: Feeds;
      if (fetches) {
        // With fetches, onnxruntime returns only the outputs named there: ask for the rest too.
        const all: Record<string, RtTensor | null> = Object.fromEntries(this.session.outputNames.map((n) => [n, null]));
        out = await this.session.run(feeds, { ...all, ...fetches });
      } else {
        out = await this.session.run(feeds);
      }
      for (const t of Object.values(out)) if (t.location === 'gpu-buffer') liveGpuTensors++;
      return out;
    } catch (err) {
      throw new SessionRunError(this.name, (err as Error).message, describeFeeds(feeds));
    }
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

function describeFeeds(feeds: Feeds): string {
  return Object.entries(feeds)
    .map(([name, t]) => `  ${name}: ${t.type} [${t.dims.join(', ')}] on ${t.location}`)
    .join('\n');
}

function buildIdentity(type: ElemType): Uint8Array {
  const g = new GraphBuilder('identity');
  g.output(g.op('Identity', [g.input('x', type, null)]), 'y', type, null);
  return g.toModelBytes();
}

export class Runtime {
  private uploader: GraphSession | null = null;
  private downloader: GraphSession | null = null;

  private constructor(readonly options: Required<RuntimeOptions>) {}

  get device(): DeviceKind {
    return this.options.device;
  }

  /** Whether tensors a session returns may live in device memory (and need dispose()). */
  get onGpu(): boolean {
    return this.options.device !== 'cpu';
  }

  static async create(options: RuntimeOptions): Promise<Runtime> {
    const backends = ort.listSupportedBackends();
    const backend = backends.find((b) => b.name === options.device);
    if (!backend) {
      throw new DeviceUnavailableError(options.device, `onnxruntime-node has no '${options.device}' provider here (available: ${backends.map((b) => b.name).join(', ')})`);
    }
    if (!backend.bundled && options.device === 'cuda') {
      // The CUDA provider ships separately; creating a session fails later with an opaque message.
      const probe = new Runtime({ device: 'cuda', cpuThreads: options.cpuThreads ?? 0 });
      try {
        await probe.createSession('cuda-probe', buildIdentity('float32'), []);
      } catch (err) {
        throw new DeviceUnavailableError(
          'cuda',
          `the CUDA execution provider is not installed (${(err as Error).message.split('\n')[0]}). ` +
            'Install it with `npm rebuild onnxruntime-node --onnxruntime-node-install=cuda12` on a machine with CUDA 12 and network access, or use --device cpu|webgpu.',
        );
      }
    }
    return new Runtime({ device: options.device, cpuThreads: options.cpuThreads ?? 0 });
  }

  /**
   * Creates a session over graph bytes. `deviceOutputs` name the outputs that should stay in device
   * memory on GPU providers (hidden states, KV cache); all others come back to the CPU.
   */
  async createSession(name: string, modelBytes: Uint8Array, deviceOutputs: readonly string[]): Promise<GraphSession> {
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: [this.options.device],
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
    };
    if (this.options.device === 'cpu' && this.options.cpuThreads > 0) {
      options.intraOpNumThreads = this.options.cpuThreads;
      options.interOpNumThreads = 1;
    }
    // Spinning worker threads keep cores busy between the many short runs of a decode step; measured
    // on 2 cores with tiny-moe: 2 threads gave 66 decode tokens/s spinning, 140 without.
    options.extra = { session: { intra_op: { allow_spinning: '0' } } };
    if (this.onGpu && deviceOutputs.length > 0) {
      options.preferredOutputLocation = Object.fromEntries(deviceOutputs.map((o) => [o, 'gpu-buffer' as const]));
    }
    try {
      return new GraphSession(name, await ort.InferenceSession.create(modelBytes, options));
    } catch (err) {
      throw new SessionRunError(name, `session creation failed on ${this.options.device}: ${(err as Error).message}`, '');
    }
  }

  float32(data: Float32Array, dims: readonly number[]): RtTensor {
    return new ort.Tensor('float32', data, dims);
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
    const bytes = host.size * bytesPerElement(host.type);
    if (!this.onGpu) return new DeviceTensor(host, bytes);
    this.uploader ??= await this.createSession('upload', buildIdentity('float32'), ['y']);
    const out = await this.uploader.run({ x: host });
    return new DeviceTensor(out.y as RtTensor, bytes);
  }

  /** Reads a float32 tensor back to host memory. Never getData() on a gpu-buffer tensor: it aborts. */
  async toHost(t: RtTensor): Promise<Float32Array> {
    if (t.location !== 'gpu-buffer') return t.data as Float32Array;
    this.downloader ??= await this.createSession('download', buildIdentity('float32'), []);
    const out = await this.downloader.run({ x: t });
    return (out.y as RtTensor).data as Float32Array;
  }
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
