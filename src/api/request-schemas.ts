// OpenAI request bodies, validated with zod. Fields moe-serve cannot honour are rejected by name rather
// than ignored.
import { z } from 'zod';
import { MAX_CHOICES, MAX_LOGIT_BIAS } from '../engine/request-rules.js';

const stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();
const maxTokens = z.number().int().min(1).max(1_000_000).nullish();
/** Legacy completions may ask for 0 tokens with echo: the prompt scored, nothing generated. */
const completionMaxTokens = z.number().int().min(0).max(1_000_000).nullish();
const penalty = z.number().min(-2).max(2).nullish();
const topLogprobs = z.number().int().min(0).max(20).nullish();

/** OpenAI's response_format; json_schema's schema is compiled (and checked) by the grammar engine. */
const responseFormat = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text') }).strict(),
  z.object({ type: z.literal('json_object') }).strict(),
  z
    .object({
      type: z.literal('json_schema'),
      json_schema: z
        .object({
          name: z.string().min(1).max(64),
          description: z.string().nullish(),
          schema: z.record(z.string(), z.unknown()).nullish(),
          strict: z.boolean().nullish(),
        })
        .strict(),
    })
    .strict(),
]);
export type ResponseFormatBody = z.infer<typeof responseFormat>;

/** More than this many prompts in one request is refused (each becomes n sequences). */
export const MAX_PROMPTS = 64;
const MAX_LOGIT_BIAS_ENTRIES = 1024;
const tokenIds = z.array(z.number().int().min(0)).min(1, 'a token-id prompt is empty');

const sampling = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.number().int().min(1).max(MAX_CHOICES).nullish(),
  stop,
  seed: z.number().int().nullish(),
  presence_penalty: penalty,
  frequency_penalty: penalty,
  // Token ids (as JSON object keys) to a bias in [-100, 100], as OpenAI documents it.
  logit_bias: z
    .record(z.string().regex(/^\d{1,9}$/, 'logit_bias keys are token ids'), z.number().min(-MAX_LOGIT_BIAS).max(MAX_LOGIT_BIAS))
    .refine((r) => Object.keys(r).length <= MAX_LOGIT_BIAS_ENTRIES, `at most ${MAX_LOGIT_BIAS_ENTRIES} logit_bias entries`)
    .nullish(),
  response_format: responseFormat.nullish(),
  /** vLLM's extension: generate past end-of-sequence tokens (benchmarks: exactly max_tokens every time). */
  ignore_eos: z.boolean().nullish(),
  user: z.string().nullish(),
};

const streaming = {
  stream: z.boolean().nullish(),
  // Other keys (include_obfuscation, say) change nothing here, so they pass.
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
};

const completionFields = {
  ...sampling,
  // A string, a list of strings, a list of token ids, or a list of those: one completion (x n) per prompt.
  prompt: z.union([
    z.string().min(1, 'the prompt is empty'),
    z.array(z.string().min(1, 'a prompt is empty')).min(1, 'the prompt list is empty').max(MAX_PROMPTS),
    tokenIds,
    z.array(tokenIds).min(1, 'the prompt list is empty').max(MAX_PROMPTS),
  ]),
  max_tokens: completionMaxTokens,
  /** The legacy API's number of most likely tokens to list per position. */
  logprobs: topLogprobs,
  /** Return the prompt before the completion (with logprobs: the prompt tokens' too, the first null). */
  echo: z.boolean().nullish(),
};

const message = z.object({
  role: z.enum(['system', 'user', 'assistant', 'developer']),
  content: z.string(),
  name: z.string().optional(),
});

const chatFields = {
  ...sampling,
  messages: z.array(message).min(1, 'messages must not be empty'),
  max_tokens: maxTokens,
  max_completion_tokens: maxTokens,
  logprobs: z.boolean().nullish(),
  top_logprobs: topLogprobs,
};

export const completionRequest = z.object({ ...completionFields, ...streaming }).strict();
export const chatCompletionRequest = z.object({ ...chatFields, ...streaming }).strict();

export type CompletionRequestBody = z.infer<typeof completionRequest>;
export type ChatCompletionRequestBody = z.infer<typeof chatCompletionRequest>;

/** WebSocket /v1/stream messages from the client: always streamed, so without stream/stream_options. */
const socketId = z.string().min(1).max(128);
export const socketMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('completion'), id: socketId, ...completionFields }).strict(),
  z.object({ type: z.literal('chat'), id: socketId, ...chatFields }).strict(),
  z.object({ type: z.literal('cancel'), id: socketId }).strict(),
]);
export type SocketMessage = z.infer<typeof socketMessage>;
