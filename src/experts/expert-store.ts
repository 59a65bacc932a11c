// The one place that knows where an expert's weights are: in the safetensors files on disk, in host
// memory once read, and in compute form on the device. The forward pass asks for experts by key and
// never sees files or offsets.
import type { ModelSpec } from '../model/hf-config.js';
import type { SafetensorsArchive } from '../model/safetensors.js';
import { expertTensorNames } from '../model/tensor-names.js';
import type { DeviceTensor, RtTensor, Runtime } from '../runtime/onnx-runtime.js';

export interface ExpertKey {
  readonly layer: number;
  readonly expert: number;
}

/** An expert's SwiGLU weights in compute form: gate and up (I, H), down (H, I). */
export interface ExpertWeights {
  readonly gate: RtTensor;
  readonly up: RtTensor;
  readonly down: RtTensor;
}

interface ResidentExpert {
  readonly gate: DeviceTensor;
  readonly up: DeviceTensor;
  readonly down: DeviceTensor;
}

export interface ExpertStoreStats {
  readonly loads: number;
  readonly hits: number;
  readonly bytesReadFromDisk: number;
  readonly residentBytes: number;
}

export class ExpertStore implements Disposable {
  private readonly resident = new Map<string, Promise<ResidentExpert>>();
  private loads = 0;
  private hits = 0;
  private residentBytes = 0;
  private readonly bytesPerExpert: number;

  constructor(
    private readonly archive: SafetensorsArchive,
    private readonly spec: ModelSpec,
    private readonly runtime: Runtime,
  ) {
    this.bytesPerExpert = 3 * spec.hiddenSize * spec.expertIntermediateSize * 4;
  }

  /** Bytes one expert occupies in compute form (fp32). */
  get expertBytes(): number {
    return this.bytesPerExpert;
  }

  get stats(): ExpertStoreStats {
    return { loads: this.loads, hits: this.hits, bytesReadFromDisk: this.archive.bytesRead, residentBytes: this.residentBytes };
  }

  async get(key: ExpertKey): Promise<ExpertWeights> {
    const id = `${key.layer}:${key.expert}`;
    let pending = this.resident.get(id);
    if (pending) {
      this.hits++;
    } else {
      this.loads++;
      pending = this.load(key);
      this.resident.set(id, pending);
      pending.catch(() => this.resident.delete(id));
    }
    const w = await pending;
    return { gate: w.gate.tensor, up: w.up.tensor, down: w.down.tensor };
  }

  private async load(key: ExpertKey): Promise<ResidentExpert> {
    const { hiddenSize: H, expertIntermediateSize: I, numExperts } = this.spec;
    if (key.expert < 0 || key.expert >= numExperts || key.layer < 0 || key.layer >= this.spec.numLayers) {
      throw new RangeError(`no expert ${key.expert} in layer ${key.layer}`);
    }
    const names = expertTensorNames(this.spec.family, key.layer, key.expert);
    const [gate, up, down] = await Promise.all([
      this.archive.readFloat32(names.gate, [I, H]),
      this.archive.readFloat32(names.up, [I, H]),
      this.archive.readFloat32(names.down, [H, I]),
    ]);
    const expert = {
      gate: await this.runtime.toDevice(this.runtime.float32(gate, [I, H])),
      up: await this.runtime.toDevice(this.runtime.float32(up, [I, H])),
      down: await this.runtime.toDevice(this.runtime.float32(down, [H, I])),
    };
    this.residentBytes += this.bytesPerExpert;
    return expert;
  }

  [Symbol.dispose](): void {
    for (const pending of this.resident.values()) {
      void pending.then((e) => {
        e.gate.dispose();
        e.up.dispose();
        e.down.dispose();
      });
    }
    this.resident.clear();
    this.residentBytes = 0;
  }
}
