// A token id. Branded so that a position, a count or an expert index cannot be passed where a vocabulary id is
// expected; the brand costs nothing at run time.
export type Token = number & { readonly __token: unique symbol };

export class InvalidTokenError extends Error {
  constructor(readonly value: number) {
    super(`A token id must be a non-negative integer, got ${value}.`);
    this.name = new.target.name;
  }
}

export function asToken(n: number): Token {
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidTokenError(n);
  return n as Token;
}

export function asTokens(ns: readonly number[]): Token[] {
  return ns.map(asToken);
}
