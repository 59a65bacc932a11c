// From a validated OpenAI body to an engine request: the prompt (rendered with the model's chat template
// for chat), limits and sampling. The HTTP routes and the WebSocket share it, so both accept the same.
import { Template } from '@huggingface/jinja';
import type { CompletionRequest } from '../engine/completion-state.js';
import type { MoeModel } from '../engine/moe-model.js';
import type { Token } from '../tokenizer/token.js';
import { ApiError, badRequest } from './api-errors.js';
import type { ChatCompletionRequestBody, CompletionRequestBody } from './request-schemas.js';

type CompletionFields = Omit<CompletionRequestBody, 'stream' | 'stream_options'>;
type ChatFields = Omit<ChatCompletionRequestBody, 'stream' | 'stream_options'>;

/** An engine request without its cancellation signal, which the transport adds. */
export type PreparedRequest = Omit<CompletionRequest, 'signal'>;

/** OpenAI's legacy completions default. */
const DEFAULT_COMPLETION_TOKENS = 16;

export function prepareCompletion(model: MoeModel, modelName: string, body: CompletionFields): PreparedRequest {
  checkModel(body.model, modelName);
  const prompt = Array.isArray(body.prompt) ? (body.prompt[0] ?? '') : body.prompt;
  const promptIds = checkedPrompt(model, model.tokenizer.encode(prompt), 'prompt');
  return engineRequest(promptIds, body.max_tokens ?? DEFAULT_COMPLETION_TOKENS, body, body.logprobs ?? undefined);
}

export function prepareChat(model: MoeModel, modelName: string, body: ChatFields): PreparedRequest {
  checkModel(body.model, modelName);
  const template = model.tokenizer.chatTemplate;
  if (!template) throw badRequest(`model '${modelName}' has no chat_template in tokenizer_config.json; use /v1/completions`, 'messages', 'no_chat_template');
  if (body.top_logprobs != null && body.logprobs !== true) throw badRequest('top_logprobs needs logprobs: true', 'top_logprobs', 'invalid_request');
  let text: string;
  try {
    text = new Template(template).render({ messages: body.messages, add_generation_prompt: true, bos_token: '', eos_token: '' });
  } catch (err) {
    throw badRequest(`the chat template failed on these messages: ${(err as Error).message}`, 'messages', 'chat_template_error');
  }
  const promptIds = checkedPrompt(model, model.tokenizer.encode(text), 'messages');
  // A chat answer may use the rest of the context unless the client limits it.
  const room = model.spec.maxPositions - promptIds.length;
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? room;
  return engineRequest(promptIds, maxTokens, body, body.logprobs === true ? (body.top_logprobs ?? 0) : undefined);
}

function checkModel(name: string, served: string): void {
  if (name !== served) throw new ApiError(404, 'not_found_error', `model '${name}' does not exist; this server serves '${served}'`, 'model', 'model_not_found');
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
