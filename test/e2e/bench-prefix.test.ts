// `moe-serve bench prefix` end to end: a tiny chat replayed with and without the prefix cache.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cli } from '../helpers/cli.js';

type Row = Record<string, unknown> & { bench: string };

function jsonRows(stdout: string): Row[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Row);
}

function one(rows: readonly Row[], match: (r: Row) => boolean, what: string): Row {
  const found = rows.filter(match);
  assert.equal(found.length, 1, `one line for ${what}`);
  return found[0] as Row;
}

describe('moe-serve bench prefix', () => {
  it('reuses turn 1 for turn 2 with the cache only, and generates the same tokens either way', async () => {
    const r = await cli('bench', 'prefix', '--sessions', '1', '--turns', '2', '--system-tokens', '40', '--user-tokens', '12', '--reply-tokens', '4');
    assert.equal(r.code, 0, r.stderr);
    const rows = jsonRows(r.stdout);
    assert.ok(rows.every((row) => row.bench === 'prefix'));
    const turn = (t: number, engine: string) => one(rows, (row) => row.turn === t && row.engine === engine, `turn ${t} ${engine}`);
    for (const engine of ['cache', 'no-cache']) {
      assert.equal(turn(1, engine).cached_tokens, 0);
      assert.equal(turn(1, engine).history_share, 0);
      for (const t of [1, 2]) {
        const row = turn(t, engine);
        assert.equal(row.sessions, 1);
        assert.equal(row.prefill_tokens, row.prefill_tokens_stats, JSON.stringify(row));
        assert.ok((row.ttft_ms_median as number) > 0, JSON.stringify(row));
      }
    }
    // Turn 2's prompt holds turn 1's; its whole blocks come from the cache, and only there.
    const cached = turn(2, 'cache');
    const uncached = turn(2, 'no-cache');
    assert.ok((cached.cached_tokens as number) > 0 && (cached.cached_tokens as number) % 16 === 0, JSON.stringify(cached));
    assert.equal(uncached.cached_tokens, 0);
    assert.equal(cached.prompt_tokens, uncached.prompt_tokens);
    assert.equal(cached.prefill_tokens, (cached.prompt_tokens as number) - (cached.cached_tokens as number));
    assert.equal(uncached.prefill_tokens, uncached.prompt_tokens);
    assert.ok((cached.history_share as number) > 0.5, JSON.stringify(cached));
    const summary = one(rows, (row) => row.phase === 'summary', 'the summary');
    assert.equal(summary.outputs_identical, true);
    assert.equal(summary.later_turns, 1);
    assert.ok((summary.ttft_ratio_median as number) > 0);
    assert.ok(((summary.prefix_cache as Record<string, number>).hits ?? 0) >= 1);
    assert.match(r.stdout, /\| turn \| prompt tokens \| history share \| TTFT ms with cache \| TTFT ms without \| ratio \|/);
    assert.match(r.stdout, /\n\| 2 \| [\d.]+ \| [\d.]+% \| [\d.]+ \| [\d.]+ \| [\d.]+x \| [\d.]+ \/ [\d.]+ \| [1-9][\d.]* \|/);
    assert.match(r.stdout, /turns 2\+: median TTFT [\d.]+ ms with the cache/);
    assert.match(r.stdout, /outputs identical with and without the cache: yes/);
  });

  it('rejects bad settings with a usage message naming the flag, not a stack trace', async () => {
    for (const [args, message] of [
      [['--turns', '0'], /--turns: .*\(got "0"\)/],
      [['--reply-tokens', 'many'], /--reply-tokens: .*\(got "many"\)/],
      [['--prefix-cache-mb', '0'], /--prefix-cache-mb: .*\(got "0"\)/],
      [['--system-tokens', '900', '--turns', '3'], /--system-tokens 900, --turns 3, .*context of 1024/],
    ] as const) {
      const r = await cli('bench', 'prefix', ...args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });
});
