// Belady's hit ratio for the routing-trace lines one run produced, at its budget, with the replay tool's
// own code: the best any demand-loading policy could have done on the accesses of that run. A server
// appends to its trace as requests run; a run's lines are the bytes added between its start and end.
import { setTimeout as sleep } from 'node:timers/promises';
import { readFile, stat } from 'node:fs/promises';
import { belady } from '../src/experts/replay/belady.js';
import { parseTrace } from '../src/experts/replay/read-trace.js';
import { allExpertBytes } from '../src/experts/replay/trace-accesses.js';

export interface TraceRange {
  readonly fromByte: number;
  readonly toByte: number;
}

/** The trace file's size once the server's buffered writes have landed (two equal reads 50 ms apart). */
export async function settledTraceBytes(path: string): Promise<number> {
  let last = -1;
  for (let i = 0; i < 40; i++) {
    const size = (await stat(path)).size;
    if (size === last) return size;
    last = size;
    await sleep(50);
  }
  return last;
}

/** Belady's hit ratio over the lines in `range` (default: the whole trace); null without accesses. */
export async function beladyHitRatio(tracePath: string, budgetFraction: number, range?: TraceRange): Promise<number | null> {
  const bytes = await readFile(tracePath);
  const headerEnd = bytes.indexOf(0x0a);
  if (headerEnd < 0) return null;
  const from = Math.max(headerEnd + 1, range?.fromByte ?? 0);
  const to = Math.min(bytes.length, range?.toByte ?? bytes.length);
  const lines = [bytes.subarray(0, headerEnd).toString('utf8'), ...bytes.subarray(from, Math.max(from, to)).toString('utf8').split('\n')];
  const trace = await parseTrace(lines, tracePath);
  if (trace.lines.length === 0) return null;
  const budgetBytes = Math.floor(allExpertBytes(trace.header) * budgetFraction);
  if (budgetBytes < trace.header.expert_bytes) return null;
  const r = belady(trace, budgetBytes);
  return r.accesses === 0 ? null : r.hitRatio;
}
