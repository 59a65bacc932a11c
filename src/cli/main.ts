#!/usr/bin/env node
// moe-serve's command line: dispatches to one command per module.
import { benchCommand, BENCH_HELP } from './bench-command.js';
import { reportCommandError } from './cli-error.js';
import { generateCommand, GENERATE_HELP } from './generate-command.js';
import { quantizeCommand, QUANTIZE_HELP } from './quantize-command.js';
import { replayCommand, REPLAY_HELP } from './replay-command.js';
import { routeStudyCommand, ROUTE_STUDY_HELP } from './route-study-command.js';
import { serveCommand, SERVE_HELP } from './serve-command.js';

const USAGE = `Usage: moe-serve <command> [options]

Commands:
  serve      the OpenAI-compatible HTTP server (moe-serve serve --help)
  generate   generate text from a prompt (moe-serve generate --help)
  quantize   write a checkpoint with int8/int4/f16 weights that loads without converting (moe-serve quantize --help)
  bench      measure speed (moe-serve bench --help)
  replay     replay a routing trace against expert-cache policies and budgets (moe-serve replay --help)
  route-study  simulate routing a trace's requests across replicas by affinity or load (moe-serve route-study --help)
`;

const commands: Record<string, { run: (argv: readonly string[]) => Promise<void>; help: string }> = {
  serve: { run: serveCommand, help: SERVE_HELP },
  generate: { run: generateCommand, help: GENERATE_HELP },
  quantize: { run: quantizeCommand, help: QUANTIZE_HELP },
  bench: { run: benchCommand, help: BENCH_HELP },
  replay: { run: replayCommand, help: REPLAY_HELP },
  'route-study': { run: routeStudyCommand, help: ROUTE_STUDY_HELP },
};

async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`moe-serve: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (err) {
    return reportCommandError(`moe-serve ${name}`, command.help, err);
  }
}

process.exitCode = await main(process.argv.slice(2));
