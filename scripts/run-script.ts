// The entry point of a script: runs it only when its file is the one node was started with (so that
// make-model can import routing-stats), and turns errors into a message and an exit status as
// `moe-serve` does (reportCommandError).
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { reportCommandError } from '../src/cli/cli-error.js';

export async function runScript(name: string, moduleUrl: string, help: string, main: (argv: readonly string[]) => Promise<void>): Promise<void> {
  const entry = process.argv[1];
  if (entry === undefined || realpathSync(entry) !== realpathSync(fileURLToPath(moduleUrl))) return;
  try {
    await main(process.argv.slice(2));
  } catch (err) {
    process.exitCode = reportCommandError(name, help, err);
  }
}
