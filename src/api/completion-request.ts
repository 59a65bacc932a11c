// From a validated OpenAI body to an engine request: the prompt (rendered with the model's chat template
// for chat), limits and sampling. The HTTP routes and the WebSocket share it, so both accept the same.
import type { CompletionRequest } from '../engine/completion-state.js';
import type { MoeModel } from '../engine/moe-model.js';
import { ChatTemplateRenderError, renderChatTemplate, UntraceableUserTextError } from '../tokenizer/chat-template.js';
import type { Token } from '../tokenizer/token.js';
import { UnsplittableSpecialTokenError } from '../tokenizer/user-span-encoder.js';
import { badRequest } from './api-errors.js';
import { checkInputSizes } from './input-limits.js';
import type { ChatCompletionRequestBody, CompletionRequestBody } from './request-schemas.js';

type CompletionFields = Omit<CompletionRequestBody, 'stream' | 'stream_options'>;
type ChatFields = Omit<ChatCompletionRequestBody, 'stream' | 'stream_options'>;

/** An engine request without its cancellation signal, which the transport adds. */
export type PreparedRequest = Omit<CompletionRequest, 'signal'>;

/** OpenAI's legacy completions default. */
const DEFAULT_COMPLETION_TOKENS = 16;

export function prepareCompletion(model: MoeModel, modelName: string, body: CompletionFields): PreparedRequest {
  checkInputSizes(model, modelName, body);
  const prompt = Array.isArray(body.prompt) ? (body.prompt[0] ?? '') : body.prompt;
  // Special-token text in a raw prompt is the special token (transformers' default): the whole prompt is the
  // client's, so there is no turn of someone else's to forge, and clients rely on writing e.g. <|im_start|>.
  const promptIds = checkedPrompt(model, model.tokenizer.encode(prompt), 'prompt');
  return engineRequest(promptIds, body.max_tokens ?? DEFAULT_COMPLETION_TOKENS, body, body.logprobs ?? undefined);
}

export function prepareChat(model: MoeModel, modelName: string, body: ChatFields): PreparedRequest {
  checkInputSizes(model, modelName, body);
  const template = model.tokenizer.chatTemplate;
  if (!template) throw badRequest(`model '${modelName}' has no chat_template in tokenizer_config.json; use /v1/completions`, 'messages', 'no_chat_template');
  if (body.top_logprobs != null && body.logprobs !== true) throw badRequest('top_logprobs needs logprobs: true', 'top_logprobs', 'invalid_request');
  let encoded: Token[];
  try {
    // Message text that spells a special token is encoded as that text, so that a message cannot forge a turn.
    const rendered = renderChatTemplate(template, body.messages, { add_generation_prompt: true, bos_token: '', eos_token: '' },
      (s) => model.tokenizer.findSpecialTokenText(s));
    encoded = model.tokenizer.encodeWithUserSpans(rendered.text, rendered.userSpans);
  } catch (err) {
    if (err instanceof ChatTemplateRenderError) throw badRequest(err.message, 'messages', 'chat_template_error');
    if (err instanceof UntraceableUserTextError || err instanceof UnsplittableSpecialTokenError) throw badRequest(err.message, 'messages', 'special_token_text');
    throw err;
  }
  const promptIds = checkedPrompt(model, encoded, 'messages');
  // A chat answer may use the rest of the context unless the client limits it.
  const room = model.spec.maxPositions - promptIds.length;
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? room;
  return engineRequest(promptIds, maxTokens, body, body.logprobs === true ? (body.top_logprobs ?? 0) : undefined);
}

function checkedPrompt(model: MoeModel, promptIds: Token[], param: string): Token[] {
  const maxPositions = model.spec.maxPositions;
  if (promptIds.length === 0) throw badRequest('the prompt encodes to zero tokens', param, 'empty_prompt');
  if (promptIds.length >= maxPositions) {
    throw badRequest(`the prompt has ${promptIds.length} tokens; this model's context is ${maxPositions} tokens`, param, 'context_length_exceeded');
  }
  return promptIds;
}

function engineRequest(promptIds: readonly Token[], maxTokens: number, body: CompletionFields | ChatFields, logprobs: number | undefined): PreparedRequest {
  const presence = body.presence_penalty ?? 0;
  const frequency = body.frequency_penalty ?? 0;
  return {
    promptIds,
    maxTokens,
    sampling: { temperature: body.temperature ?? 1, topP: body.top_p ?? 1, topK: 0 },
    seed: body.seed ?? undefined,
    stop: body.stop == null ? [] : Array.isArray(body.stop) ? body.stop : [body.stop],
    penalties: presence === 0 && frequency === 0 ? undefined : { presence, frequency },
    logprobs,
  };
}
