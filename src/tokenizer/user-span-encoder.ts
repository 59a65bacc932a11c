import type { AddedToken, Tokenizer } from '@huggingface/tokenizers';
import { AddedTokenSplitter, stripAroundTokens, type AddedTokenMatch, type SplitPiece } from './added-token-splitter.js';

/** A range of a string, in UTF-16 code units, end exclusive. */
export interface TextSpan {
  readonly start: number;
  readonly end: number;
}

/** A user's text that the model's own vocabulary can only encode as a special token. */
export class UnsplittableSpecialTokenError extends Error {
  constructor(readonly tokenText: string) {
    super(`message text spells the special token ${JSON.stringify(tokenText)}, which this tokenizer cannot encode ` +
      'as plain text; remove it from the messages');
    this.name = new.target.name;
  }
}

export interface UserSpanEncoding {
  readonly ids: number[];
  /**
   * Whether user text changed anything: a special-token match refused or a model token split. When false,
   * `ids` are what the library's own encode() gives for the whole text.
   */
  readonly changed: boolean;
}

// tokenizer_config.json keys the library reads at encode time.
interface EncodeConfig {
  readonly remove_space?: unknown;
  readonly do_lowercase_and_remove_accent?: unknown;
  readonly additional_special_tokens?: unknown;
}

/**
 * Encodes a string as the library's `Tokenizer.encode` does (added-token split, lstrip/rstrip, normalizer,
 * pre-tokenizer with its section index, model, post-processor), with one difference: a special token's text
 * that overlaps a user span is not the special token but plain text, encoded together with the text around it.
 * That is transformers' `split_special_tokens=True` (Rust tokenizers' `encode_special_tokens`) applied to the
 * user's spans only, so the chat template's own markup keeps its special tokens. Non-special added tokens
 * (e.g. Qwen2.5's `<tool_call>`) are split out wherever they are, as `split_special_tokens` does.
 *
 * This re-runs the library's steps through its public parts rather than calling encode(), because encode()
 * cannot be told where the user's text is; a test checks both agree on text without user spans.
 */
export class UserSpanEncoder {
  // Added tokens by the text the splitters match: the content, or the normalized content for a normalized one.
  private readonly addedByKey = new Map<string, AddedToken>();
  private readonly specialContents = new Set<string>();
  private readonly rawSplitter: AddedTokenSplitter;
  private readonly specialSplitter: AddedTokenSplitter;
  private readonly normalizedSplitter: AddedTokenSplitter;
  private readonly normalizedHasSpecial: boolean;
  private readonly removeSpace: boolean;
  private readonly lowercaseAndRemoveAccents: boolean;

  constructor(
    private readonly tokenizer: Tokenizer,
    config: EncodeConfig,
  ) {
    const additionalSpecial: readonly unknown[] = Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens : [];
    const raw: [string, AddedToken][] = [];
    const normalized: [string, AddedToken][] = [];
    const special: [string, AddedToken][] = [];
    for (const token of tokenizer.get_added_tokens_decoder().values()) {
      if (token.special || additionalSpecial.includes(token.content)) {
        this.specialContents.add(token.content);
        special.push([token.content, token]);
      }
      this.addedByKey.set(token.content, token);
      // As the library: a normalized token is matched after normalization, and only if there is a normalizer.
      if (token.normalized && tokenizer.normalizer !== null) {
        const key = tokenizer.normalizer(token.content);
        normalized.push([key, token]);
        this.addedByKey.set(key, token);
      } else {
        raw.push([token.content, token]);
      }
    }
    this.rawSplitter = new AddedTokenSplitter(raw);
    this.normalizedSplitter = new AddedTokenSplitter(normalized);
    this.specialSplitter = new AddedTokenSplitter(special);
    this.normalizedHasSpecial = normalized.some(([, token]) => this.isSpecial(token));
    this.removeSpace = config.remove_space === true;
    this.lowercaseAndRemoveAccents = config.do_lowercase_and_remove_accent === true;
  }

  /** Where special-token text occurs in `text` (its raw content; leftmost, longest first, not overlapping). */
  specialTokenText(text: string): TextSpan[] {
    return this.specialSplitter.matches(text).map(({ start, end }) => ({ start, end }));
  }

  encode(text: string, userSpans: readonly TextSpan[]): UserSpanEncoding {
    let changed = false;
    // A special token is refused where it touches user text; other added tokens are always split out.
    const allowed = (match: AddedTokenMatch, spans: readonly TextSpan[] | 'all'): boolean => {
      if (!this.isSpecial(match.token) || !overlaps(spans, match.start, match.end)) return true;
      changed = true;
      return false;
    };
    // The library emits a piece whose whole text is an added token's key as that token, whether or not the
    // splitter produced it as one; a special one is not taken from user text.
    const isToken = (piece: SplitPiece, holdsUserText: boolean): boolean => {
      const token = piece.token ?? this.addedByKey.get(piece.text);
      if (token === undefined) return false;
      if (!holdsUserText || !this.isSpecial(token)) return true;
      changed = true;
      return false;
    };

    const { pieces: sections } = this.rawSplitter.split(text, (match) => allowed(match, userSpans));
    stripAroundTokens(sections);
    const tokens: string[] = [];
    sections.forEach((section, sectionIndex) => {
      if (section.text.length === 0) return;
      const sectionSpans = relativeSpans(userSpans, section);
      if (isToken(section, sectionSpans.length > 0)) {
        tokens.push(section.text);
        return;
      }
      const prepared = this.prepare(section.text);
      if (prepared.length === 0) return;
      // The user spans in `prepared`. Only a normalized special token needs them exactly; without one, every
      // piece of a section that holds user text counts as user text.
      const preparedSpans: readonly TextSpan[] | 'all' = sectionSpans.length === 0
        ? []
        : this.normalizedHasSpecial ? this.mapSpans(section.text, prepared, sectionSpans) : 'all';
      const { pieces: subsections } = this.normalizedSplitter.split(prepared, (match) => allowed(match, preparedSpans));
      stripAroundTokens(subsections);
      for (const subsection of subsections) {
        if (subsection.text.length === 0) continue;
        if (isToken(subsection, overlaps(preparedSpans, subsection.start, subsection.start + subsection.text.length))) {
          tokens.push(subsection.text);
          continue;
        }
        const words = this.tokenizer.pre_tokenizer === null
          ? [subsection.text]
          : this.tokenizer.pre_tokenizer(subsection.text, { section_index: sectionIndex });
        const modelTokens = this.model(words);
        if (sectionSpans.length === 0) {
          tokens.push(...modelTokens);
          continue;
        }
        for (const token of modelTokens) {
          if (!this.isSpecialKey(token)) {
            tokens.push(token);
            continue;
          }
          // The model's own merges spelled a special token out of user text: a vocabulary that holds the
          // special token's string as an ordinary entry. Its characters one by one cannot be that token.
          changed = true;
          const pieces = this.model(Array.from(token));
          if (pieces.some((piece) => this.isSpecialKey(piece))) throw new UnsplittableSpecialTokenError(token);
          tokens.push(...pieces);
        }
      }
    });
    const processed: string[] = this.tokenizer.post_processor === null ? tokens : this.tokenizer.post_processor(tokens, null, true).tokens;
    // The library's own lookup order; an id it cannot find stays NaN so that asToken() rejects it, as it
    // rejects the undefined the library would give.
    const ids = processed.map((t) => this.addedByKey.get(t)?.id ?? this.tokenizer.token_to_id(t) ?? this.tokenizer.model?.unk_token_id ?? Number.NaN);
    return { ids, changed };
  }

  private isSpecial(token: AddedToken): boolean {
    return this.specialContents.has(token.content);
  }

  // A string the final id lookup would turn into a special token.
  private isSpecialKey(text: string): boolean {
    const token = this.addedByKey.get(text);
    return token !== undefined && this.isSpecial(token);
  }

  private model(words: string[]): string[] {
    return this.tokenizer.model === null ? words : this.tokenizer.model(words);
  }

  // The library's text preparation before the normalized-token split.
  private prepare(text: string): string {
    let prepared = text;
    if (this.removeSpace) prepared = prepared.trim().split(/\s+/).join(' ');
    if (this.lowercaseAndRemoveAccents) prepared = prepared.toLowerCase().replace(/\p{M}/gu, '');
    if (this.tokenizer.normalizer !== null) prepared = this.tokenizer.normalizer(prepared);
    return prepared;
  }

  // A normalizer gives no offsets: a span boundary b maps to the length of prepare(text[0..b]) when that is
  // a prefix of prepare(text), as it is for Prepend, Replace, NFC and the like. When it is not, every special
  // token in the section is refused ('all'): refusing a template's token is better than accepting a user's.
  private mapSpans(text: string, prepared: string, spans: readonly TextSpan[]): readonly TextSpan[] | 'all' {
    const mapBoundary = (b: number): number | undefined => {
      const head = this.prepare(text.slice(0, b));
      return prepared.startsWith(head) ? head.length : undefined;
    };
    const mapped: TextSpan[] = [];
    for (const span of spans) {
      const start = mapBoundary(span.start);
      const end = mapBoundary(span.end);
      if (start === undefined || end === undefined) return 'all';
      mapped.push({ start, end });
    }
    return mapped;
  }
}

function overlaps(spans: readonly TextSpan[] | 'all', start: number, end: number): boolean {
  if (spans === 'all') return true;
  return spans.some((span) => span.start < end && start < span.end);
}

// The user spans that overlap a piece, clipped to it and made relative to its start.
function relativeSpans(spans: readonly TextSpan[], piece: SplitPiece): TextSpan[] {
  const end = piece.start + piece.text.length;
  return spans
    .filter((span) => span.start < end && piece.start < span.end)
    .map((span) => ({ start: Math.max(span.start, piece.start) - piece.start, end: Math.min(span.end, end) - piece.start }));
}
