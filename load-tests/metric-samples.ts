// Reads the Prometheus text exposition format back (the load tests and the server tests scrape GET
// /metrics): `name{labels} value` lines; comments (# HELP, # TYPE) and blank lines skipped. Enough for
// diffing counters and gauges and reading histogram buckets; timestamps after the value are ignored.

export interface Sample {
  /** The series as written: `name{labels}`. */
  readonly series: string;
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** A line that is neither a comment nor `name{labels} value`; says which line and what it holds. */
export class ExpositionFormatError extends Error {
  readonly code = 'exposition_format';

  constructor(
    readonly lineNumber: number,
    readonly line: string,
  ) {
    super(`/metrics line ${lineNumber} is not 'name{labels} value': ${JSON.stringify(line.slice(0, 200))}`);
    this.name = 'ExpositionFormatError';
  }
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/gy;

export function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = SAMPLE.exec(line);
    if (!m) throw new ExpositionFormatError(i + 1, raw);
    const labels: Record<string, string> = {};
    const labelText = m[2] ?? '';
    LABEL.lastIndex = 0;
    let consumed = 0;
    for (let l = LABEL.exec(labelText); l; l = LABEL.exec(labelText)) {
      labels[l[1]!] = unescapeLabel(l[2]!);
      consumed = LABEL.lastIndex;
    }
    if (labelText.slice(consumed).trim() !== '') throw new ExpositionFormatError(i + 1, raw);
    samples.push({ series: m[2] === undefined ? m[1]! : `${m[1]!}{${m[2]}}`, name: m[1]!, labels, value: parseValue(m[3]!, i + 1, raw) });
  });
  return samples;
}

const SPECIAL_VALUES = new Map([
  ['nan', NaN],
  ['+inf', Infinity],
  ['inf', Infinity],
  ['-inf', -Infinity],
]);

function parseValue(text: string, lineNumber: number, line: string): number {
  // Special values in any case, as Prometheus reads them (prom-client writes NaN as 'Nan').
  const special = SPECIAL_VALUES.get(text.toLowerCase());
  if (special !== undefined) return special;
  const v = Number(text);
  if (Number.isNaN(v)) throw new ExpositionFormatError(lineNumber, line);
  return v;
}

function unescapeLabel(text: string): string {
  return text.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

/** Sum of the samples named `name` whose labels include every pair in `match`; 0 when there are none. */
export function sumOf(samples: readonly Sample[], name: string, match: Readonly<Record<string, string>> = {}): number {
  let total = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}
