// The KV cache as a memory budget: how many cache rows (tokens, over all running sequences) the server may
// hold, from `--kv-cache-mb` or from the model and the memory left once it is loaded.
import { freemem } from 'node:os';
import { kvBytesPerRow, type KvShape } from './kv-cache.js';

/**
 * Default budget: every sequence slot at the full context, capped at half the memory still available
 * (the rest is the process's own growth: activations, buffers, expert copies), but never below one
 * full-context sequence, so that any request the model can take can run.
 */
export function defaultKvBudgetBytes(shape: KvShape, maxSeqs: number, availableBytes: number): number {
  const fullContext = shape.maxPositions * kvBytesPerRow(shape);
  return Math.max(fullContext, Math.min(maxSeqs * fullContext, Math.floor(availableBytes / 2)));
}

/** Memory this process can still take: free memory, or what its cgroup limit leaves, whichever is less. */
export function availableMemoryBytes(): number {
  const limit = process.constrainedMemory?.() ?? 0;
  const free = freemem();
  // constrainedMemory() is 0 without a limit, and a huge number for an unlimited cgroup.
  return limit > 0 && limit < Number.MAX_SAFE_INTEGER ? Math.min(free, Math.max(0, limit - process.memoryUsage.rss())) : free;
}

export function kvTokensFor(budgetBytes: number, shape: KvShape): number {
  return Math.max(1, Math.floor(budgetBytes / kvBytesPerRow(shape)));
}
