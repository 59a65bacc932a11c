// How much memory the expert tiers may take when the user does not say: a model whose experts do not fit
// must still start and stay inside the machine's memory (or its cgroup limit), not grow until killed.
//
// The memory a server uses is resident weights + KV caches + the device tier + the host tier (+ the OS
// page cache, which the kernel gives back on demand). Once the resident weights are loaded, the expert
// tiers get at most half of what is still available; the KV cache's default takes half of what is left
// after that (kv-budget.ts), and the rest is headroom for activations, buffers and reads in flight. On
// a GPU the host tier takes that half; on the CPU provider the device tier is host memory too and takes
// it alone (below), and a prepacked expert session holds more than its weights (`npm run bench -- kernels`: 1.56-1.84x the compute bytes at 2048x768), so it is counted
// at that cost.

export interface ExpertMemoryInputs {
  /** Memory this process can still take (kv-budget.ts availableMemoryBytes, after the resident weights). */
  readonly availableBytes: number;
  /** Every routed expert in compute form (what the device budget counts) and in host form. */
  readonly totalComputeBytes: number;
  readonly totalHostBytes: number;
  /** Bytes of one expert in compute form: a device budget holds at least top-k of them. */
  readonly expertComputeBytes: number;
  readonly topK: number;
  /** Whether the device tier lives in host memory (the CPU provider). */
  readonly deviceInHostMemory: boolean;
  /** Host memory per compute byte of a resident expert (1 for plain tensors). */
  readonly residentOverhead: number;
  /** What the user gave, bytes; undefined = plan it. */
  readonly deviceBudgetBytes?: number;
  readonly hostBudgetBytes?: number;
  /**
   * GPU providers that may compute misses on the CPU (hybrid-experts.ts): host memory per compute byte of
   * an expert made resident for the CPU provider, and the budget the user gave (bytes; undefined = plan it).
   */
  readonly cpuExpertCache?: { readonly overhead: number; readonly budgetBytes?: number };
}

export interface ExpertMemoryPlan {
  readonly deviceBudgetBytes: number;
  /** null keeps every expert read (they all fit). */
  readonly hostBudgetBytes: number | null;
  /** Host memory the expert tiers may reach when full: what the KV default must leave to them. */
  readonly expertHostMemoryBytes: number;
  /** Host memory per device-tier budget byte (0 where the device tier is not host memory). */
  readonly deviceHostCost: number;
  /** Host memory for experts kept in the CPU provider's form for misses computed there (0: none kept). */
  readonly cpuExpertCacheBytes: number;
  /** Which budgets were planned here rather than given, and why, for the start-up log. */
  readonly notes: readonly string[];
}

/** Host memory per compute byte of a prepacked expert session (the kernels bench's RSS per expert). */
export const PREPACKED_SESSION_OVERHEAD = 1.7;

/** Share of the available memory the expert tiers may take by default. */
export const EXPERT_SHARE = 0.5;
/** Of that share, what the device tier gets when both tiers compete for host memory. */
const DEVICE_SHARE = 0.75;

const mib = (b: number) => `${Math.round(b / 2 ** 20)} MiB`;

export function planExpertMemory(i: ExpertMemoryInputs): ExpertMemoryPlan {
  const share = Math.max(0, Math.floor(i.availableBytes * EXPERT_SHARE));
  const deviceCost = i.deviceInHostMemory ? i.residentOverhead : 0;
  const notes: string[] = [];
  const minDevice = i.topK * i.expertComputeBytes;

  // Where the device tier is host memory too, a host tier helps only if it holds more experts than the
  // device tier (both keep the most recent, and the device tier already has those): planned at 1/4 of
  // the share it held fewer, and served 0.0-0.3% of loads in `bench scale` on qwen3-30b-a3b-shaped
  // checkpoints (bf16 and int4). The page cache keeps recently read experts anyway, and gives them back
  // under pressure; so the device tier takes the whole share there.
  const deviceShare = i.deviceInHostMemory ? 1 : DEVICE_SHARE;
  let device = i.deviceBudgetBytes;
  if (device === undefined) {
    const hostGiven = i.hostBudgetBytes ?? 0;
    const room = i.hostBudgetBytes === undefined ? share * (i.totalComputeBytes * deviceCost + i.totalHostBytes <= share ? 1 : deviceShare) : share - hostGiven;
    if (deviceCost === 0 || i.totalComputeBytes * deviceCost <= room) {
      device = i.totalComputeBytes;
    } else {
      device = Math.max(minDevice, Math.floor(room / deviceCost));
      notes.push(`device tier ${mib(device)} of ${mib(i.totalComputeBytes)} (the experts do not fit in half the ${mib(i.availableBytes)} available; --expert-cache-mb sets it)`);
    }
  }
  const deviceHost = device * deviceCost;

  let host: number | null;
  if (i.hostBudgetBytes !== undefined) {
    host = i.hostBudgetBytes;
  } else if (deviceHost + i.totalHostBytes <= share) {
    host = null;
  } else if (device >= i.totalComputeBytes) {
    // Every expert stays resident once loaded, so a host copy would never be read again.
    host = 0;
    notes.push('host tier off (every expert fits in the device tier; --host-cache-mb sets it)');
  } else if (i.deviceInHostMemory) {
    host = 0;
    notes.push('host tier off (on this provider the device tier is host memory and takes the share; the OS page cache keeps recent reads; --host-cache-mb sets it)');
  } else {
    host = Math.max(0, Math.floor(share - deviceHost));
    notes.push(`host tier ${mib(host)} of ${mib(i.totalHostBytes)} (--host-cache-mb sets it; the OS page cache holds more)`);
  }
  // Misses computed on the CPU are made resident there at each use (a widening, or a prepacked session's
  // creation: ~10x the run at 2048 x 768, README "Compute forms"), unless kept: they get what the share
  // leaves once the host tier holds every expert, as the host tier comes first (it saves disk reads).
  let cpu = 0;
  if (i.cpuExpertCache && device < i.totalComputeBytes) {
    const all = Math.ceil(i.totalComputeBytes * i.cpuExpertCache.overhead);
    if (i.cpuExpertCache.budgetBytes !== undefined) {
      cpu = i.cpuExpertCache.budgetBytes;
    } else {
      cpu = host === null ? Math.min(all, Math.max(0, share - deviceHost - i.totalHostBytes)) : 0;
      notes.push(`CPU expert cache ${mib(cpu)} of ${mib(all)} for misses computed on the CPU (${host === null ? 'what the expert share leaves after the host tier' : 'the host tier takes the share'}; --cpu-expert-cache-mb sets it)`);
    }
  }
  return { deviceBudgetBytes: device, hostBudgetBytes: host, expertHostMemoryBytes: deviceHost + (host ?? i.totalHostBytes) + cpu, deviceHostCost: deviceCost, cpuExpertCacheBytes: cpu, notes };
}
