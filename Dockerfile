# moe-serve: the OpenAI-compatible server on the embedded tiny-moe model, port 8000.
#   docker build -t moe-serve . && docker run -p 8000:8000 moe-serve
# Build stage: the README's install command (npm ci, whose prepare script compiles TypeScript).
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc tsconfig.json ./
COPY src ./src
COPY test ./test
COPY load-tests ./load-tests
COPY scripts ./scripts
RUN npm ci && npm prune --omit=dev

# Runtime stage: compiled code, production dependencies and the model, as a non-root user.
FROM node:20-bookworm-slim
WORKDIR /app
# Settings as MOE_SERVE_* variables (see `moe-serve serve --help`), so `docker run -e` can change any of them.
ENV NODE_ENV=production MOE_SERVE_HOST=0.0.0.0 MOE_SERVE_PORT=8000
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY models ./models
USER node
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:' + (process.env.MOE_SERVE_PORT || 8000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
CMD ["node", "dist/src/cli/main.js", "serve"]
