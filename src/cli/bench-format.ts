import { utilizationOf, type Peaks, type UtilizationTotals } from '../engine/step-utilization.js';

/** Rounds a benchmark figure for its JSON line and table (`digits` decimals). */
export function round(x: number, digits = 1): number {
  return Number(x.toFixed(digits));
}

/** The median of `xs` (the mean of the two middle values for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/**
 * Greedy agreement of `got` with `want`, prompt by prompt: tokens equal up to the first difference
 * (`prefix`; after it the sequences decode different histories), tokens equal position by position, and
 * `want`'s token count.
 */
export function agree(got: readonly (readonly number[])[], want: readonly (readonly number[])[]): { prefix: number; positions: number; of: number } {
  let prefix = 0;
  let positions = 0;
  let of = 0;
  got.forEach((g, p) => {
    const w = want[p] ?? [];
    const first = g.findIndex((t, i) => w[i] !== t);
    prefix += first < 0 ? g.length : first;
    positions += g.filter((t, i) => w[i] === t).length;
    of += w.length;
  });
  return { prefix, positions, of };
}

/** A benchmark's S-MBU and S-MFU over the steps it ran (step-utilization.ts), as fractions; null without steps. */
export function utilizationFields(t: Pick<UtilizationTotals, 'bytes' | 'flops' | 'seconds'>, peaks: Peaks): { s_mbu: number | null; s_mfu: number | null } {
  const u = utilizationOf(t, peaks);
  return { s_mbu: u.smbu === null ? null : Number(u.smbu.toPrecision(3)), s_mfu: u.smfu === null ? null : Number(u.smfu.toPrecision(3)) };
}

/** "12.3% / 4.56%", S-MBU / S-MFU for a table; '-' without steps. */
export function utilizationCell(u: { readonly s_mbu: number | null; readonly s_mfu: number | null }): string {
  const pct = (x: number | null) => (x === null ? '-' : `${Number((x * 100).toPrecision(3))}%`);
  return `${pct(u.s_mbu)} / ${pct(u.s_mfu)}`;
}
