// A routing profile for the 'static' policy: experts ordered from most to least used, read from a
// routing trace (--trace output) or from a training report with per-layer expert usage shares.
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import type { ExpertId, ExpertIds } from './expert-id.js';
import { traceLine } from './trace-format.js';

export class RoutingProfileError extends Error {
  readonly code = 'routing_profile';

  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`cannot use ${path} as a routing profile: ${reason}`);
    this.name = 'RoutingProfileError';
  }
}

const trainingReport = z.object({ expert_usage: z.array(z.object({ share: z.array(z.number().nonnegative()) })) });

export async function loadRoutingProfile(path: string, ids: ExpertIds): Promise<ExpertId[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new RoutingProfileError(path, (err as Error).message);
  }
  const usage = new Float64Array(ids.count);
  const report = trainingReport.safeParse(safeJson(text));
  if (report.success) {
    report.data.expert_usage.forEach((layer, l) =>
      layer.share.forEach((share, e) => {
        if (l < ids.numLayers && e < ids.numExperts) usage[ids.id({ layer: l, expert: e })] = share;
      }),
    );
  } else {
    countTrace(path, text, ids, usage);
  }
  return Array.from(usage.keys())
    .filter((id) => (usage[id] as number) > 0)
    .sort((a, b) => (usage[b] as number) - (usage[a] as number) || a - b);
}

function countTrace(path: string, text: string, ids: ExpertIds, usage: Float64Array): void {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  let counted = 0;
  for (const [i, raw] of lines.entries()) {
    const line = traceLine.safeParse(safeJson(raw));
    if (!line.success) {
      if (i === 0) continue; // the trace header
      throw new RoutingProfileError(path, `line ${i + 1} is neither a trace line nor a training report`);
    }
    for (const token of line.data.experts) {
      for (const e of token) {
        if (line.data.layer < ids.numLayers && e < ids.numExperts) usage[ids.id({ layer: line.data.layer, expert: e })]! += 1;
      }
    }
    counted++;
  }
  if (counted === 0) throw new RoutingProfileError(path, 'no routing trace lines and no expert_usage');
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
