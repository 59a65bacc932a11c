import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import {
  grammarVocabularyFromTokenizerJson,
  JsonConstraintCompiler,
  maskReadCounts,
  ResponseFormatError,
  TokenNotAllowedError,
  type CompiledFormat,
  type GrammarVocabulary,
  type ResponseFormat,
  type TokenConstraint,
} from '../../src/engine/json-constraint.js';
import { byteLevelSpelling } from '../../src/engine/grammar/grammar-vocabulary.js';
import { TextTokenizer } from '../../src/tokenizer/tokenizer.js';
import { asTokens } from '../../src/tokenizer/token.js';
import { readJson, TINY_MOE_DIR } from '../helpers/paths.js';
import { seededRandom } from '../helpers/seeded-random.js';

const VOCAB_SIZE = readJson<{ vocab_size: number }>(path.join(TINY_MOE_DIR, 'config.json')).vocab_size;
const EOS = readJson<{ eos_token_id: number }>(path.join(TINY_MOE_DIR, 'config.json')).eos_token_id;
const tokenizerJson: unknown = JSON.parse(readFileSync(path.join(TINY_MOE_DIR, 'tokenizer.json'), 'utf8'));

const PERSON_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 40 },
    age: { type: 'integer', minimum: 0, maximum: 150 },
    member: { type: 'boolean' },
    color: { enum: ['red', 'green', 'blue'] },
    tags: { type: 'array', items: { type: 'string', maxLength: 12 }, maxItems: 3 },
    address: {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 20 }, zip: { type: 'integer' } },
      required: ['city', 'zip'],
      additionalProperties: false,
    },
  },
  required: ['name', 'age', 'member', 'color', 'tags', 'address'],
  additionalProperties: false,
};

function jsonSchemaFormat(schema: Record<string, unknown>): ResponseFormat {
  return { type: 'json_schema', json_schema: { name: 'test', schema, strict: true } };
}

let tokenizer: TextTokenizer;
let vocabulary: GrammarVocabulary;
let compiler: JsonConstraintCompiler;
/** Per token: does its spelling hold a character that closes a JSON value ('"', ',', '}', ']')? */
let closes: boolean[];

before(async () => {
  tokenizer = await TextTokenizer.fromModelDir(TINY_MOE_DIR);
  vocabulary = grammarVocabularyFromTokenizerJson(tokenizerJson);
  compiler = await JsonConstraintCompiler.create(vocabulary, VOCAB_SIZE, [EOS]);
  // Byte-level spelling keeps printable ASCII as is, so these characters show in the raw spelling.
  closes = vocabulary.encodedTokens.map((spelling) => /["\]},]/.test(spelling));
});

after(() => compiler.dispose());

function allowedTokens(constraint: TokenConstraint): number[] {
  const logits = new Float32Array(VOCAB_SIZE);
  constraint.maskLogits(logits);
  const allowed: number[] = [];
  for (let t = 0; t < VOCAB_SIZE; t++) if (logits[t] !== -Infinity) allowed.push(t);
  return allowed;
}

interface Generation {
  readonly tokens: number[];
  /** Whether `terminated` was true just before the stop token was chosen. */
  readonly terminatedBeforeStop: boolean;
}

/**
 * A fake model: random logits from a seeded generator, plus a bias towards tokens that close a value which
 * grows with the step, so that strings and numbers end; greedy over what the mask leaves. With
 * `yieldBetweenSteps` it awaits between steps as the engine does (a forward pass), so the mask read ahead
 * is the one used; without, every mask is read synchronously.
 */
async function generate(constraint: TokenConstraint, seed: number, yieldBetweenSteps: boolean, maxSteps = 600): Promise<Generation> {
  const random = seededRandom(seed);
  const tokens: number[] = [];
  const logits = new Float32Array(VOCAB_SIZE);
  for (let step = 0; step < maxSteps; step++) {
    if (yieldBetweenSteps) await nextTurn();
    const closeBias = step / 40;
    for (let t = 0; t < VOCAB_SIZE; t++) logits[t] = random() + (closes[t] ? closeBias : 0);
    const terminated = constraint.terminated;
    constraint.maskLogits(logits);
    let best = 0;
    for (let t = 1; t < VOCAB_SIZE; t++) if (logits[t]! > logits[best]!) best = t;
    assert.notEqual(logits[best], -Infinity, 'the mask left no token at all');
    constraint.accept(best);
    tokens.push(best);
    if (best === EOS) return { tokens, terminatedBeforeStop: terminated };
  }
  assert.fail(`no stop token within ${maxSteps} steps: ${JSON.stringify(tokenizer.decode(asTokens(tokens)))}`);
}

/** The text of a generation without its stop token, as the server would return it. */
function textOf(generation: Generation): string {
  assert.equal(generation.tokens.at(-1), EOS, 'a constrained generation ends with the stop token');
  return tokenizer.decode(asTokens(generation.tokens.slice(0, -1)));
}

/** The text, tokenized afresh, is accepted token by token and leaves the grammar complete. */
function assertGrammarAcceptsText(format: CompiledFormat, text: string): void {
  const constraint = format.newConstraint();
  try {
    for (const token of tokenizer.encode(text)) {
      assert.ok(allowedTokens(constraint).includes(token), `token ${token} of ${JSON.stringify(text)} is masked`);
      constraint.accept(token);
    }
    assert.equal(constraint.terminated, true, `the grammar is not complete after ${JSON.stringify(text)}`);
    assert.deepEqual(allowedTokens(constraint), [EOS]);
  } finally {
    constraint.dispose();
  }
}

describe('JsonConstraintCompiler', () => {
  test('compiles {type: "text"} to no constraint', async () => {
    assert.equal(await compiler.compile({ type: 'text' }), null);
  });

  test('json_object: a fake model writes JSON objects that parse, then the stop token', async () => {
    const format = await compiler.compile({ type: 'json_object' });
    assert.ok(format);
    for (const [seed, yieldBetweenSteps] of [[1, false], [2, true], [3, false], [4, true]] as const) {
      const constraint = format.newConstraint();
      const generation = await generate(constraint, seed, yieldBetweenSteps);
      constraint.dispose();
      const text = textOf(generation);
      const value: unknown = JSON.parse(text);
      assert.ok(typeof value === 'object' && value !== null && !Array.isArray(value), `not an object: ${text}`);
      assert.equal(generation.terminatedBeforeStop, true, 'the stop token came before the grammar was complete');
      assertGrammarAcceptsText(format, text);
    }
  });

  test('json_schema: a fake model writes values valid against the schema (strings, integer, boolean, enum, array, nested object)', async () => {
    const format = await compiler.compile(jsonSchemaFormat(PERSON_SCHEMA));
    assert.ok(format);
    const validate = new Ajv2020({ strict: true }).compile(PERSON_SCHEMA);
    for (const [seed, yieldBetweenSteps] of [[11, true], [12, false], [13, true], [14, false], [15, true]] as const) {
      const constraint = format.newConstraint();
      const generation = await generate(constraint, seed, yieldBetweenSteps);
      constraint.dispose();
      const text = textOf(generation);
      assert.ok(validate(JSON.parse(text)), `${text}: ${JSON.stringify(validate.errors)}`);
      assertGrammarAcceptsText(format, text);
    }
  });

  test('json_schema: anyOf, nullable types, const, $defs references and a string pattern are enforced', async () => {
    const schema = {
      type: 'object',
      properties: {
        kind: { const: 'point' },
        id: { type: 'string', pattern: '^[a-z]{2}[0-9]{2}$' },
        note: { type: ['string', 'null'], maxLength: 10 },
        at: { $ref: '#/$defs/coordinates' },
        score: { anyOf: [{ type: 'integer', minimum: 1, maximum: 5 }, { type: 'boolean' }] },
      },
      required: ['kind', 'id', 'note', 'at', 'score'],
      additionalProperties: false,
      $defs: {
        coordinates: { type: 'array', prefixItems: [{ type: 'number' }, { type: 'number' }], items: false, minItems: 2 },
      },
    };
    const format = await compiler.compile(jsonSchemaFormat(schema));
    assert.ok(format);
    const validate = new Ajv2020({ strict: true }).compile(schema);
    for (const seed of [21, 22, 23]) {
      const constraint = format.newConstraint();
      const text = textOf(await generate(constraint, seed, false));
      constraint.dispose();
      assert.ok(validate(JSON.parse(text)), `${text}: ${JSON.stringify(validate.errors)}`);
    }
  });

  test('decodes exactly the text the grammar accepted: leading-space tokens and multi-byte characters split across tokens', async () => {
    const schema = { type: 'object', properties: { name: { type: 'string' }, n: { type: 'array', items: { type: 'integer' } } }, required: ['name', 'n'] };
    const format = await compiler.compile(jsonSchemaFormat(schema));
    assert.ok(format);
    const text = '{"name": "héllo wörld ✓ 日本 😀 and more", "n": [1, 20, 300]}';
    const tokens = tokenizer.encode(text);
    // The text must exercise what it claims: tokens spelled with a leading space (Ġ), and bytes of one
    // character spread over several tokens (a token that does not decode to whole UTF-8 characters).
    assert.ok(tokens.some((t) => vocabulary.encodedTokens[t]!.startsWith('Ġ')), 'no leading-space token');
    assert.ok(tokens.some((t) => tokenizer.decode([t]).includes('\uFFFD')), 'no token holding part of a character');
    assert.equal(tokenizer.decode(tokens), text);
    assertGrammarAcceptsText(format, text);
    // And one character short of the end, the grammar is not complete: the stop token is masked.
    const constraint = format.newConstraint();
    for (const t of tokenizer.encode(text.slice(0, -1))) constraint.accept(t);
    assert.equal(constraint.terminated, false);
    assert.ok(!allowedTokens(constraint).includes(EOS));
    constraint.dispose();
  });

  test('writes compact JSON: no whitespace is allowed between values beyond the one space of ", " and ": "', async () => {
    const format = await compiler.compile(jsonSchemaFormat(PERSON_SCHEMA));
    assert.ok(format);
    const constraint = format.newConstraint();
    const tokens = tokenizer.encode('{"name": "Al", "age": 3, "member": false, "color": "red", "tags": [], "address": {"city": "X", "zip": 1}}');
    for (const [i, t] of tokens.entries()) {
      const before = tokenizer.decode(tokens.slice(0, i));
      // Inside a string any text is content; between values the model may not pad.
      if ((before.match(/"/g)?.length ?? 0) % 2 === 0) {
        const padding = allowedTokens(constraint).filter((a) => /\s\s|[\n\t\r]/.test(tokenizer.decode(asTokens([a]))));
        assert.deepEqual(padding, [], `after ${JSON.stringify(before)} the grammar allows padding tokens`);
      }
      constraint.accept(t);
    }
    assert.equal(constraint.terminated, true);
    constraint.dispose();
  });

  test('lets no property in that the schema does not name, even without additionalProperties: false', async () => {
    const format = await compiler.compile(jsonSchemaFormat({ type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] }));
    assert.ok(format);
    const constraint = format.newConstraint();
    for (const t of tokenizer.encode('{"a": 7')) constraint.accept(t);
    const next = allowedTokens(constraint).map((t) => tokenizer.decode(asTokens([t])));
    assert.ok(next.includes('}'));
    assert.ok(!next.some((text) => text.startsWith(',')), 'a comma would start a property the schema does not name');
    constraint.dispose();
  });

  test('accept throws for a token the grammar does not allow, which the mask had removed', async () => {
    const format = await compiler.compile({ type: 'json_object' });
    assert.ok(format);
    const constraint = format.newConstraint();
    const bracket = tokenizer.encode('[')[0]!;
    const allowed = allowedTokens(constraint);
    assert.ok(!allowed.includes(bracket), 'a JSON object cannot start with [');
    assert.ok(!allowed.includes(EOS), 'the stop token cannot come before the JSON');
    assert.throws(() => constraint.accept(bracket), TokenNotAllowedError);
    assert.throws(() => constraint.accept(EOS), TokenNotAllowedError);
    assert.throws(() => constraint.accept(VOCAB_SIZE), TokenNotAllowedError);
    // A refused token leaves the state as it was.
    for (const t of tokenizer.encode('{}')) constraint.accept(t);
    assert.equal(constraint.terminated, true);
    assert.throws(() => constraint.accept(tokenizer.encode(' ')[0]!), TokenNotAllowedError);
    constraint.accept(EOS);
    assert.equal(constraint.terminated, true);
    assert.throws(() => constraint.accept(EOS), TokenNotAllowedError);
    constraint.dispose();
    assert.throws(() => constraint.accept(EOS), /after dispose/);
  });

  test('the mask read ahead between steps equals the one read synchronously, and is the one used', async () => {
    const format = await compiler.compile(jsonSchemaFormat(PERSON_SCHEMA));
    assert.ok(format);
    const tokens = [...tokenizer.encode('{"name": "Ann Lee", "age": 42, "member": true, "color": "green", "tags": ["a"], "address": {"city": "Oslo", "zip": 150}}'), EOS];
    const sync = format.newConstraint();
    const ahead = format.newConstraint();
    const readsBefore = maskReadCounts();
    for (const t of tokens) {
      // In the same turn as the accept (or creation) before it: the read ahead has not run yet.
      const allowed = allowedTokens(sync);
      // A turn later, as after a forward pass: it has.
      await nextTurn();
      assert.deepEqual(allowedTokens(ahead), allowed);
      sync.accept(t);
      ahead.accept(t);
    }
    assert.equal(sync.terminated && ahead.terminated, true);
    const readsAfter = maskReadCounts();
    assert.equal(readsAfter.ahead - readsBefore.ahead, tokens.length);
    assert.equal(readsAfter.synchronous - readsBefore.synchronous, tokens.length);
    sync.dispose();
    ahead.dispose();
  });

  test('constraints from one compile advance independently (n > 1)', async () => {
    const format = await compiler.compile({ type: 'json_object' });
    assert.ok(format);
    const a = format.newConstraint();
    const b = format.newConstraint();
    for (const t of tokenizer.encode('{"a": 1}')) a.accept(t);
    assert.equal(a.terminated, true);
    assert.equal(b.terminated, false);
    assert.ok(allowedTokens(b).includes(tokenizer.encode('{')[0]!));
    a.dispose();
    b.dispose();
  });

  test('returns the cached compile for the same schema text, and a new one when the property order differs', async () => {
    const first = await compiler.compile(jsonSchemaFormat(PERSON_SCHEMA));
    assert.equal(await compiler.compile(jsonSchemaFormat(structuredClone(PERSON_SCHEMA))), first);
    const reordered = { ...PERSON_SCHEMA, properties: Object.fromEntries(Object.entries(PERSON_SCHEMA.properties).reverse()) };
    assert.notEqual(await compiler.compile(jsonSchemaFormat(reordered)), first);
  });

  test('refuses schemas it cannot enforce with ResponseFormatError, and keeps working afterwards', async () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ type: 'strng' }, /Unsupported type "strng"/],
      [{ $ref: '#/$defs/missing' }, /missing/],
      [{ type: 'integer', minimum: 5, maximum: 3 }, /minimum greater than maximum/],
      [{ type: 'string', pattern: '^(?=a)b$' }, /Lookahead/],
      [{ type: 'object', properties: { a: { not: { type: 'string' } } } }, /at \/properties\/a: "not" is not supported/],
      [{ type: 'array', items: { type: 'integer' }, uniqueItems: true }, /uniqueItems/],
      [{ type: 'number', multipleOf: 0.5 }, /multipleOf/],
      [{ type: 'object', properties: { a: { type: 'integer' } }, required: ['a', 'b'] }, /"b" is required/],
      [{ allOf: [{ type: 'object', properties: { a: { type: 'integer' } } }, { type: 'object', properties: { b: { type: 'integer' } } }] }, /allOf/],
    ];
    for (const [schema, message] of bad) {
      await assert.rejects(compiler.compile(jsonSchemaFormat(schema)), (error: unknown) => {
        assert.ok(error instanceof ResponseFormatError, `${JSON.stringify(schema)} threw ${String(error)}`);
        assert.equal(error.code, 'invalid_response_format');
        assert.match(error.message, message);
        return true;
      });
    }
    // A property named like an unsupported keyword is only a name.
    assert.ok(await compiler.compile(jsonSchemaFormat({ type: 'object', properties: { not: { type: 'string' } }, required: ['not'] })));
    const format = await compiler.compile(jsonSchemaFormat({ type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }));
    assert.ok(format);
    const constraint = format.newConstraint();
    const value = JSON.parse(textOf(await generate(constraint, 5, false))) as { ok: unknown };
    constraint.dispose();
    assert.equal(typeof value.ok, 'boolean');
  });

  test('masks padding ids when the model has more logits than the tokenizer has tokens', async () => {
    const padded = await JsonConstraintCompiler.create(vocabulary, VOCAB_SIZE + 64, [EOS]);
    try {
      const format = await padded.compile({ type: 'json_object' });
      assert.ok(format);
      const constraint = format.newConstraint();
      const logits = new Float32Array(VOCAB_SIZE + 64);
      for (const t of tokenizer.encode('{"a": "')) constraint.accept(t);
      constraint.maskLogits(logits);
      assert.ok(logits.subarray(VOCAB_SIZE).every((l) => l === -Infinity));
      assert.ok(logits.subarray(0, VOCAB_SIZE).some((l) => l === 0));
      assert.throws(() => constraint.maskLogits(new Float32Array(VOCAB_SIZE)), RangeError);
      constraint.dispose();
    } finally {
      padded.dispose();
    }
  });
});

describe('grammarVocabularyFromTokenizerJson', () => {
  test('reads a byte-level BPE vocabulary in id order, with special tokens blanked', () => {
    assert.equal(vocabulary.vocabType, 'byte_level');
    assert.equal(vocabulary.addPrefixSpace, false);
    assert.equal(vocabulary.encodedTokens.length, tokenizer.vocabSize);
    assert.equal(vocabulary.encodedTokens[EOS], '');
    for (const [id, spelling] of vocabulary.encodedTokens.entries()) {
      if (spelling !== '') assert.equal(tokenizer.tokenToId(spelling), id);
    }
    assert.ok(vocabulary.encodedTokens.includes('Ġthe'));
  });

  test('detects a SentencePiece (byte-fallback) tokenizer and spells added tokens so they decode back', () => {
    const sentencePiece = grammarVocabularyFromTokenizerJson({
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      pre_tokenizer: null,
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
      model: { type: 'Unigram', vocab: [['<unk>', 0], ['<s>', 0], ['▁a', -1], ['<0x0A>', -2]] },
      added_tokens: [{ id: 1, content: '<s>', special: true }, { id: 5, content: 'é x', special: false }],
    });
    assert.equal(sentencePiece.vocabType, 'byte_fallback');
    assert.equal(sentencePiece.addPrefixSpace, true);
    assert.deepEqual(sentencePiece.encodedTokens, ['<unk>', '', '▁a', '<0x0A>', '', 'é x']);
    const byteLevel = grammarVocabularyFromTokenizerJson({ decoder: { type: 'ByteLevel' }, model: { vocab: { a: 0 } }, added_tokens: [{ id: 1, content: 'é x', special: false }] });
    assert.deepEqual(byteLevel.encodedTokens, ['a', byteLevelSpelling('é x')]);
    assert.equal(byteLevelSpelling('é x'), 'Ã©Ġx');
  });
});
