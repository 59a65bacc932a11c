// The routing trace writer: a trace is a diagnostic, so a write error (a full disk) turns it off with one
// report instead of failing every request that the observer runs inside.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';
import type { RoutingEvent } from '../../src/engine/forward.js';
import { traceHeader, traceLine } from '../../src/experts/trace-format.js';
import { TraceWriter, type TraceWriteError } from '../../src/experts/trace-writer.js';

const HEADER = { model: 'test', num_layers: 2, num_experts: 4, top_k: 2, expert_bytes: 1024, sparse_layers: [0, 1] };
/** Writes to it fail with ENOSPC, as on a full disk. */
const FULL = '/dev/full';

/** A step of `tokens` tokens at `position` routed in `layer`, in forward pass `pass`. */
function routed(pass: number, layer: number, position: number, tokens = 2): RoutingEvent {
  const experts = Int32Array.from({ length: tokens * 2 }, (_, i) => (i + layer) % 4);
  const lookahead = layer === 0 ? [[1, 2]] : [];
  return { pass, layer, position, routing: { tokens, topK: 2, experts, weights: new Float32Array(tokens * 2).fill(0.5) }, lookahead, lookaheadVotes: lookahead.map(() => [tokens, tokens]) };
}

/** The prompt of drive()'s first request; its second is given none. */
const PROMPT = [11, 7, 11];

/** Runs two requests' observers through `steps` steps of both layers, both requests in each step's pass. */
function drive(writer: TraceWriter, steps: number): void {
  const observers = [writer.request(PROMPT), writer.request()];
  for (let s = 0; s < steps; s++) {
    for (const o of observers) for (const layer of [0, 1]) o.onRouting(routed(s, layer, s === 0 ? 0 : 3 + s, s === 0 ? 3 : 1));
  }
}

describe('TraceWriter', () => {
  test('writes a header and one line per request, step and layer', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'moe-serve-trace-'));
    try {
      const path = join(dir, 'trace.jsonl');
      const writer = await TraceWriter.open(path, HEADER);
      drive(writer, 3);
      assert.equal(await writer.close(), null);
      assert.equal(writer.failed, false);
      const [header, ...lines] = (await readFile(path, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as unknown);
      assert.deepEqual(traceHeader.parse(header), { trace: 'moe-serve routing trace', version: 1, ...HEADER });
      const parsed = lines.map((l) => traceLine.parse(l));
      assert.equal(parsed.length, 2 * 3 * 2);
      assert.deepEqual(parsed.slice(0, 2), [
        { request: 0, step: 0, pass: 0, layer: 0, experts: [[0, 1], [2, 3], [0, 1]], lookahead: [[1, 2]], lookahead_votes: [[3, 3]], prompt_tokens: PROMPT },
        { request: 0, step: 0, pass: 0, layer: 1, experts: [[1, 2], [3, 0], [1, 2]], lookahead: [], lookahead_votes: [] },
      ]);
      assert.deepEqual(
        parsed.flatMap((l) => (l.prompt_tokens ? [[l.request, l.step, l.layer]] : [])),
        [[0, 0, 0]],
        "the prompt is written once, on its request's first line; a request given none has none",
      );
      assert.deepEqual(parsed.filter((l) => l.request === 1).map((l) => l.step), [0, 0, 1, 1, 2, 2]);
      assert.deepEqual(parsed.filter((l) => l.request === 1).map((l) => l.pass), [0, 0, 1, 1, 2, 2], 'the pass of each event, as the forward pass numbered it');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('turns itself off on a write error (ENOSPC): observers never throw, one report, failed set', { skip: !existsSync(FULL) && `no ${FULL}` }, async () => {
    const reports: TraceWriteError[] = [];
    const writer = await TraceWriter.open(FULL, HEADER, { onError: (e) => reports.push(e) });
    drive(writer, 4);
    // The error comes back from the file system after the write that caused it.
    for (let waited = 0; !writer.failed && waited < 2000; waited += 10) await sleep(10);
    for (let i = 0; i < 3; i++) {
      assert.doesNotThrow(() => drive(writer, 4), 'an observer never throws, however many times it runs after the error');
      await sleep(5);
    }
    assert.equal(writer.failed, true);
    assert.equal(reports.length, 1, 'reported once');
    const error = reports[0] as TraceWriteError;
    assert.equal(writer.error, error);
    assert.equal((error.cause as NodeJS.ErrnoException).code, 'ENOSPC');
    assert.equal(error.code, 'trace_write_failed');
    assert.ok(error.message.startsWith(`routing trace ${FULL}: writing failed (ENOSPC`), error.message);
    assert.equal(await writer.close(), error, 'close() resolves with the error it already reported');
    assert.equal(await writer.close(), error, 'and again');
    assert.equal(reports.length, 1);
  });

  test('close() reports, not throws, a failure of the final flush', { skip: !existsSync(FULL) && `no ${FULL}` }, async () => {
    const reports: TraceWriteError[] = [];
    const writer = await TraceWriter.open(FULL, HEADER, { onError: (e) => reports.push(e) });
    drive(writer, 1);
    const error = await writer.close();
    assert.equal((error?.cause as NodeJS.ErrnoException | undefined)?.code, 'ENOSPC');
    assert.deepEqual(reports, [error]);
    assert.doesNotThrow(() => drive(writer, 1), 'observers made before or after close stay quiet');
    await writer[Symbol.asyncDispose]();
  });

  test('by default reports the error as one line on stderr naming the path', { skip: !existsSync(FULL) && `no ${FULL}` }, async () => {
    const lines: string[] = [];
    const realWrite = process.stderr.write;
    process.stderr.write = ((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    try {
      const writer = await TraceWriter.open(FULL, HEADER);
      drive(writer, 2);
      for (let waited = 0; !writer.failed && waited < 2000; waited += 10) await sleep(10);
      drive(writer, 2);
      await writer.close();
    } finally {
      process.stderr.write = realWrite;
    }
    assert.equal(lines.length, 1, lines.join(''));
    assert.match(lines[0] ?? '', /^moe-serve: routing trace \/dev\/full: writing failed \(ENOSPC[^\n]*\n$/);
  });
});
