// response_format for the API: one grammar compiler per loaded model, made on first use. The grammar
// engine (a WASM module) is imported then too: most servers never need it, and it costs start-up time.
import type { MoeModel } from '../engine/moe-model.js';
import type { ConstraintSource } from '../engine/token-constraint.js';
import type { JsonConstraintCompiler } from '../engine/json-constraint.js';
import { badRequest } from './api-errors.js';
import type { ResponseFormats } from './completion-request.js';
import type { ResponseFormatBody } from './request-schemas.js';

export function jsonResponseFormats(): ResponseFormats {
  const compilers = new WeakMap<MoeModel, Promise<JsonConstraintCompiler>>();
  const compilerFor = (model: MoeModel): Promise<JsonConstraintCompiler> => {
    let compiler = compilers.get(model);
    if (!compiler) {
      compiler = import('../engine/json-constraint.js').then((m) => m.JsonConstraintCompiler.fromModelDir(model.dir, model.spec.vocabSize, model.eosTokenIds));
      // A compiler that failed to build is not kept: the next request tries again.
      compiler.catch(() => compilers.delete(model));
      compilers.set(model, compiler);
    }
    return compiler;
  };
  return {
    async compile(model: MoeModel, format: ResponseFormatBody): Promise<ConstraintSource | null> {
      if (format.type === 'text') return null;
      const { ResponseFormatError } = await import('../engine/json-constraint.js');
      try {
        return await (await compilerFor(model)).compile(format);
      } catch (err) {
        if (err instanceof ResponseFormatError) throw badRequest(err.message, 'response_format', err.code);
        throw err;
      }
    },
  };
}
