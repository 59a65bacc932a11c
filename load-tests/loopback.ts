// The load tests only ever target this machine: a load generator pointed elsewhere is an attack.

export class NonLoopbackTargetError extends Error {
  readonly code = 'non_loopback_target';

  constructor(readonly url: string) {
    super(`refusing to send load to ${url}: the load tests only target 127.0.0.1 or [::1]`);
    this.name = 'NonLoopbackTargetError';
  }
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]']);

/** Returns the URL when its host is 127.0.0.1 or ::1 (literally: no name is resolved); throws otherwise. */
export function assertLoopback(url: string | URL): URL {
  const u = new URL(url);
  if (!LOOPBACK_HOSTS.has(u.hostname)) throw new NonLoopbackTargetError(String(url));
  return u;
}
