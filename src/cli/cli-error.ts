/** A problem with the command line itself; main prints it with usage help and exits with status 2. */
export class UsageError extends Error {
  readonly code = 'usage';

  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * Reports a command's error on stderr as `label: message`, without a stack trace, and returns the exit
 * status: 2 with the usage text for a wrong command line (a UsageError, or parseArgs' ERR_PARSE_ARGS_*
 * for unknown or malformed flags), 1 for anything else.
 */
export function reportCommandError(label: string, help: string, err: unknown): number {
  const code = (err as { code?: unknown }).code;
  if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
    process.stderr.write(`${label}: ${(err as Error).message}\n\n${help}`);
    return 2;
  }
  process.stderr.write(`${label}: ${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}
