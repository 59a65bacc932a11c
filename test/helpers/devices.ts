import type { ComputeOptions } from '../../src/engine/compute-options.js';
import { DEVICE_KINDS, type DeviceKind } from '../../src/runtime/onnx-runtime.js';

/**
 * Devices the conformance tests run the engine on: MOE_SERVE_TEST_DEVICES (comma-separated), default cpu.
 * `npm run test:webgpu` sets it to webgpu; CI runs that after `source ../shared/gpu/lavapipe.sh`, which runs
 * the WebGPU provider on Mesa's CPU Vulkan driver.
 */
export function testDevices(): DeviceKind[] {
  const names = (process.env.MOE_SERVE_TEST_DEVICES ?? 'cpu').split(',').map((s) => s.trim());
  for (const n of names) {
    if (!(DEVICE_KINDS as readonly string[]).includes(n)) throw new Error(`MOE_SERVE_TEST_DEVICES: unknown device '${n}'`);
  }
  return names as DeviceKind[];
}

/** Logit tolerance against transformers: fp32 on cpu; GPU providers may compute in f16. */
export function logitTolerance(device: DeviceKind, cpuTolerance: number): number {
  return device === 'cpu' ? cpuTolerance : Math.max(cpuTolerance, 1e-2);
}

/**
 * Float32 compute for every weight class: what the tests that compare with transformers or the float64
 * reference run (the CPU provider's defaults quantize; test/conformance/quantized-forms.test.ts covers those).
 */
export const F32: ComputeOptions = { weightDtype: 'f32', expertDtype: 'f32' };

/** The same for the command line. */
export const F32_FLAGS: readonly string[] = ['--weight-dtype', 'f32', '--expert-dtype', 'f32'];
