// The HTTP and WebSocket API. buildApp makes the fastify app and does not listen, so tests can use it over
// real loopback sockets with any engine; src/cli/serve-command.ts listens.
import cors from '@fastify/cors';
import websocket from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import type { BatchEngine } from '../engine/batch-engine.js';
import type { RoutingObserver } from '../engine/forward.js';
import type { MoeModel } from '../engine/moe-model.js';
import { ApiError, toApiError } from './api-errors.js';
import { registerCompletionRoutes } from './completion-routes.js';
import { ServerMetrics } from './server-metrics.js';
import { registerStreamSocket } from './stream-socket.js';

/** What the routes serve with, once the model is loaded. */
export interface Serving {
  readonly model: MoeModel;
  readonly engine: BatchEngine;
  /** Routing observer for each request (the `--trace` file), if any. */
  readonly observer?: () => RoutingObserver;
}

export interface AppDeps {
  /** The loaded model and its engine; undefined while loading (routes answer 503, /health too). */
  readonly serving: () => Serving | undefined;
  /** The name clients use in `model` (GET /v1/models lists it). */
  readonly modelName: string;
  /** When set, every route but /health and /metrics needs `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Origins allowed by CORS: a list, or true for any. Default: no CORS headers. */
  readonly corsOrigins?: readonly string[] | true;
  /** fastify's request logging (pino, JSON lines on stdout). */
  readonly logger?: boolean;
  /** Largest accepted request body, bytes. */
  readonly bodyLimit?: number;
  /** Called for every route the app registers (the openapi.yaml test compares them). */
  readonly onRoute?: (method: string, url: string) => void;
}

/** What the route modules share: the readiness gate, the metrics and the served model's name. */
export interface RouteContext {
  readonly deps: AppDeps;
  readonly metrics: ServerMetrics;
  /** The model and engine, or a 503 ApiError while the model loads. */
  ready(): Serving;
}

const OPEN_ROUTES = new Set(['/health', '/metrics']);

export function buildApp(deps: AppDeps): FastifyInstance {
  const app = Fastify({ logger: deps.logger ?? false, bodyLimit: deps.bodyLimit ?? 1 << 20 });
  const metrics = new ServerMetrics({ engine: () => deps.serving()?.engine.stats, experts: () => deps.serving()?.model.experts.stats() });
  const ctx: RouteContext = {
    deps,
    metrics,
    ready: () => {
      const s = deps.serving();
      if (!s) throw new ApiError(503, 'server_error', 'the model is still loading; retry shortly', null, 'model_loading', { 'retry-after': '1' });
      return s;
    },
  };

  if (deps.onRoute) {
    const onRoute = deps.onRoute;
    app.addHook('onRoute', (r) => {
      for (const m of [r.method].flat()) if (m !== 'HEAD') onRoute(m, r.url);
    });
  }
  app.setErrorHandler((err, _req, reply) => {
    const e = toApiError(err);
    void reply.code(e.status).headers(e.headers).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send(new ApiError(404, 'not_found_error', `no route ${req.method} ${req.url}`).body());
  });
  if (deps.corsOrigins) void app.register(cors, { origin: deps.corsOrigins === true ? true : [...deps.corsOrigins] });
  if (deps.apiKey) {
    const expected = `Bearer ${deps.apiKey}`;
    app.addHook('onRequest', async (req, reply) => {
      if (OPEN_ROUTES.has(req.routeOptions.url ?? '') || req.method === 'OPTIONS') return;
      if (req.headers.authorization !== expected) {
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

  app.get('/health', async (_req, reply) => (deps.serving() ? { status: 'ok' } : reply.code(503).send({ status: 'loading' })));
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
