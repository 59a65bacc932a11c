// Belady's hit ratio for a server's routing trace at its budget, with the replay tool's own code: the
// best any demand-loading policy could have done on the accesses that server actually saw.
import { belady } from '../src/experts/replay/belady.js';
import { readTrace } from '../src/experts/replay/read-trace.js';
import { allExpertBytes } from '../src/experts/replay/trace-accesses.js';

export async function beladyHitRatio(tracePath: string, budgetFraction: number): Promise<number | null> {
  const trace = await readTrace(tracePath);
  if (trace.lines.length === 0) return null;
  const budgetBytes = Math.floor(allExpertBytes(trace.header) * budgetFraction);
  if (budgetBytes < trace.header.expert_bytes) return null;
  return belady(trace, budgetBytes).hitRatio;
}
