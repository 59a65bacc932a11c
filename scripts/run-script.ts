// The entry point of a script: runs it only when its file is the one node was started with (so that
// make-model can import routing-stats), and turns errors into a message and an exit status, no stack
// trace: 2 for a wrong command line (with the usage text), 1 for anything else.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../src/cli/cli-error.js';

export async function runScript(name: string, moduleUrl: string, help: string, main: (argv: readonly string[]) => Promise<void>): Promise<void> {
  const entry = process.argv[1];
  if (entry === undefined || realpathSync(entry) !== realpathSync(fileURLToPath(moduleUrl))) return;
  try {
    await main(process.argv.slice(2));
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
      process.stderr.write(`${name}: ${(err as Error).message}\n\n${help}`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`${name}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}
