import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { TextTokenizer, TokenizerLoadError } from '../../src/tokenizer/tokenizer.js';
import { asTokens } from '../../src/tokenizer/token.js';
import { repoRoot } from '../support/repo-root.js';

interface ReferencePrompt {
  prompt: string;
  input_ids: number[];
  greedy_ids: number[];
  greedy_text: string;
}

const root = repoRoot();
const references: { name: string; modelDir: string; referencePath: string }[] = [
  ...['mixtral', 'qwen2_moe', 'olmoe'].map((family) => ({
    name: family,
    modelDir: path.join(root, 'test/fixtures', family),
    referencePath: path.join(root, 'test/fixtures', family, 'reference.json'),
  })),
  {
    name: 'tiny-moe',
    modelDir: path.join(root, 'models/tiny-moe'),
    referencePath: path.join(root, 'test/fixtures/tiny-moe-reference.json'),
  },
];

async function readPrompts(referencePath: string): Promise<ReferencePrompt[]> {
  const reference = JSON.parse(await readFile(referencePath, 'utf8')) as { prompts: ReferencePrompt[] };
  return reference.prompts;
}

for (const { name, modelDir, referencePath } of references) {
  describe(`${name} tokenizer against transformers`, async () => {
    const tokenizer = await TextTokenizer.fromModelDir(modelDir);
    const prompts = await readPrompts(referencePath);

    test('encodes every reference prompt to the reference input ids', () => {
      for (const p of prompts) assert.deepEqual(tokenizer.encode(p.prompt), p.input_ids, p.prompt);
    });

    test('decodes every reference greedy continuation to the reference text', () => {
      for (const p of prompts) assert.equal(tokenizer.decode(asTokens(p.greedy_ids)), p.greedy_text, p.prompt);
    });
  });
}

describe('TextTokenizer', async () => {
  const tiny = await TextTokenizer.fromModelDir(path.join(root, 'models/tiny-moe'));
  const fixture = await TextTokenizer.fromModelDir(path.join(root, 'test/fixtures/mixtral'));
  const tinyJson = JSON.parse(await readFile(path.join(root, 'models/tiny-moe/tokenizer.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  const scratch = await mkdtemp(path.join(tmpdir(), 'moe-serve-tokenizer-'));
  after(() => rm(scratch, { recursive: true, force: true }));

  test('counts every id, added tokens included, as vocabSize', () => {
    assert.equal(tiny.vocabSize, 8192);
    assert.equal(fixture.vocabSize, 512);
  });

  test('maps a token string to its id and an unknown one to undefined', () => {
    assert.equal(tiny.tokenToId('<|endoftext|>'), 0);
    assert.equal(tiny.tokenToId('Ġquick'), tiny.encode(' quick')[0]);
    assert.equal(tiny.tokenToId('no such token'), undefined);
  });

  test('reads the chat template from tokenizer_config.json', () => {
    assert.match(tiny.chatTemplate ?? '', /add_generation_prompt/);
    assert.equal(fixture.chatTemplate, undefined);
  });

  test('adds no special token when the post-processor adds none, even if the text contains one', () => {
    assert.deepEqual(tiny.encode('hi'), [2588]);
    assert.deepEqual(tiny.encode('<|endoftext|>hi'), [0, 2588]);
  });

  test('adds the special tokens the post-processor template asks for', () => {
    const withBos = TextTokenizer.fromJson(
      {
        ...tinyJson,
        post_processor: {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [0], tokens: ['<|endoftext|>'] } },
        },
      },
      {},
    );
    assert.deepEqual(withBos.encode('hi'), [0, 2588]);
  });

  test('keeps special tokens in decoded text unless asked to skip them', () => {
    const ids = asTokens([0, 2588, 0]);
    assert.equal(tiny.decode(ids), '<|endoftext|>hi<|endoftext|>');
    assert.equal(tiny.decode(ids, { skipSpecialTokens: true }), 'hi');
  });

  test('decodes no ids to the empty string', () => {
    assert.equal(tiny.decode([]), '');
  });

  test('decodes ids past the vocabulary to nothing', () => {
    assert.equal(tiny.decode(asTokens([2588, 9000, 2588])), 'hihi');
    assert.equal(tiny.decode(asTokens([9000])), '');
  });

  test('keeps spaces before punctuation unless tokenizer_config.json asks for clean-up', () => {
    const ids = tiny.encode('a , b .');
    assert.equal(TextTokenizer.fromJson(tinyJson, {}).decode(ids), 'a , b .');
    assert.equal(TextTokenizer.fromJson(tinyJson, { clean_up_tokenization_spaces: true }).decode(ids), 'a, b.');
  });

  test('loads without tokenizer_config.json', async () => {
    const dir = path.join(scratch, 'no-config');
    await mkdir(dir);
    await copyFile(path.join(root, 'models/tiny-moe/tokenizer.json'), path.join(dir, 'tokenizer.json'));
    const tokenizer = await TextTokenizer.fromModelDir(dir);
    assert.deepEqual(tokenizer.encode('The Python interpreter'), [447, 468, 1296]);
    assert.equal(tokenizer.chatTemplate, undefined);
  });

  test('throws TokenizerLoadError naming tokenizer.json when it is missing', async () => {
    await assert.rejects(TextTokenizer.fromModelDir(path.join(scratch, 'nowhere')), (error: unknown) => {
      assert.ok(error instanceof TokenizerLoadError);
      assert.equal(error.path, path.join(scratch, 'nowhere', 'tokenizer.json'));
      assert.match(error.reason, /does not exist/);
      return true;
    });
  });

  test('throws TokenizerLoadError when tokenizer.json is not JSON', async () => {
    await writeFile(path.join(scratch, 'tokenizer.json'), '{"model": ');
    await assert.rejects(TextTokenizer.fromModelDir(scratch), (error: unknown) => {
      assert.ok(error instanceof TokenizerLoadError);
      assert.equal(error.path, path.join(scratch, 'tokenizer.json'));
      assert.match(error.reason, /not valid JSON/);
      return true;
    });
  });

  test('throws TokenizerLoadError when tokenizer.json is JSON but not a tokenizer', async () => {
    await writeFile(path.join(scratch, 'tokenizer.json'), '{"hello": "world"}');
    await assert.rejects(TextTokenizer.fromModelDir(scratch), TokenizerLoadError);
  });
});
