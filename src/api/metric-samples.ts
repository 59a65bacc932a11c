// Reads the Prometheus text exposition format back (benchmarks and load tests scrape GET /metrics).

/** `name{labels} value` lines as "name{labels}" -> value; comments and blank lines skipped. */
export function parseMetricSamples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const at = line.lastIndexOf(' ');
    if (at > 0) out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}
