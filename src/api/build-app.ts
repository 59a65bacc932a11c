// The HTTP and WebSocket API. buildApp makes the fastify app and does not listen, so tests can use it over
// real loopback sockets with any engine; src/cli/serve-command.ts listens.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import cors from '@fastify/cors';
import websocket from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import type { BatchEngine } from '../engine/batch-engine.js';
import type { RoutingObserver } from '../engine/forward.js';
import type { MoeModel } from '../engine/moe-model.js';
import { ApiError, isInternal, toApiError } from './api-errors.js';
import type { ResponseFormats } from './completion-request.js';
import { registerCompletionRoutes } from './completion-routes.js';
import { jsonResponseFormats } from './response-formats.js';
import { InFlight } from './graceful-shutdown.js';
import { DEFAULT_CLIENT_LIMITS, type ClientLimits } from './output-watch.js';
import { ServerMetrics } from './server-metrics.js';
import { registerStreamSocket } from './stream-socket.js';

/** What the routes serve with, once the model is loaded. */
export interface Serving {
  readonly model: MoeModel;
  readonly engine: BatchEngine;
  /** Routing observer for each request, given its prompt's token ids (the `--trace` file), if any. */
  readonly observer?: (promptIds: readonly number[]) => RoutingObserver;
  /** Problems that do not stop serving (a trace file that could not be written, say), for /health. */
  readonly warnings?: () => readonly string[];
}

export interface AppDeps {
  /** The loaded model and its engine; undefined while loading (routes answer 503, /health too). */
  readonly serving: () => Serving | undefined;
  /** The name clients use in `model` (GET /v1/models lists it). */
  readonly modelName: string;
  /** When set, every route but /health and /metrics needs `Authorization: Bearer <apiKey>`; never empty. */
  readonly apiKey?: string;
  /** Origins allowed by CORS: a list, or true for any. Default: no CORS headers. */
  readonly corsOrigins?: readonly string[] | true;
  /** fastify's request logging (pino, JSON lines on stdout). */
  readonly logger?: boolean;
  /** Largest accepted request body, bytes. */
  readonly bodyLimit?: number;
  /** Per-connection output and request limits (output-watch.ts); defaults DEFAULT_CLIENT_LIMITS. */
  readonly clientLimits?: ClientLimits;
  /** The answers being written, for a graceful shutdown to wait on (graceful-shutdown.ts). */
  readonly inFlight?: InFlight;
  /** True once shutdown has begun: new requests get 503, /health says 'draining'. */
  readonly draining?: () => boolean;
  /** Called for every route the app registers (the openapi.yaml test compares them). */
  readonly onRoute?: (method: string, url: string) => void;
  /** How response_format is compiled; default the JSON grammar engine (response-formats.ts). */
  readonly responseFormats?: ResponseFormats;
}

/** What the route modules share: the readiness gate, the metrics and the served model's name. */
export interface RouteContext {
  readonly deps: AppDeps;
  readonly metrics: ServerMetrics;
  readonly clientLimits: ClientLimits;
  readonly inFlight: InFlight;
  readonly formats: ResponseFormats;
  /** The model and engine, or a 503 ApiError while the model loads or the server shuts down. */
  ready(): Serving;
  /** The API error for `err`; an internal one is logged with its details under the request id. */
  errorFor(err: unknown, requestId: string): ApiError;
}

/** An API key that is empty (or blank) would let every client in while looking like protection. */
export class EmptyApiKeyError extends Error {
  constructor() {
    super('the API key is empty: give a non-empty --api-key, or leave it out to serve without authentication');
    this.name = 'EmptyApiKeyError';
  }
}

const OPEN_ROUTES = new Set(['/health', '/metrics']);

export function buildApp(deps: AppDeps): FastifyInstance {
  if (deps.apiKey !== undefined && deps.apiKey.trim() === '') throw new EmptyApiKeyError();
  const app = Fastify({ logger: deps.logger ?? false, bodyLimit: deps.bodyLimit ?? 1 << 20, genReqId: () => `req-${randomUUID()}` });
  const metrics = new ServerMetrics({ engine: () => deps.serving()?.engine.stats, experts: () => deps.serving()?.model.experts.stats(), modelName: deps.modelName });
  const ctx: RouteContext = {
    deps,
    metrics,
    clientLimits: deps.clientLimits ?? DEFAULT_CLIENT_LIMITS,
    inFlight: deps.inFlight ?? new InFlight(),
    formats: deps.responseFormats ?? jsonResponseFormats(),
    ready: () => {
      if (deps.draining?.()) throw new ApiError(503, 'server_error', 'the server is shutting down; retry on another instance', null, 'shutting_down', { 'retry-after': '1' });
      const s = deps.serving();
      if (!s) throw new ApiError(503, 'server_error', 'the model is still loading; retry shortly', null, 'model_loading', { 'retry-after': '1' });
      return s;
    },
    errorFor: (err, requestId) => {
      const e = toApiError(err, requestId);
      if (isInternal(e)) logInternal(deps.logger === true ? app : null, err, requestId);
      return e;
    },
  };

  if (deps.onRoute) {
    const onRoute = deps.onRoute;
    app.addHook('onRoute', (r) => {
      for (const m of [r.method].flat()) if (m !== 'HEAD') onRoute(m, r.url);
    });
  }
  app.setErrorHandler((err, req, reply) => {
    const e = ctx.errorFor(err, req.id);
    void reply.code(e.status).headers(e.headers).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new ApiError(404, 'not_found_error', `no route ${req.method} ${req.url}`).body());
  });
  if (deps.corsOrigins) void app.register(cors, { origin: deps.corsOrigins === true ? true : [...deps.corsOrigins] });
  if (deps.apiKey !== undefined) {
    const matches = keyMatcher(`Bearer ${deps.apiKey}`);
    app.addHook('onRequest', async (req, reply) => {
      if (OPEN_ROUTES.has(req.routeOptions.url ?? '') || req.method === 'OPTIONS') return;
      if (!matches(req.headers.authorization)) {
        // A refused WebSocket upgrade runs before @fastify/websocket's own hooks, which would close its
        // socket; left open, it would keep the server from ever closing.
        if (req.headers.upgrade) reply.raw.once('finish', () => req.raw.socket.destroy());
        throw new ApiError(401, 'authentication_error', 'missing or wrong API key: send Authorization: Bearer <key>', null, 'invalid_api_key');
      }
    });
  }
  // Also called for hijacked (SSE) replies when they end; WebSocket requests count themselves.
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url;
    if (route !== undefined && route !== '/metrics') metrics.countRequest(route, reply.statusCode);
  });

  app.get('/health', async (_req, reply) => {
    const h = health(deps);
    return reply.code(h.status === 'ok' ? 200 : 503).send(h);
  });
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  app.get('/v1/experts', async () => ctx.ready().model.experts.stats());
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: deps.modelName, object: 'model', created: 0, owned_by: 'moe-serve' }],
  }));
  registerCompletionRoutes(app, ctx);
  void app.register(websocket, { options: { maxPayload: deps.bodyLimit ?? 1 << 20 } });
  void app.register(async (scope) => registerStreamSocket(scope, ctx));
  return app;
}

/**
 * What /health answers: 'loading' until the model is loaded, 'draining' once shutdown began, 'failing'
 * while the engine keeps failing (BatchEngine.health says when that is), else 'ok'; warnings travel with
 * any of them.
 */
function health(deps: AppDeps): { status: 'ok' | 'loading' | 'draining' | 'failing'; reason?: string; warnings?: readonly string[] } {
  const s = deps.serving();
  if (!s) return { status: 'loading' };
  const warnings = s.warnings?.() ?? [];
  const extra = warnings.length > 0 ? { warnings } : {};
  if (deps.draining?.()) return { status: 'draining', reason: 'the server is shutting down', ...extra };
  const engine = s.engine.health;
  if (engine.failing) return { status: 'failing', reason: engine.reason, ...extra };
  return { status: 'ok', ...extra };
}

/** Compares in time independent of where the strings differ (hashing first makes the lengths equal too). */
function keyMatcher(expected: string): (given: string | undefined) => boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const want = digest(expected);
  return (given) => given !== undefined && timingSafeEqual(digest(given), want);
}

/** Internal errors reach the operator: in the request log when there is one, else on stderr. */
function logInternal(app: FastifyInstance | null, err: unknown, requestId: string): void {
  if (app) {
    app.log.error({ reqId: requestId, err }, 'internal error');
    return;
  }
  const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`moe-serve: internal error in request ${requestId}: ${detail}\n`);
}
