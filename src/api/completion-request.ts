// From a validated OpenAI body to engine requests: the prompts (rendered with the model's chat template for
// chat), n, limits, sampling, logit bias and the response format's grammar. The HTTP routes and the
// WebSocket share it, so both accept the same. The rules themselves are the engine's (request-rules.ts);
// they are checked here too so that a list of prompts is refused whole, before any of it runs.
import type { CompletionRequest } from '../engine/completion-state.js';
import { ContextLengthError } from '../engine/kv-cache.js';
import type { MoeModel } from '../engine/moe-model.js';
import { checkRequest, EmptyPromptError } from '../engine/request-rules.js';
import type { ConstraintSource } from '../engine/token-constraint.js';
import { ChatTemplateRenderError, renderChatTemplate, UntraceableUserTextError } from '../tokenizer/chat-template.js';
import { asTokens, type Token } from '../tokenizer/token.js';
import { UnsplittableSpecialTokenError } from '../tokenizer/user-span-encoder.js';
import { badRequest } from './api-errors.js';
import { checkInputSizes } from './input-limits.js';
import type { ChatCompletionRequestBody, CompletionRequestBody, ResponseFormatBody } from './request-schemas.js';

type CompletionFields = Omit<CompletionRequestBody, 'stream' | 'stream_options'>;
type ChatFields = Omit<ChatCompletionRequestBody, 'stream' | 'stream_options'>;

export interface PreparedPrompt {
  readonly promptIds: readonly Token[];
  /** What echo returns: the prompt as sent (a token-id prompt decoded). */
  readonly text: string;
}

/** One API request: its prompts, each generated n times, and the engine request around them. */
export interface PreparedRequest {
  readonly prompts: readonly PreparedPrompt[];
  readonly n: number;
  readonly echo: boolean;
  /** The engine request but its prompt, and the cancellation signal the transport adds. */
  readonly request: Omit<CompletionRequest, 'signal' | 'promptIds'>;
}

/** Compiles a response_format into a grammar for the engine; null for plain text. */
export interface ResponseFormats {
  compile(model: MoeModel, format: ResponseFormatBody): Promise<ConstraintSource | null>;
}

/** OpenAI's legacy completions default. */
const DEFAULT_COMPLETION_TOKENS = 16;

export async function prepareCompletion(model: MoeModel, modelName: string, body: CompletionFields, formats: ResponseFormats): Promise<PreparedRequest> {
  checkInputSizes(model, modelName, body);
  const maxTokens = body.max_tokens ?? DEFAULT_COMPLETION_TOKENS;
  if (maxTokens === 0 && body.echo !== true) throw badRequest('max_tokens is 0: nothing to generate (0 is for scoring a prompt, with echo: true)', 'max_tokens', 'invalid_request');
  const prompts = promptList(body.prompt).map((p) =>
    // Special-token text in a raw prompt is the special token (transformers' default): the whole prompt is the
    // client's, so there is no turn of someone else's to forge, and clients rely on writing e.g. <|im_start|>.
    typeof p === 'string' ? { promptIds: model.tokenizer.encode(p), text: p } : { promptIds: asTokens(p) },
  );
  const echoLogprobs = body.echo === true && body.logprobs != null ? body.logprobs : undefined;
  return prepared(model, prompts, maxTokens, body, body.logprobs ?? undefined, echoLogprobs, 'prompt', formats);
}

export async function prepareChat(model: MoeModel, modelName: string, body: ChatFields, formats: ResponseFormats): Promise<PreparedRequest> {
  checkInputSizes(model, modelName, body);
  const template = model.tokenizer.chatTemplate;
  if (!template) throw badRequest(`model '${modelName}' has no chat_template in tokenizer_config.json; use /v1/completions`, 'messages', 'no_chat_template');
  if (body.top_logprobs != null && body.logprobs !== true) throw badRequest('top_logprobs needs logprobs: true', 'top_logprobs', 'invalid_request');
  let encoded: Token[];
  let text: string;
  try {
    // Message text that spells a special token is encoded as that text, so that a message cannot forge a turn.
    const rendered = renderChatTemplate(template, body.messages, { add_generation_prompt: true, bos_token: '', eos_token: '' },
      (s) => model.tokenizer.findSpecialTokenText(s));
    encoded = model.tokenizer.encodeWithUserSpans(rendered.text, rendered.userSpans);
    text = rendered.text;
  } catch (err) {
    if (err instanceof ChatTemplateRenderError) throw badRequest(err.message, 'messages', 'chat_template_error');
    if (err instanceof UntraceableUserTextError || err instanceof UnsplittableSpecialTokenError) throw badRequest(err.message, 'messages', 'special_token_text');
    throw err;
  }
  // A chat answer may use the rest of the context unless the client limits it.
  const room = Math.max(1, model.spec.maxPositions - encoded.length);
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? room;
  return prepared(model, [{ promptIds: encoded, text }], maxTokens, body, body.logprobs === true ? (body.top_logprobs ?? 0) : undefined, undefined, 'messages', formats);
}

function promptList(prompt: CompletionFields['prompt']): (string | readonly number[])[] {
  if (typeof prompt === 'string') return [prompt];
  if (prompt.length > 0 && typeof prompt[0] === 'number') return [prompt as number[]];
  return prompt as (string | number[])[];
}

async function prepared(
  model: MoeModel,
  prompts: readonly { readonly promptIds: readonly Token[]; readonly text?: string }[],
  maxTokens: number,
  body: CompletionFields | ChatFields,
  logprobs: number | undefined,
  promptLogprobs: number | undefined,
  promptParam: string,
  formats: ResponseFormats,
): Promise<PreparedRequest> {
  const n = body.n ?? 1;
  const logitBias = body.logit_bias ? new Map(Object.entries(body.logit_bias).map(([t, b]) => [Number(t), b])) : undefined;
  for (const { promptIds } of prompts) {
    try {
      checkRequest({ promptIds, maxTokens, logitBias, promptLogprobs }, n, model.spec);
    } catch (err) {
      if (err instanceof EmptyPromptError) throw badRequest('the prompt encodes to zero tokens', promptParam, err.code);
      if (err instanceof ContextLengthError) {
        throw badRequest(`the prompt has ${promptIds.length} tokens; this model's context is ${err.maxPositions} tokens`, promptParam, err.code);
      }
      throw err;
    }
  }
  const constraint = body.response_format ? await formats.compile(model, body.response_format) : null;
  // Only now are a token-id prompt's ids known to be in the vocabulary, so it can be decoded.
  const withText = prompts.map((p): PreparedPrompt => ({ promptIds: p.promptIds, text: p.text ?? model.tokenizer.decode(p.promptIds) }));
  const presence = body.presence_penalty ?? 0;
  const frequency = body.frequency_penalty ?? 0;
  return {
    prompts: withText,
    n,
    echo: 'echo' in body && body.echo === true,
    request: {
      maxTokens,
      sampling: { temperature: body.temperature ?? 1, topP: body.top_p ?? 1, topK: 0 },
      seed: body.seed ?? undefined,
      stop: body.stop == null ? [] : Array.isArray(body.stop) ? body.stop : [body.stop],
      penalties: presence === 0 && frequency === 0 ? undefined : { presence, frequency },
      logprobs,
      promptLogprobs,
      logitBias,
      constraint: constraint ?? undefined,
      ignoreEos: body.ignore_eos ?? undefined,
    },
  };
}
