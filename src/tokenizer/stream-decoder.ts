import type { Token } from './token.js';

// Turns ids into text. Given only a short window of recent ids, never the whole sequence.
export type DecodeTokens = (ids: readonly Token[]) => string;

// What a UTF-8 decoder produces for a sequence cut in the middle of a character.
const REPLACEMENT_CHARACTER = '\uFFFD';

/**
 * Incremental detokenization, as vLLM's `detokenize_incrementally`. Text is decoded from a window that starts at
 * `prefixOffset` (a few ids before the unread ones) rather than from the unread ids alone, because decoders treat
 * the start of a sequence specially (Metaspace drops the leading space); diffing two decodes of the same window
 * cancels that out. The window slides only when its decoded tail is a complete character, which is also the only
 * moment a byte-level decode of `ids[0..n]` is guaranteed to equal decode(earlier) + decode(later), so the
 * concatenated output equals one decode of the whole sequence.
 *
 * One decoder per sequence: flush() ends it.
 */
export class StreamDecoder {
  // ids[prefixOffset..]; ids before the window are finalized and dropped, so memory and work stay O(window).
  private window: Token[] = [];
  // Index in `window` of the first id whose text has not been returned yet.
  private readOffset = 0;
  // decode(window[0..readOffset]), cached because it only changes when the window slides.
  private prefixText: string | undefined = '';

  constructor(private readonly decode: DecodeTokens) {}

  /** Adds one id and returns the text it finalized (often '', e.g. mid-character). */
  push(id: Token): string {
    this.window.push(id);
    const prefixText = this.currentPrefixText();
    const text = this.decode(this.window);
    // A trailing U+FFFD may be the start of a character the next ids complete: hold the whole window back.
    if (text.length <= prefixText.length || text.endsWith(REPLACEMENT_CHARACTER)) return '';
    this.window = this.window.slice(this.readOffset);
    this.readOffset = this.window.length;
    this.prefixText = undefined;
    return text.slice(prefixText.length);
  }

  /** Ends the sequence: returns the held-back text, U+FFFD included, since no id can complete it now. */
  flush(): string {
    const rest = this.readOffset < this.window.length
      ? this.decode(this.window).slice(this.currentPrefixText().length)
      : '';
    this.window = [];
    this.readOffset = 0;
    this.prefixText = '';
    return rest;
  }

  private currentPrefixText(): string {
    this.prefixText ??= this.readOffset === 0 ? '' : this.decode(this.window.slice(0, this.readOffset));
    return this.prefixText;
  }
}
