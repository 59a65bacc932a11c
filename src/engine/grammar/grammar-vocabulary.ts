// The vocabulary as a grammar engine needs it: every token id's spelling as tokenizer.json stores it, and how
// to turn that spelling into bytes. Read from tokenizer.json the way xgrammar's TokenizerInfo.from_huggingface
// does (cpp/tokenizer_info.cc, HFTokenizerAnalyzer), so that the grammar sees the same bytes decode() produces.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { TokenizerLoadError } from '../../tokenizer/tokenizer.js';

/**
 * How a token's spelling becomes bytes. byte_level: GPT-2's byte-to-character table (" hello" is "Ġhello");
 * byte_fallback: SentencePiece, "▁" for a space and "<0x0A>" for a raw byte; raw: the spelling is the text.
 */
export type VocabType = 'byte_level' | 'byte_fallback' | 'raw';

export interface GrammarVocabulary {
  /** Index = token id. '' for an id the grammar must never choose: a special token, an id the file skips. */
  readonly encodedTokens: readonly string[];
  readonly vocabType: VocabType;
  /** The tokenizer puts a space before the text (SentencePiece's "▁" prefix), which decode() then drops. */
  readonly addPrefixSpace: boolean;
}

// Only the parts of tokenizer.json read here; everything else is left alone.
const component = z.looseObject({ type: z.string() });
type Component = z.infer<typeof component>;
const tokenizerJsonSchema = z.object({
  model: z.object({
    // BPE, WordPiece and WordLevel map spelling -> id; Unigram lists [spelling, score] in id order.
    vocab: z.union([z.record(z.string(), z.number().int().nonnegative()), z.array(z.tuple([z.string(), z.number()]))]),
  }),
  added_tokens: z.array(z.object({ id: z.number().int().nonnegative(), content: z.string(), special: z.boolean() })).optional(),
  normalizer: component.nullable().optional(),
  pre_tokenizer: component.nullable().optional(),
  decoder: component.nullable().optional(),
});

/** Reads `tokenizer.json` from a Hugging Face model directory. */
export async function readGrammarVocabulary(modelDir: string): Promise<GrammarVocabulary> {
  const file = path.join(modelDir, 'tokenizer.json');
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new TokenizerLoadError(file, `it cannot be read as JSON (${detail})`, { cause: error });
  }
  return grammarVocabularyFromTokenizerJson(json, file);
}

/** Throws TokenizerLoadError when the file lacks a vocabulary. */
export function grammarVocabularyFromTokenizerJson(tokenizerJson: unknown, source = 'tokenizer.json'): GrammarVocabulary {
  const parsed = tokenizerJsonSchema.safeParse(tokenizerJson);
  if (!parsed.success) {
    throw new TokenizerLoadError(source, `it has no vocabulary a grammar can use (${parsed.error.issues[0]?.message ?? 'unexpected shape'})`);
  }
  const json = parsed.data;
  const vocabType = detectVocabType(json.decoder ?? undefined);
  const encodedTokens: string[] = [];
  if (Array.isArray(json.model.vocab)) {
    json.model.vocab.forEach(([spelling], id) => (encodedTokens[id] = spelling));
  } else {
    for (const [spelling, id] of Object.entries(json.model.vocab)) encodedTokens[id] = spelling;
  }
  for (const added of json.added_tokens ?? []) {
    // A special token inside JSON text would decode to markup (or to nothing, when skipped); '' is what
    // xgrammar takes as "never allowed". The stop tokens are named separately, so '' does not hide them.
    // An added token's content is plain text, not in the vocabulary's spelling: spell it so it decodes back.
    encodedTokens[added.id] = added.special ? '' : vocabType === 'byte_level' ? byteLevelSpelling(added.content) : added.content;
  }
  // Ids the file skips (holes in the vocabulary) are never allowed either.
  for (let id = 0; id < encodedTokens.length; id++) encodedTokens[id] ??= '';
  return { encodedTokens, vocabType, addPrefixSpace: detectAddPrefixSpace(json.normalizer ?? undefined, json.pre_tokenizer ?? undefined) };
}

// The first ByteLevel or ByteFallback decoder decides, as in xgrammar. Beyond xgrammar, a Metaspace decoder, or a
// Replace of "▁" with " ", counts as byte_fallback: that is the type whose decoding turns "▁" into a space,
// which such tokenizers need even without <0x..> byte tokens (xgrammar would take them as raw and keep "▁").
function detectVocabType(decoder: Component | undefined): VocabType {
  const decoders = decoder === undefined ? [] : decoder.type === 'Sequence' ? componentList(decoder['decoders']) : [decoder];
  for (const d of decoders) {
    if (d.type === 'ByteLevel') return 'byte_level';
    if (d.type === 'ByteFallback') return 'byte_fallback';
  }
  const replacesMetaspace = decoders.some((d) => d.type === 'Metaspace' || (d.type === 'Replace' && JSON.stringify(d['pattern']) === '{"String":"▁"}'));
  return replacesMetaspace ? 'byte_fallback' : 'raw';
}

// A Prepend("▁") normalizer, or a Metaspace pre-tokenizer that prepends: as xgrammar's DetectAddPrefixSpace.
function detectAddPrefixSpace(normalizer: Component | undefined, preTokenizer: Component | undefined): boolean {
  const normalizers = normalizer === undefined ? [] : normalizer.type === 'Sequence' ? componentList(normalizer['normalizers']) : [normalizer];
  if (normalizers.some((n) => n.type === 'Prepend' && n['prepend'] === '▁')) return true;
  return preTokenizer?.type === 'Metaspace' && (preTokenizer['prepend_scheme'] === 'always' || preTokenizer['prepend_scheme'] === 'first');
}

function componentList(value: unknown): Component[] {
  const parsed = z.array(component).safeParse(value);
  return parsed.success ? parsed.data : [];
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100 onwards.
const BYTE_TO_CHAR: readonly string[] = (() => {
  const chars: string[] = [];
  let next = 256;
  for (let byte = 0; byte < 256; byte++) {
    const printable = (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
    chars.push(String.fromCodePoint(printable ? byte : next++));
  }
  return chars;
})();

/** Text spelled as a byte-level vocabulary spells it: each UTF-8 byte as one character. */
export function byteLevelSpelling(text: string): string {
  let spelling = '';
  for (const byte of Buffer.from(text, 'utf8')) spelling += BYTE_TO_CHAR[byte]!;
  return spelling;
}
