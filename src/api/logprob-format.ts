// Token log-probabilities in the two shapes of the OpenAI API: the legacy completions object and the chat
// `logprobs.content` list. Token strings are each token decoded alone, as OpenAI and vLLM report them.
import type { TokenLogprob } from '../engine/logit-processing.js';
import type { Token } from '../tokenizer/token.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';

/** A prompt's first token, which nothing before it predicts: OpenAI and vLLM give it null logprobs. */
export interface UnscoredToken {
  readonly token: Token;
  readonly logprob: null;
  readonly top: null;
}

/** An echoed prompt's tokens with their logprobs (the engine's promptLogprobs: one per token, the first null). */
export function promptTokenLogprobs(promptIds: readonly Token[], lps: readonly (TokenLogprob | null)[]): (TokenLogprob | UnscoredToken)[] {
  return promptIds.map((token, i) => lps[i] ?? { token, logprob: null, top: null });
}

/** /v1/completions: parallel lists; top_logprobs maps token text to logprob (the sampled token included, as vLLM does). */
export function legacyLogprobs(tokenizer: TextTokenizer, lps: readonly (TokenLogprob | UnscoredToken)[], textOffset: number) {
  const tokens: string[] = [];
  const tokenLogprobs: (number | null)[] = [];
  const topLogprobs: (Record<string, number> | null)[] = [];
  const offsets: number[] = [];
  let offset = textOffset;
  for (const lp of lps) {
    const text = tokenText(tokenizer, lp.token);
    tokens.push(text);
    tokenLogprobs.push(lp.logprob);
    if (lp.top === null) {
      topLogprobs.push(null);
    } else {
      const top: Record<string, number> = { [text]: lp.logprob as number };
      for (const t of lp.top) top[tokenText(tokenizer, t.token)] ??= t.logprob;
      topLogprobs.push(top);
    }
    offsets.push(offset);
    offset += text.length;
  }
  return { tokens, token_logprobs: tokenLogprobs, top_logprobs: topLogprobs, text_offset: offsets };
}

/** /v1/chat/completions: one entry per token with its UTF-8 bytes and the most likely alternatives. */
export function chatLogprobs(tokenizer: TextTokenizer, lps: readonly TokenLogprob[]) {
  const entry = (token: Token, logprob: number) => {
    const text = tokenText(tokenizer, token);
    return { token: text, logprob, bytes: [...Buffer.from(text, 'utf8')] };
  };
  return {
    content: lps.map((lp) => ({ ...entry(lp.token, lp.logprob), top_logprobs: lp.top.map((t) => entry(t.token, t.logprob)) })),
  };
}

function tokenText(tokenizer: TextTokenizer, token: Token): string {
  return tokenizer.decode([token]);
}
