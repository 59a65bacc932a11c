// Where a generated token's time goes: milliseconds per token in each kind of session run (attention,
// expert, lm_head, moe_block, ...), waiting for expert loads (cache misses: reads, widening, session
// creation), in sampling, and the rest (the JavaScript between runs, garbage collection included), with
// session runs per token. Shared by `generate --stats` and `bench decode`.
import type { RunTally } from '../runtime/onnx-runtime.js';
import { round } from './bench-format.js';

export interface TokenBreakdown {
  readonly runs_per_token: number;
  readonly ms: Readonly<Record<string, number>>;
}

/** Run tallies taken before and after, over `generated` tokens whose forward steps took `stepMs` in all. */
export function tokenBreakdown(
  before: Readonly<Record<string, RunTally>>,
  after: Readonly<Record<string, RunTally>>,
  stepMs: number,
  samplingMs: number,
  loadWaitMs: number,
  generated: number,
): TokenBreakdown {
  const ms: Record<string, number> = {};
  let inRuns = 0;
  let runs = 0;
  for (const [kind, a] of Object.entries(after)) {
    const b = before[kind] ?? { runs: 0, ms: 0 };
    if (a.runs === b.runs) continue;
    ms[kind] = round((a.ms - b.ms) / generated, 3);
    inRuns += a.ms - b.ms;
    runs += a.runs - b.runs;
  }
  ms.expert_loads = round(loadWaitMs / generated, 3);
  ms.sampling = round(samplingMs / generated, 3);
  ms.js_between_runs = round(Math.max(0, stepMs - inRuns - loadWaitMs) / generated, 3);
  return { runs_per_token: round(runs / generated, 1), ms };
}
