// The miss-placement cost model (engine/miss-placement.ts): fixed modes never consult it; 'auto' sends a
// miss where its predicted time is lower, and follows what the process measures.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MissCostModel } from '../../src/engine/miss-placement.js';

// A Mixtral expert: hidden 4096, intermediate 14336; bf16 on the host, f32 on the device.
const MIXTRAL = { computeBytes: 3 * 4096 * 14336 * 4, hostBytes: 3 * 4096 * 14336 * 2, flopsPerRow: 6 * 4096 * 14336 };

test('upload and cpu modes place every miss where they say', () => {
  assert.equal(new MissCostModel('upload').choose(1, MIXTRAL), 'upload');
  assert.equal(new MissCostModel('cpu').choose(4096, MIXTRAL), 'cpu');
});

test('auto with the documented priors computes a decode miss on the CPU and a long prompt chunk on the device', () => {
  const m = new MissCostModel('auto');
  // 704 MB at 1 GB/s against 352 MB at 15 GB/s
  assert.equal(m.choose(1, MIXTRAL), 'cpu');
  assert.ok(Math.abs(m.uploadMs(MIXTRAL) - 704.6) < 1, `upload ${m.uploadMs(MIXTRAL)} ms`);
  // 2048 rows x 352 MFLOP at 50 GFLOP/s = 14 s on the CPU
  assert.equal(m.choose(2048, MIXTRAL), 'upload');
});

test('auto follows measurements: a fast link makes uploads win, a slow CPU too', () => {
  const fastLink = new MissCostModel('auto');
  for (let i = 0; i < 30; i++) fastLink.recordUpload(MIXTRAL.computeBytes, 20); // ~35 GB/s
  assert.ok(fastLink.estimates.uploadGbps > 30, `${fastLink.estimates.uploadGbps}`);
  assert.equal(fastLink.choose(1, MIXTRAL), 'upload');

  const slowCpu = new MissCostModel('auto');
  for (let i = 0; i < 30; i++) slowCpu.recordCpu(1, MIXTRAL.hostBytes, MIXTRAL.flopsPerRow, 2000); // 0.18 GB/s
  assert.ok(slowCpu.estimates.cpuGbps < 0.5, `${slowCpu.estimates.cpuGbps}`);
  assert.equal(slowCpu.choose(1, MIXTRAL), 'upload');
  // many-row runs measure the FLOP rate and leave the byte rate alone
  const before = slowCpu.estimates.cpuGbps;
  slowCpu.recordCpu(64, MIXTRAL.hostBytes, 64 * MIXTRAL.flopsPerRow, 100);
  assert.equal(slowCpu.estimates.cpuGbps, before);
  assert.ok(slowCpu.estimates.cpuGflops > 50);
});

test('a zero-length timing is ignored rather than read as an infinite rate', () => {
  const m = new MissCostModel('auto');
  m.recordUpload(MIXTRAL.computeBytes, 0);
  m.recordCpu(1, MIXTRAL.hostBytes, MIXTRAL.flopsPerRow, 0);
  assert.deepEqual(m.estimates, { uploadGbps: 1, cpuGbps: 15, cpuGflops: 50 });
});

test('a miss kept in the CPU form costs its FLOPs alone there: decode rows stay on the CPU however slow its reads measured', () => {
  const m = new MissCostModel('auto');
  // Widening at every use measured as a slow byte rate: an expert that is not kept goes to the upload...
  for (let i = 0; i < 30; i++) m.recordCpu(1, MIXTRAL.hostBytes, MIXTRAL.flopsPerRow, 2000);
  assert.equal(m.choose(1, MIXTRAL), 'upload');
  // ...and a kept one stays on the CPU for a decode row, but not for a long prompt chunk.
  assert.equal(m.chooseKept(1, MIXTRAL), 'cpu');
  assert.equal(m.chooseKept(2048, MIXTRAL), 'upload');
  assert.equal(new MissCostModel('upload').chooseKept(1, MIXTRAL), 'upload');
});
