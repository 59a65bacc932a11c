// Size checks that run before any tokenizing or template rendering: tokenizing is linear in the input and
// blocks the event loop (a 1,000,000-character prompt took 2.1 s), so a request too long to fit the context
// anyway is refused by its character count. Limits derive from the context length: a token never covers
// more than the vocabulary's longest spelling (TextTokenizer.longestTokenChars), so a prompt of more than
// maxPositions x that many characters cannot fit; the factor 2 leaves room for normalizers that drop
// characters (accents, control characters), so that no prompt that would fit is refused.
import type { MoeModel } from '../engine/moe-model.js';
import { ApiError, badRequest } from './api-errors.js';

/** Each stop string is matched against the generated text at every token; this bounds that work. */
export const MAX_STOP_CHARS = 1024;
/** How much of an unknown model name an error message repeats. */
const MODEL_ECHO_CHARS = 64;

export interface SizedRequest {
  readonly model: string;
  readonly prompt?: string | readonly string[] | readonly number[] | readonly (readonly number[])[];
  readonly messages?: readonly { readonly content: string; readonly name?: string | undefined }[];
  readonly stop?: string | readonly string[] | null;
}

export function promptCharLimit(model: MoeModel): number {
  return 2 * model.spec.maxPositions * model.tokenizer.longestTokenChars;
}

/** Throws a 404 for another model's name, a 400 naming the field when the request cannot fit. */
export function checkInputSizes(model: MoeModel, servedName: string, body: SizedRequest): void {
  if (body.model !== servedName) throw modelNotFound(body.model, servedName);
  const limit = promptCharLimit(model);
  // Each prompt of a list is a request of its own: the longest one must fit. Token-id prompts need no tokenizing.
  const promptChars = typeof body.prompt === 'string' ? body.prompt.length : (body.prompt ?? []).reduce<number>((n, p) => Math.max(n, typeof p === 'string' ? p.length : 0), 0);
  const messageChars = (body.messages ?? []).reduce((n, m) => n + m.content.length + (m.name?.length ?? 0), 0);
  const [param, chars] = body.messages ? ['messages', messageChars] : ['prompt', promptChars];
  if (chars > limit) {
    throw badRequest(`the ${param} has ${chars} characters; no text over ${limit} characters fits this model's context of ${model.spec.maxPositions} tokens`, param, 'context_length_exceeded');
  }
  const stops = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
  for (const s of stops) {
    if (s.length > MAX_STOP_CHARS) throw badRequest(`a stop string has ${s.length} characters; at most ${MAX_STOP_CHARS} are allowed`, 'stop', 'stop_too_long');
  }
}

/** An unknown model name, as much of it as an error message repeats. */
function modelEcho(name: string): string {
  return name.length > MODEL_ECHO_CHARS ? `${name.slice(0, MODEL_ECHO_CHARS)}...` : name;
}

function modelNotFound(name: string, served: string): ApiError {
  return new ApiError(404, 'not_found_error', `model '${modelEcho(name)}' does not exist; this server serves '${served}'`, 'model', 'model_not_found');
}
