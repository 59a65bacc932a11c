import type { AddedToken } from '@huggingface/tokenizers';

/** A piece of split text: an added token's text, or the plain text between two of them. */
export interface SplitPiece {
  text: string;
  /** Offset of `text` in the string that was split; moves when lstrip/rstrip trim the piece's start. */
  start: number;
  token: AddedToken | undefined;
}

/** Where an added token's text was found. */
export interface AddedTokenMatch {
  readonly token: AddedToken;
  readonly start: number;
  readonly end: number;
}

interface TrieNode {
  readonly children: Map<string, TrieNode>;
  // The key that ends here and its token; the key is the normalized content for a normalized token.
  match?: { readonly key: string; readonly token: AddedToken };
}

/**
 * Splits text at added tokens exactly as @huggingface/tokenizers' DictionarySplitter does (at each position the
 * longest key, scanning left to right), except that a caller may refuse a match. A refused match stays plain
 * text and the scan resumes after it, as Hugging Face's Rust tokenizers do for a special token when
 * `encode_special_tokens` (transformers' `split_special_tokens`) is set: a shorter key inside it is not tried.
 */
export class AddedTokenSplitter {
  private readonly root: TrieNode = { children: new Map() };
  readonly isEmpty: boolean;

  constructor(keys: Iterable<readonly [string, AddedToken]>) {
    let empty = true;
    for (const [key, token] of keys) {
      if (key.length === 0) continue;
      let node = this.root;
      // UTF-16 code units, as the library's trie and longestAt() walk them.
      for (let i = 0; i < key.length; i += 1) {
        const char = key.charAt(i);
        let next = node.children.get(char);
        if (next === undefined) {
          next = { children: new Map() };
          node.children.set(char, next);
        }
        node = next;
      }
      node.match = { key, token };
      empty = false;
    }
    this.isEmpty = empty;
  }

  /** Every match the library's splitter would make, none refused. */
  matches(text: string): AddedTokenMatch[] {
    const found: AddedTokenMatch[] = [];
    this.split(text, (match) => {
      found.push(match);
      return true;
    });
    return found;
  }

  /** Splits `text`; `accept` sees each match in order. `refused` counts the matches it turned down. */
  split(text: string, accept: (match: AddedTokenMatch) => boolean): { pieces: SplitPiece[]; refused: number } {
    const pieces: SplitPiece[] = [];
    let refused = 0;
    let plainStart = 0;
    let i = 0;
    while (i < text.length) {
      const match = this.longestAt(text, i);
      if (match === undefined) {
        i += 1;
        continue;
      }
      const end = i + match.key.length;
      if (!accept({ token: match.token, start: i, end })) {
        refused += 1;
        i = end;
        continue;
      }
      if (i > plainStart) pieces.push({ text: text.slice(plainStart, i), start: plainStart, token: undefined });
      pieces.push({ text: match.key, start: i, token: match.token });
      i = end;
      plainStart = end;
    }
    if (plainStart < text.length) pieces.push({ text: text.slice(plainStart), start: plainStart, token: undefined });
    return { pieces, refused };
  }

  private longestAt(text: string, start: number): TrieNode['match'] {
    let node: TrieNode | undefined = this.root;
    let longest: TrieNode['match'];
    for (let j = start; j < text.length; j += 1) {
      node = node.children.get(text.charAt(j));
      if (node === undefined) break;
      if (node.match !== undefined) longest = node.match;
    }
    return longest;
  }
}

/**
 * The library's lstrip/rstrip: a token that strips on a side trims the whitespace of the neighbouring piece
 * on that side (String.prototype.trim's notion of whitespace, the library's, not Rust's). The library trims a
 * neighbouring token too and then treats what is left as text; so does this.
 */
export function stripAroundTokens(pieces: SplitPiece[]): void {
  pieces.forEach((piece, i) => {
    if (piece.token === undefined) return;
    const before = pieces[i - 1];
    const after = pieces[i + 1];
    if (piece.token.lstrip && before !== undefined) setText(before, before.text.trimEnd(), 0);
    if (piece.token.rstrip && after !== undefined) {
      const trimmed = after.text.trimStart();
      setText(after, trimmed, after.text.length - trimmed.length);
    }
  });
}

function setText(piece: SplitPiece, text: string, removedAtStart: number): void {
  if (text === piece.text) return;
  piece.text = text;
  piece.start += removedAtStart;
  piece.token = undefined;
}
