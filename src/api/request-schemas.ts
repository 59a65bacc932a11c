// OpenAI request bodies, validated with zod. Fields moe-serve cannot honour are rejected by name rather
// than ignored.
import { z } from 'zod';

const stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();
const maxTokens = z.number().int().min(1).max(1_000_000).nullish();

const sampling = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.literal(1, { message: 'only n = 1 is supported' }).nullish(),
  stop,
  seed: z.number().int().nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  user: z.string().nullish(),
};

export const completionRequest = z
  .object({
    ...sampling,
    prompt: z.union([z.string().min(1, 'the prompt is empty'), z.array(z.string().min(1)).length(1, 'only one prompt per request is supported')]),
    max_tokens: maxTokens,
  })
  .strict();

const message = z.object({
  role: z.enum(['system', 'user', 'assistant', 'developer']),
  content: z.string(),
  name: z.string().optional(),
});

export const chatCompletionRequest = z
  .object({
    ...sampling,
    messages: z.array(message).min(1, 'messages must not be empty'),
    max_tokens: maxTokens,
    max_completion_tokens: maxTokens,
  })
  .strict();

export type CompletionRequestBody = z.infer<typeof completionRequest>;
export type ChatCompletionRequestBody = z.infer<typeof chatCompletionRequest>;
