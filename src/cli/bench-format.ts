/** Rounds a benchmark figure for its JSON line and table (`digits` decimals). */
export function round(x: number, digits = 1): number {
  return Number(x.toFixed(digits));
}
