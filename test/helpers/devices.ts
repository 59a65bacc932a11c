import type { DeviceKind } from '../../src/runtime/onnx-runtime.js';

/**
 * Devices the conformance tests run on: always cpu; webgpu when MOE_SERVE_TEST_WEBGPU=1 (CI sets it after
 * `source ../shared/gpu/lavapipe.sh`, which runs the WebGPU provider on Mesa's CPU Vulkan driver).
 */
export function testDevices(): DeviceKind[] {
  return process.env.MOE_SERVE_TEST_WEBGPU === '1' ? ['cpu', 'webgpu'] : ['cpu'];
}

/** Logit tolerance against transformers: fp32 on cpu; lavapipe may compute in f16. */
export function logitTolerance(device: DeviceKind, cpuTolerance: number): number {
  return device === 'cpu' ? cpuTolerance : Math.max(cpuTolerance, 1e-2);
}
