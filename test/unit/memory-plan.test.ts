import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EXPERT_SHARE, planExpertMemory, type ExpertMemoryInputs } from '../../src/engine/memory-plan.js';

const GIB = 2 ** 30;
const MIB = 2 ** 20;

/** A qwen3-30b-a3b-like cut: 1,792 experts of 2.9 MB int4 (5.2 GB) with 9.4 MB bf16 on disk each. */
const big: ExpertMemoryInputs = {
  availableBytes: 6 * GIB,
  totalComputeBytes: 1792 * 2.9 * MIB,
  totalHostBytes: 1792 * 2.9 * MIB,
  expertComputeBytes: 2.9 * MIB,
  topK: 8,
  deviceInHostMemory: true,
  residentOverhead: 1.7,
};

describe('expert memory plan', () => {
  it('keeps every expert when they all fit, as before', () => {
    const p = planExpertMemory({ ...big, availableBytes: 64 * GIB });
    assert.equal(p.deviceBudgetBytes, big.totalComputeBytes);
    assert.equal(p.hostBudgetBytes, null);
    assert.deepEqual(p.notes, []);
  });

  it('on the CPU gives the device tier the whole share (a smaller host tier beneath it never hits), counting session overhead', () => {
    const p = planExpertMemory(big);
    assert.ok(p.deviceBudgetBytes < big.totalComputeBytes);
    assert.equal(p.deviceBudgetBytes, Math.floor((big.availableBytes * EXPERT_SHARE) / big.residentOverhead));
    assert.equal(p.hostBudgetBytes, 0);
    assert.ok(p.expertHostMemoryBytes <= big.availableBytes * EXPERT_SHARE + 1);
    assert.equal(p.notes.length, 2, 'both planned budgets are reported');
  });

  it('on a GPU computing misses on the CPU, keeps CPU forms in what the share leaves after the host tier, and counts them', () => {
    const gpu = { ...big, deviceInHostMemory: false, deviceBudgetBytes: 1 * GIB, cpuExpertCache: { overhead: 1.7 } };
    const roomy = planExpertMemory({ ...gpu, availableBytes: 16 * GIB });
    assert.equal(roomy.hostBudgetBytes, null, 'every host expert fits');
    assert.equal(roomy.cpuExpertCacheBytes, 8 * GIB - big.totalHostBytes);
    assert.equal(roomy.expertHostMemoryBytes, 8 * GIB, 'the host tier and the kept CPU forms fill the share, no more');
    // With room for all of them, all of them; with none left after the host tier, none (and a note says so).
    assert.equal(planExpertMemory({ ...gpu, availableBytes: 64 * GIB }).cpuExpertCacheBytes, Math.ceil(big.totalComputeBytes * 1.7));
    const tight = planExpertMemory(gpu);
    assert.equal(tight.cpuExpertCacheBytes, 0);
    assert.ok(tight.notes.some((n) => n.startsWith('CPU expert cache 0 MiB')), tight.notes.join('; '));
    // Given, it is what was given; with every expert on the device, or no CPU misses, there is none.
    assert.equal(planExpertMemory({ ...gpu, cpuExpertCache: { overhead: 1, budgetBytes: 123 * MIB } }).cpuExpertCacheBytes, 123 * MIB);
    assert.equal(planExpertMemory({ ...gpu, deviceBudgetBytes: big.totalComputeBytes, availableBytes: 64 * GIB }).cpuExpertCacheBytes, 0);
    assert.equal(planExpertMemory({ ...gpu, cpuExpertCache: undefined, availableBytes: 16 * GIB }).cpuExpertCacheBytes, 0);
  });

  it('on a GPU splits the share between the tiers when neither fits', () => {
    const p = planExpertMemory({ ...big, deviceInHostMemory: false, deviceBudgetBytes: 1 * GIB });
    assert.ok(p.hostBudgetBytes !== null && p.hostBudgetBytes > 0 && p.hostBudgetBytes < big.totalHostBytes);
  });

  it('never plans a device tier below one token of experts', () => {
    const p = planExpertMemory({ ...big, availableBytes: 10 * MIB });
    assert.equal(p.deviceBudgetBytes, big.topK * big.expertComputeBytes);
  });

  it('takes the budgets the user gave and plans only the other', () => {
    const p = planExpertMemory({ ...big, deviceBudgetBytes: 1 * GIB });
    assert.equal(p.deviceBudgetBytes, 1 * GIB);
    assert.equal(p.hostBudgetBytes, 0, 'on the CPU the planned host tier is off');
    const q = planExpertMemory({ ...big, hostBudgetBytes: 512 * MIB });
    assert.equal(q.hostBudgetBytes, 512 * MIB);
    assert.equal(q.deviceBudgetBytes, Math.floor((big.availableBytes * EXPERT_SHARE - 512 * MIB) / 1.7));
  });

  it('turns the host tier off when the device tier holds every expert but both do not fit', () => {
    const p = planExpertMemory({ ...big, availableBytes: 2.9 * big.totalComputeBytes * 1.7 });
    assert.equal(p.deviceBudgetBytes, big.totalComputeBytes);
    assert.equal(p.hostBudgetBytes, 0);
  });

  it('on a GPU, where the device tier is not host memory, gives the host tier the whole share', () => {
    const all = planExpertMemory({ ...big, deviceInHostMemory: false });
    assert.equal(all.deviceBudgetBytes, big.totalComputeBytes, 'device memory is not planned from host memory');
    const p = planExpertMemory({ ...big, deviceInHostMemory: false, deviceBudgetBytes: 1 * GIB });
    assert.equal(p.hostBudgetBytes, Math.floor(big.availableBytes * EXPERT_SHARE));
  });
});
