// An SVG line chart of hit ratio against cache budget: one line per (policy, prefetch depth), Belady's
// optimum as the bound. Hand-written SVG so the replay tool needs no plotting dependency; the output is
// a pure function of its input (fixed colors, fixed number formatting), so charts diff cleanly.

export interface ChartPoint {
  /** Budget as a percentage of all expert bytes. */
  readonly budgetPercent: number;
  /** 0..1 */
  readonly hitRatio: number;
}

export type ChartLine =
  | { readonly kind: 'policy'; readonly policy: string; readonly prefetchDepth: number; readonly points: readonly ChartPoint[] }
  | { readonly kind: 'belady'; readonly points: readonly ChartPoint[] };

const WIDTH = 900;
const HEIGHT = 500;
const PLOT = { left: 70, top: 50, right: 620, bottom: 440 } as const;

/** One color per known policy, shared by every chart of policies (replay and load tests). */
export const POLICY_COLORS: ReadonlyMap<string, string> = new Map([
  ['lru', '#1f77b4'],
  ['lfu', '#ff7f0e'],
  ['static', '#2ca02c'],
  ['none', '#d62728'],
  ['all', '#9467bd'],
  ['lfu-decay', '#bcbd22'],
  ['next-use', '#17becf'],
]);
export const SPARE_COLORS = ['#8c564b', '#e377c2', '#7f7f7f', '#000080', '#808000'];
/** Prefetch depth 0 solid, 1 dashed, deeper ones dotted and dash-dotted: one color per policy. */
const DEPTH_DASHES = ['', '8 5', '2 4', '10 4 2 4'];

export function hitRatioChartSvg(model: string, lines: readonly ChartLine[]): string {
  const budgets = lines.flatMap((l) => l.points.map((p) => p.budgetPercent));
  // Absolute budgets can exceed 100% of the experts; stretch the axis to show them.
  const xMax = Math.max(100, Math.ceil(Math.max(0, ...budgets) / 10) * 10);
  const xStep = xMax <= 100 ? 10 : Math.ceil(xMax / 100) * 10;
  const x = (percent: number) => PLOT.left + (percent / xMax) * (PLOT.right - PLOT.left);
  const y = (ratio: number) => PLOT.bottom - Math.min(1, Math.max(0, ratio)) * (PLOT.bottom - PLOT.top);
  const styled = lines.map((line) => ({ line, ...lineStyle(line, lines) }));

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${(PLOT.left + PLOT.right) / 2}" y="28" text-anchor="middle" font-size="16">Expert cache hit ratio: ${escapeXml(model)}</text>`,
  ];
  for (let t = 0; t <= xMax + 1e-9; t += xStep) {
    out.push(`<line x1="${n(x(t))}" y1="${PLOT.top}" x2="${n(x(t))}" y2="${PLOT.bottom}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${n(x(t))}" y="${PLOT.bottom + 18}" text-anchor="middle">${t}%</text>`);
  }
  for (let i = 0; i <= 10; i++) {
    const ratio = i / 10;
    out.push(`<line x1="${PLOT.left}" y1="${n(y(ratio))}" x2="${PLOT.right}" y2="${n(y(ratio))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${PLOT.left - 8}" y="${n(y(ratio) + 4)}" text-anchor="end">${ratio.toFixed(1)}</text>`);
  }
  out.push(
    `<line x1="${PLOT.left}" y1="${PLOT.bottom}" x2="${PLOT.right}" y2="${PLOT.bottom}" stroke="black"/>`,
    `<line x1="${PLOT.left}" y1="${PLOT.top}" x2="${PLOT.left}" y2="${PLOT.bottom}" stroke="black"/>`,
    `<text x="${(PLOT.left + PLOT.right) / 2}" y="${PLOT.bottom + 42}" text-anchor="middle">expert cache budget (% of all expert bytes)</text>`,
    `<text x="20" y="${(PLOT.top + PLOT.bottom) / 2}" text-anchor="middle" transform="rotate(-90 20 ${(PLOT.top + PLOT.bottom) / 2})">hit ratio</text>`,
  );
  for (const { line, stroke } of styled) {
    const points = [...line.points].sort((a, b) => a.budgetPercent - b.budgetPercent);
    const d = points.map((p, i) => `${i === 0 ? 'M' : 'L'}${n(x(p.budgetPercent))} ${n(y(p.hitRatio))}`).join(' ');
    out.push(`<path d="${d}" fill="none" ${stroke}/>`);
    const color = line.kind === 'belady' ? 'black' : colorOf(line.policy, lines);
    for (const p of points) out.push(`<circle cx="${n(x(p.budgetPercent))}" cy="${n(y(p.hitRatio))}" r="3" fill="${color}"/>`);
  }
  styled.forEach(({ label, stroke }, i) => {
    const rowY = PLOT.top + 10 + i * 20;
    out.push(`<line x1="${PLOT.right + 20}" y1="${rowY}" x2="${PLOT.right + 52}" y2="${rowY}" ${stroke}/>`);
    out.push(`<text x="${PLOT.right + 60}" y="${rowY + 4}">${escapeXml(label)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

function lineStyle(line: ChartLine, all: readonly ChartLine[]): { label: string; stroke: string } {
  if (line.kind === 'belady') return { label: 'belady (optimum, demand only)', stroke: 'stroke="black" stroke-width="4"' };
  const dash = DEPTH_DASHES[Math.min(line.prefetchDepth, DEPTH_DASHES.length - 1)] ?? '';
  return {
    label: `${line.policy} @ prefetch depth ${line.prefetchDepth}`,
    stroke: `stroke="${colorOf(line.policy, all)}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}`,
  };
}

/** Known policies keep their color across charts; others take spare colors in order of appearance. */
function colorOf(policy: string, all: readonly ChartLine[]): string {
  const known = POLICY_COLORS.get(policy);
  if (known) return known;
  const others = [...new Set(all.flatMap((l) => (l.kind === 'policy' && !POLICY_COLORS.has(l.policy) ? [l.policy] : [])))];
  return SPARE_COLORS[others.indexOf(policy) % SPARE_COLORS.length] ?? 'gray';
}

function n(v: number): string {
  return v.toFixed(1);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);
}
