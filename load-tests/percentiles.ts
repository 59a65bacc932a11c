// Percentiles as vLLM's benchmark reports them: numpy.percentile's default (linear interpolation between
// the two nearest ranks), so our p50/p99 mean what theirs mean.

/** The p-th percentile (0 <= p <= 100) of `values`; null for no values. The input is not modified. */
export function percentile(values: readonly number[], p: number): number | null {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`a percentile must be between 0 and 100, got ${p}`);
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  const a = sorted[lo]!;
  const b = sorted[hi]!;
  return a + (b - a) * (rank - lo);
}

export interface Summary {
  readonly count: number;
  readonly mean: number | null;
  readonly p50: number | null;
  readonly p90: number | null;
  readonly p99: number | null;
  readonly max: number | null;
}

export function summarize(values: readonly number[]): Summary {
  return {
    count: values.length,
    mean: values.length === 0 ? null : values.reduce((s, v) => s + v, 0) / values.length,
    p50: percentile(values, 50),
    p90: percentile(values, 90),
    p99: percentile(values, 99),
    max: values.length === 0 ? null : Math.max(...values),
  };
}
