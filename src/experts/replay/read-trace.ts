// Reads a routing trace (see ../trace-format.ts) into memory, checking every line. Parsing takes any
// async stream of text lines so tests can feed strings; readTrace is the file-reading wrapper.
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { z } from 'zod';
import { traceHeader, traceLine, type TraceHeader, type TraceLine } from '../trace-format.js';

export interface Trace {
  /** Where the trace came from (a file path), for messages. */
  readonly source: string;
  readonly header: TraceHeader;
  readonly lines: readonly TraceLine[];
}

/** A trace file that is not what trace-format.ts describes; says which file, which line, and what is wrong. */
export class TraceFormatError extends Error {
  readonly code = 'trace_format';

  constructor(
    readonly source: string,
    readonly lineNumber: number,
    readonly problem: string,
  ) {
    super(`${source}:${lineNumber}: ${problem}`);
    this.name = 'TraceFormatError';
  }
}

export async function readTrace(path: string): Promise<Trace> {
  const input = createReadStream(path, { encoding: 'utf8' });
  const lines = createInterface({ input, crlfDelay: Infinity });
  try {
    return await parseTrace(lines, path);
  } finally {
    lines.close();
    input.destroy();
  }
}

export async function parseTrace(textLines: AsyncIterable<string> | Iterable<string>, source: string): Promise<Trace> {
  let header: TraceHeader | undefined;
  let sparse = new Set<number>();
  const lines: TraceLine[] = [];
  let lineNumber = 0;
  for await (const text of textLines) {
    lineNumber++;
    if (text.trim() === '') continue; // a trailing newline or a blank separator carries no record
    const fail = (problem: string) => new TraceFormatError(source, lineNumber, problem);
    const json = parseJson(text, fail);
    if (header === undefined) {
      header = check(traceHeader, json, 'header', fail);
      sparse = new Set(header.sparse_layers);
      continue;
    }
    const line = check(traceLine, json, 'routing line', fail);
    checkRanges(line, header, sparse, fail);
    lines.push(line);
  }
  if (header === undefined) throw new TraceFormatError(source, Math.max(lineNumber, 1), 'empty trace: expected a header line first');
  return { source, header, lines };
}

function parseJson(text: string, fail: (problem: string) => Error): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw fail(`not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
}

function check<T>(schema: z.ZodType<T>, json: unknown, what: string, fail: (problem: string) => Error): T {
  const r = schema.safeParse(json);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const at = issue && issue.path.length > 0 ? ` at ${issue.path.join('.')}` : '';
  throw fail(`bad ${what}${at}: ${issue?.message ?? 'invalid'}`);
}

/** What zod cannot see: layer and expert numbers must exist in the model the header describes. */
function checkRanges(line: TraceLine, header: TraceHeader, sparse: ReadonlySet<number>, fail: (problem: string) => Error): void {
  if (!sparse.has(line.layer)) throw fail(`layer ${line.layer} is not one of the header's sparse_layers [${header.sparse_layers.join(', ')}]`);
  const lists = [...line.experts.map((e, t) => ({ ids: e, where: `experts[${t}]` })), ...line.lookahead.map((e, d) => ({ ids: e, where: `lookahead[${d}]` }))];
  for (const { ids, where } of lists) {
    const bad = ids.find((e) => e >= header.num_experts);
    if (bad !== undefined) throw fail(`${where} has expert ${bad}, but the model has ${header.num_experts} experts per layer`);
  }
  // Votes are read position by position against the lookahead's experts, so their shapes must agree.
  const votes = line.lookahead_votes;
  if (votes === undefined) return;
  if (votes.length !== line.lookahead.length) throw fail(`lookahead_votes has ${votes.length} depths, but lookahead has ${line.lookahead.length}`);
  votes.forEach((v, d) => {
    const named = line.lookahead[d]?.length ?? 0;
    if (v.length !== named) throw fail(`lookahead_votes[${d}] has ${v.length} counts for lookahead[${d}]'s ${named} experts`);
  });
}
