import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { createRng, type Rng } from '../../src/engine/sampler.js';
import { StreamDecoder } from '../../src/tokenizer/stream-decoder.js';
import { asToken, asTokens, type Token } from '../../src/tokenizer/token.js';
import { TextTokenizer } from '../../src/tokenizer/tokenizer.js';
import { repoRoot } from '../support/repo-root.js';

// A byte-level vocabulary: each id stands for some bytes, and decoding is UTF-8 with replacement, as in a
// byte-level BPE tokenizer.
function byteDecoder(vocab: readonly (readonly number[])[]): (ids: readonly Token[]) => string {
  const utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  return (ids) => utf8.decode(Uint8Array.from(ids.flatMap((id) => vocab[id] ?? [])));
}

function pushAll(decoder: StreamDecoder, ids: readonly Token[]): string[] {
  return ids.map((id) => decoder.push(id));
}

describe('StreamDecoder', () => {
  const vocab = [[0x41], [0xe2], [0x82], [0xac], [0x42], [0xe2, 0x82], [0x80]];

  test('holds back a character split across tokens until its last byte arrives', () => {
    const decoder = new StreamDecoder(byteDecoder(vocab));
    assert.deepEqual(pushAll(decoder, asTokens([0, 1, 2, 3, 4])), ['A', '', '', '€', 'B']);
    assert.equal(decoder.flush(), '');
  });

  test('flush returns the held-back tail, U+FFFD included, when the sequence ends mid-character', () => {
    const decoder = new StreamDecoder(byteDecoder(vocab));
    assert.deepEqual(pushAll(decoder, asTokens([0, 5])), ['A', '']);
    assert.equal(decoder.flush(), '\uFFFD');
  });

  test('releases an invalid byte once a later token shows it can never complete', () => {
    const decoder = new StreamDecoder(byteDecoder(vocab));
    assert.deepEqual(pushAll(decoder, asTokens([6, 0])), ['', '\uFFFDA']);
  });

  test('decodes only a short window however long the sequence grows', () => {
    let longest = 0;
    const decode = byteDecoder(vocab);
    const decoder = new StreamDecoder((ids) => {
      longest = Math.max(longest, ids.length);
      return decode(ids);
    });
    const text = pushAll(decoder, asTokens(Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? 0 : 4)))).join('');
    assert.equal(text, 'AB'.repeat(500));
    assert.ok(longest <= 2, `decoded ${longest} ids at once`);
  });

  test('diffs against a prefix window, so a decoder that drops the leading space still streams exactly', () => {
    // Like SentencePiece's Metaspace decoder: '▁' is a space, and the first one of a sequence is dropped.
    const pieces = ['▁Hello', '▁world', '!'];
    const metaspace = (ids: readonly Token[]): string =>
      ids.map((id) => pieces[id]).join('').replaceAll('▁', ' ').replace(/^ /, '');
    const decoder = new StreamDecoder(metaspace);
    assert.deepEqual(pushAll(decoder, asTokens([0, 1, 2])), ['Hello', ' world', '!']);
  });
});

const root = repoRoot();
const modelDirs = [
  ...['mixtral', 'qwen2_moe', 'olmoe'].map((family) => path.join(root, 'test/fixtures', family)),
  path.join(root, 'models/tiny-moe'),
];

function randomInt(rng: Rng, below: number): number {
  return Math.floor(rng.next() * below);
}

function randomIds(rng: Rng, vocabSize: number): Token[] {
  return Array.from({ length: 1 + randomInt(rng, 64) }, () => asToken(randomInt(rng, vocabSize)));
}

function streamed(tokenizer: TextTokenizer, ids: readonly Token[], skipSpecialTokens: boolean): string {
  const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens });
  return ids.map((id) => decoder.push(id)).join('') + decoder.flush();
}

for (const modelDir of modelDirs) {
  describe(`StreamDecoder over the ${path.basename(modelDir)} tokenizer`, async () => {
    const tokenizer = await TextTokenizer.fromModelDir(modelDir);

    test('streams random ids, which split multi-byte characters, to exactly the one-shot decode', () => {
      const rng = createRng(1234);
      for (let trial = 0; trial < 400; trial++) {
        const ids = randomIds(rng, tokenizer.vocabSize);
        assert.equal(streamed(tokenizer, ids, false), tokenizer.decode(ids), `ids ${JSON.stringify(ids)}`);
        assert.equal(
          streamed(tokenizer, ids, true),
          tokenizer.decode(ids, { skipSpecialTokens: true }),
          `ids ${JSON.stringify(ids)} skipping special tokens`,
        );
      }
    });

    test('streams encoded multilingual text back to the same text', () => {
      const text = 'naïve café — 世界 🙂🙃 Ωμέγα\n\tend. <|endoftext|> ok';
      const ids = tokenizer.encode(text);
      assert.equal(streamed(tokenizer, ids, false), text);
    });

    test('never returns text ending in U+FFFD before flush when every character is complete', () => {
      const ids = tokenizer.encode('日本語のテキスト 🙂 emoji');
      const decoder = tokenizer.createStreamDecoder();
      for (const id of ids) assert.ok(!decoder.push(id).endsWith('\uFFFD'));
    });
  });
}
