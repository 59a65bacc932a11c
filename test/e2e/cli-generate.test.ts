// The `moe-serve generate` command as a user runs it: a real process, real model files.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { F32_FLAGS } from '../helpers/devices.js';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { CLI_PATH, FIXTURES_DIR, readJson } from '../helpers/paths.js';
import { cli, type CliResult } from '../helpers/cli.js';


const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
const first = reference.prompts[0]!;

const scratch = await mkdtemp(join(tmpdir(), 'moe-serve-cli-generate-'));
after(() => rm(scratch, { recursive: true, force: true }));

/** `cli`, with `input` written to the command's stdin and stdin then closed. */
function cliWithStdin(input: string, ...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [CLI_PATH, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

async function promptFile(name: string, content: string | Uint8Array): Promise<string> {
  const path = join(scratch, name);
  await writeFile(path, content);
  return path;
}

interface JsonOutput {
  prompt_ids: number[];
  completion_ids: number[];
  text: string;
}

/** Greedy, short and in f32, so that two ways of giving one prompt must agree token for token. */
const GREEDY = ['--max-tokens', '8', '--temperature', '0', '--json', ...F32_FLAGS];

function output(r: CliResult): JsonOutput {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as JsonOutput;
}

// A prompt with a real line break, which `--prompt "...\n..."` in a shell does not give.
const MULTILINE = 'Question: what is a mixture of experts?\nAnswer:';

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

  describe('--prompt-file and stdin', () => {
    test('a prompt file with a real line break gives what --prompt with a real line break gives', async () => {
      const file = await promptFile('multiline.txt', MULTILINE);
      const [fromFlag, fromFile, escaped] = await Promise.all([
        cli('generate', '--prompt', MULTILINE, ...GREEDY).then(output),
        cli('generate', '--prompt-file', file, ...GREEDY).then(output),
        // What `--prompt "...\n..."` sends from a shell: a backslash and an n, another prompt altogether.
        cli('generate', '--prompt', MULTILINE.replace('\n', '\\n'), ...GREEDY).then(output),
      ]);
      assert.deepEqual(fromFile, fromFlag);
      assert.notDeepEqual(escaped.prompt_ids, fromFlag.prompt_ids);
    });

    test('drops the final line break of a file (as echo and heredocs write it), and only one', async () => {
      const once = await promptFile('newline-once.txt', `${MULTILINE}\n`);
      const twice = await promptFile('newline-twice.txt', `${MULTILINE}\n\n`);
      const crlf = await promptFile('newline-crlf.txt', `${MULTILINE}\r\n`);
      const [fromFlag, fromOnce, fromTwice, fromCrlf, withNewline] = await Promise.all([
        cli('generate', '--prompt', MULTILINE, ...GREEDY).then(output),
        cli('generate', '--prompt-file', once, ...GREEDY).then(output),
        cli('generate', '--prompt-file', twice, ...GREEDY).then(output),
        cli('generate', '--prompt-file', crlf, ...GREEDY).then(output),
        cli('generate', '--prompt', `${MULTILINE}\n`, ...GREEDY).then(output),
      ]);
      assert.deepEqual(fromOnce, fromFlag);
      assert.deepEqual(fromCrlf, fromFlag);
      assert.deepEqual(fromTwice, withNewline);
      assert.notDeepEqual(withNewline.prompt_ids, fromFlag.prompt_ids);
    });

    test('--prompt - and --prompt-file - read the prompt from stdin', async () => {
      const [fromFlag, dash, fileDash] = await Promise.all([
        cli('generate', '--prompt', MULTILINE, ...GREEDY).then(output),
        cliWithStdin(`${MULTILINE}\n`, 'generate', '--prompt', '-', ...GREEDY).then(output),
        cliWithStdin(`${MULTILINE}\n`, 'generate', '--prompt-file', '-', ...GREEDY).then(output),
      ]);
      assert.deepEqual(dash, fromFlag);
      assert.deepEqual(fileDash, fromFlag);
    });

    test('the reference prompt from a file gives the transformers greedy continuation', async () => {
      const file = await promptFile('reference.txt', `${first.prompt}\n`);
      const out = output(await cli('generate', '--prompt-file', file, '--max-tokens', '32', '--temperature', '0', '--json', ...F32_FLAGS));
      assert.deepEqual(out.prompt_ids, first.input_ids);
      assert.deepEqual(out.completion_ids, first.greedy_ids);
    });

    const usageErrors: { what: string; args: () => Promise<string[]>; stdin?: string; says: RegExp }[] = [
      { what: 'a missing prompt file', args: async () => ['--prompt-file', join(scratch, 'no-such-prompt.txt')], says: /--prompt-file: no such file ".*no-such-prompt\.txt"/ },
      { what: 'a directory as the prompt file', args: async () => ['--prompt-file', scratch], says: /--prompt-file: cannot read ".*" \(EISDIR\)/ },
      { what: 'both --prompt and --prompt-file', args: async () => ['--prompt', 'x', '--prompt-file', await promptFile('both.txt', 'y')], says: /give --prompt or --prompt-file, not both/ },
      { what: 'neither --prompt nor --prompt-file', args: async () => [], says: /--prompt or --prompt-file is required/ },
      { what: 'an empty --prompt', args: async () => ['--prompt', ''], says: /--prompt: the prompt is empty/ },
      { what: 'a prompt file holding only a line break', args: async () => ['--prompt-file', await promptFile('empty.txt', '\n')], says: /--prompt-file: the prompt from ".*empty\.txt" is empty/ },
      { what: 'empty stdin', args: async () => ['--prompt', '-'], stdin: '', says: /--prompt -: the prompt from stdin is empty/ },
      { what: 'a prompt file that is not UTF-8', args: async () => ['--prompt-file', await promptFile('latin1.txt', Uint8Array.from([0x63, 0x61, 0x66, 0xe9]))], says: /--prompt-file: ".*latin1\.txt" is not UTF-8 text/ },
    ];
    for (const c of usageErrors) {
      test(`${c.what} exits 2 with usage, saying so`, async () => {
        const args = ['generate', ...(await c.args())];
        const r = c.stdin === undefined ? await cli(...args) : await cliWithStdin(c.stdin, ...args);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, c.says);
        assert.match(r.stderr, /Usage: moe-serve generate/);
        assert.equal(r.stdout, '');
      });
    }
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
