// OpenAI request bodies, validated with zod. Fields moe-serve cannot honour are rejected by name rather
// than ignored.
import { z } from 'zod';

const stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();
const maxTokens = z.number().int().min(1).max(1_000_000).nullish();
const penalty = z.number().min(-2).max(2).nullish();
const topLogprobs = z.number().int().min(0).max(20).nullish();

const sampling = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.literal(1, { message: 'only n = 1 is supported' }).nullish(),
  stop,
  seed: z.number().int().nullish(),
  presence_penalty: penalty,
  frequency_penalty: penalty,
  user: z.string().nullish(),
};

const streaming = {
  stream: z.boolean().nullish(),
  // Other keys (include_obfuscation, say) change nothing here, so they pass.
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
};

const completionFields = {
  ...sampling,
  prompt: z.union([z.string().min(1, 'the prompt is empty'), z.array(z.string().min(1)).length(1, 'only one prompt per request is supported')]),
  max_tokens: maxTokens,
  /** The legacy API's number of most likely tokens to list per position. */
  logprobs: topLogprobs,
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
