// The error catalogue of the HTTP API: every failure leaves as an OpenAI-shaped body
//   {"error": {"message", "type", "param", "code"}}
// with the status a client of the OpenAI API expects.
import { ContextLengthError } from '../engine/kv-cache.js';
import { EmptyPromptError, RequestFieldError } from '../engine/request-rules.js';
import { KvBudgetError, QueueFullError } from '../scheduler/scheduler.js';

export type OpenAiErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'rate_limit_error' | 'server_error';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: OpenAiErrorType,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  body(): { error: { message: string; type: OpenAiErrorType; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) => new ApiError(400, 'invalid_request_error', message, param, code);

/**
 * Turns what the engine throws into the API's errors. Anything else is a fault of ours, not the client's:
 * a 500 whose body says only "internal error" and the request id (paths, tensor names and shapes stay out
 * of answers); `isInternal` tells the caller to log the details under that id.
 */
export function toApiError(err: unknown, requestId: string): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof QueueFullError) {
    return new ApiError(429, 'rate_limit_error', err.message, null, err.code, { 'retry-after': String(err.retryAfterSeconds) });
  }
  if (err instanceof ContextLengthError) return badRequest(err.message, null, err.code);
  if (err instanceof KvBudgetError) return badRequest(err.message, 'max_tokens', err.code);
  if (err instanceof EmptyPromptError) return badRequest(err.message, 'prompt', err.code);
  if (err instanceof RequestFieldError) return badRequest(err.message, err.param, err.code);
  const fastifyCode = (err as { code?: unknown; statusCode?: unknown }).code;
  const statusCode = (err as { statusCode?: unknown }).statusCode;
  if (fastifyCode === 'FST_ERR_CTP_BODY_TOO_LARGE') return new ApiError(413, 'invalid_request_error', 'request body too large', null, 'body_too_large');
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return badRequest((err as Error).message, null, typeof fastifyCode === 'string' ? fastifyCode : null);
  }
  return new ApiError(500, 'server_error', `internal error (request id ${requestId})`, null, 'internal_error', { 'x-request-id': requestId });
}

export function isInternal(e: ApiError): boolean {
  return e.status >= 500 && e.code === 'internal_error';
}
