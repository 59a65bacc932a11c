// The `moe-serve generate` command as a user runs it: a real process, real model files.
import assert from 'node:assert/strict';
import { F32_FLAGS } from '../helpers/devices.js';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, readJson } from '../helpers/paths.js';
import { cli } from '../helpers/cli.js';


const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
const first = reference.prompts[0]!;

describe('moe-serve generate', () => {
  test('--json prints the transformers greedy continuation of the embedded model', async () => {
    const r = await cli('generate', '--prompt', first.prompt, '--max-tokens', '32', '--temperature', '0', '--json', ...F32_FLAGS);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { prompt_ids: number[]; completion_ids: number[]; text: string; finish_reason: string };
    assert.deepEqual(out.prompt_ids, first.input_ids);
    assert.deepEqual(out.completion_ids, first.greedy_ids);
    assert.equal(out.text, first.greedy_text);
    assert.equal(out.finish_reason, 'length');
  });

  test('streams the text to stdout and ends with prompt and decode tokens/s', async () => {
    const r = await cli('generate', '--prompt', first.prompt, '--max-tokens', '32', ...F32_FLAGS);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.startsWith(first.greedy_text), r.stdout);
    const last = r.stdout.trimEnd().split('\n').at(-1) ?? '';
    assert.match(last, /^\[prompt: 3 tokens, [\d.]+ tokens\/s \| decode: 31 tokens, [\d.]+ tokens\/s \| finish: length\]$/);
  });

  test('--stop ends before the stop string with finish_reason stop', async () => {
    const r = await cli('generate', '--prompt', first.prompt, '--max-tokens', '32', '--stop', 'thread', '--json', ...F32_FLAGS);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { text: string; finish_reason: string };
    assert.equal(out.text, first.greedy_text.slice(0, first.greedy_text.indexOf('thread')));
    assert.equal(out.finish_reason, 'stop');
  });

  test('the same --seed gives the same sampled tokens, another seed other tokens', async () => {
    const sample = async (seed: string) => {
      const r = await cli('generate', '--prompt', first.prompt, '--max-tokens', '24', '--temperature', '1', '--top-p', '0.95', '--seed', seed, '--json');
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { completion_ids: number[] }).completion_ids;
    };
    const [a, b, c] = await Promise.all([sample('7'), sample('7'), sample('8')]);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
  });

  test('a bad flag value exits 2 naming the flag', async () => {
    const r = await cli('generate', '--prompt', 'x', '--max-tokens', '-1');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--max-tokens/);
  });

  test('an unknown flag exits 2 with usage', async () => {
    const r = await cli('generate', '--prompt', 'x', '--nonsense');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /nonsense/);
    assert.match(r.stderr, /Usage: moe-serve generate/);
  });

  test('--device cuda without the CUDA provider says how to install it', async () => {
    const r = await cli('generate', '--prompt', 'x', '--device', 'cuda');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /CUDA execution provider is not installed/);
    assert.match(r.stderr, /--onnxruntime-node-install=cuda12/);
  });

  test('a directory without a model names the missing config.json', async () => {
    const r = await cli('generate', '--prompt', 'x', '--model', join(FIXTURES_DIR, 'no-such-model'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /config\.json/);
  });
});
