import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { StreamDecoder } from './stream-decoder.js';
import { asToken, asTokens, type Token } from './token.js';
import { UserSpanEncoder, type TextSpan } from './user-span-encoder.js';

export class TokenizerLoadError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`Cannot load the tokenizer from ${path}: ${reason}.`, options);
    this.name = new.target.name;
  }
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

// tokenizer_config.json as parsed. The library reads its own keys from it (e.g. additional_special_tokens).
type TokenizerConfig = Record<string, unknown>;

/** A model's tokenizer, behaving as Hugging Face transformers' `AutoTokenizer` does for the same files. */
export class TextTokenizer {
  /** Every id the tokenizer knows, added tokens included: transformers' `len(tokenizer)`. */
  readonly vocabSize: number;
  /**
   * The longest token's spelling in the vocabulary, in UTF-16 units: byte-level BPE spells each byte as
   * one character and SentencePiece each character as one, so no token covers more input than this.
   */
  readonly longestTokenChars: number;
  readonly chatTemplate: string | undefined;
  // transformers defaults this to false since v4.45; the library defaults it to true, which would turn
  // "a ." into "a." and make decode() disagree with both transformers and the streamed text.
  private readonly cleanUpTokenizationSpaces: boolean;
  private readonly userSpanEncoder: UserSpanEncoder;

  private constructor(
    private readonly tokenizer: Tokenizer,
    config: TokenizerConfig,
  ) {
    const vocab = tokenizer.get_vocab(true);
    this.vocabSize = vocab.size;
    let longest = 1;
    for (const spelling of vocab.keys()) longest = Math.max(longest, spelling.length);
    this.longestTokenChars = longest;
    // Some configs hold a list of named templates instead of one string; those are not supported.
    this.chatTemplate = typeof config['chat_template'] === 'string' ? config['chat_template'] : undefined;
    this.cleanUpTokenizationSpaces = config['clean_up_tokenization_spaces'] === true;
    this.userSpanEncoder = new UserSpanEncoder(tokenizer, config);
  }

  /** Reads `tokenizer.json` and, when present, `tokenizer_config.json` from a Hugging Face model directory. */
  static async fromModelDir(dir: string): Promise<TextTokenizer> {
    const tokenizerPath = path.join(dir, 'tokenizer.json');
    const configPath = path.join(dir, 'tokenizer_config.json');
    const tokenizerJson = await readJsonObject(tokenizerPath);
    if (tokenizerJson === undefined) {
      throw new TokenizerLoadError(tokenizerPath, 'the file does not exist; the model directory must hold the ' +
        "fast tokenizer's tokenizer.json (slow-tokenizer files such as tokenizer.model are not supported)");
    }
    const config = (await readJsonObject(configPath)) ?? {};
    return TextTokenizer.fromJson(tokenizerJson, config, tokenizerPath);
  }

  /** Builds from already parsed files; `source` names them in errors. */
  static fromJson(tokenizerJson: object, config: TokenizerConfig, source = 'tokenizer.json'): TextTokenizer {
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(tokenizerJson, config);
    } catch (error) {
      const detail = error instanceof Error ? error.message : String(error);
      throw new TokenizerLoadError(source, `@huggingface/tokenizers rejected it: ${detail}`, { cause: error });
    }
    return new TextTokenizer(tokenizer, config);
  }

  /** Adds special tokens exactly where the tokenizer.json post-processor says (e.g. a BOS for Llama-style). */
  encode(text: string): Token[] {
    return asTokens(this.tokenizer.encode(text).ids);
  }

  /**
   * Encodes text in which `userSpans` hold a user's text (a chat message's content): special-token text there
   * is encoded as plain text, as transformers' `split_special_tokens=True` does, so that a message cannot
   * forge a turn; special tokens elsewhere (the chat template's markup) stay special tokens. When no special
   * token is touched this is exactly encode(text).
   */
  encodeWithUserSpans(text: string, userSpans: readonly TextSpan[]): Token[] {
    if (userSpans.length === 0) return this.encode(text);
    const { ids, changed } = this.userSpanEncoder.encode(text, userSpans);
    // The library's own encode() where the result is the same, so that ordinary chats keep exactly its ids.
    return changed ? asTokens(ids) : this.encode(text);
  }

  /** Where special-token text (a special added token's content) occurs in `text`. */
  findSpecialTokenText(text: string): TextSpan[] {
    return this.userSpanEncoder.specialTokenText(text);
  }

  /** Ids the tokenizer does not know (e.g. padding rows of the lm_head) decode to nothing, as in transformers. */
  decode(ids: readonly Token[], opts: DecodeOptions = {}): string {
    return this.decodeWith(ids, opts.skipSpecialTokens ?? false, this.cleanUpTokenizationSpaces);
  }

  tokenToId(s: string): Token | undefined {
    const id = this.tokenizer.token_to_id(s);
    return id === undefined ? undefined : asToken(id);
  }

  /**
   * Never cleans up tokenization spaces, whatever the config says: the clean-up rewrites text across token
   * boundaries and so cannot be streamed. vLLM streams the same way.
   */
  createStreamDecoder(opts: DecodeOptions = {}): StreamDecoder {
    const skipSpecialTokens = opts.skipSpecialTokens ?? false;
    return new StreamDecoder((ids) => this.decodeWith(ids, skipSpecialTokens, false));
  }

  private decodeWith(ids: readonly Token[], skipSpecialTokens: boolean, cleanUp: boolean): string {
    // The library would decode an unknown id as the unknown token, where Hugging Face's Rust tokenizers skip it.
    const known = ids.filter((id) => this.tokenizer.id_to_token(id) !== undefined);
    // The library throws on an empty list instead of returning ''.
    if (known.length === 0) return '';
    return this.tokenizer.decode(known, {
      skip_special_tokens: skipSpecialTokens,
      clean_up_tokenization_spaces: cleanUp,
    });
  }
}

// undefined when the file does not exist; throws TokenizerLoadError when it exists but is not a JSON object.
async function readJsonObject(filePath: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(filePath, 'utf8');
  } catch (error) {
    if (error instanceof Error && 'code' in error && error.code === 'ENOENT') return undefined;
    const detail = error instanceof Error ? error.message : String(error);
    throw new TokenizerLoadError(filePath, `the file cannot be read (${detail})`, { cause: error });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new TokenizerLoadError(filePath, `the file is not valid JSON (${detail})`, { cause: error });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TokenizerLoadError(filePath, 'the file holds JSON but not an object');
  }
  return value as Record<string, unknown>;
}
