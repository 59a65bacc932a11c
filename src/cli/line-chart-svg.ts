// A small hand-written SVG line chart: by default x = expert-cache budget (%), one polyline per series (a
// policy, or Belady's bound drawn dashed); the soak's charts put time on x. A pure function of its input
// with fixed formatting, so reports diff cleanly; no plotting dependency.

export interface Series {
  readonly name: string;
  /** Points in any order; drawn left to right. Null y values are skipped. */
  readonly points: readonly { readonly x: number; readonly y: number | null }[];
  readonly color: string;
  readonly dashed?: boolean;
}

export interface LineChart {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly Series[];
  /** Formats tick labels on the y axis. */
  readonly yFormat?: (y: number) => string;
  /** Fixed y range, e.g. [0, 1] for ratios; default from 0 to a rounded maximum. */
  readonly yRange?: readonly [number, number];
  /** Formats tick labels on the x axis; default a percentage (the budget). */
  readonly xFormat?: (x: number) => string;
  /** Where the x axis has ticks; default at every x of a point. */
  readonly xTicks?: readonly number[];
}

/** Series with more points than this are drawn as lines alone, without a dot per point. */
const MAX_MARKED_POINTS = 40;

const WIDTH = 640;
const HEIGHT = 360;
const PLOT = { left: 64, top: 36, right: 480, bottom: 310 } as const;

export function lineChartSvg(chart: LineChart): string {
  const xs = chart.series.flatMap((s) => s.points.map((p) => p.x));
  const ys = chart.series.flatMap((s) => s.points.flatMap((p) => (p.y === null || !Number.isFinite(p.y) ? [] : [p.y])));
  const xMin = Math.min(0, ...xs);
  const xMax = Math.max(1, ...xs);
  const [yMin, yMax] = chart.yRange ?? [0, niceCeiling(Math.max(0, ...ys))];
  const fmt = chart.yFormat ?? ((y: number) => String(Number(y.toPrecision(3))));
  const x = (v: number) => PLOT.left + ((v - xMin) / (xMax - xMin)) * (PLOT.right - PLOT.left);
  const y = (v: number) => PLOT.bottom - ((Math.min(yMax, Math.max(yMin, v)) - yMin) / (yMax - yMin || 1)) * (PLOT.bottom - PLOT.top);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="11">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${(PLOT.left + PLOT.right) / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(chart.title)}</text>`,
  ];
  for (let i = 0; i <= 5; i++) {
    const v = yMin + ((yMax - yMin) * i) / 5;
    out.push(`<line x1="${PLOT.left}" y1="${n(y(v))}" x2="${PLOT.right}" y2="${n(y(v))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${PLOT.left - 6}" y="${n(y(v) + 4)}" text-anchor="end">${escapeXml(fmt(v))}</text>`);
  }
  const xFmt = chart.xFormat ?? ((v: number) => `${v}%`);
  for (const v of chart.xTicks ?? [...new Set(xs)].sort((a, b) => a - b)) {
    out.push(`<line x1="${n(x(v))}" y1="${PLOT.top}" x2="${n(x(v))}" y2="${PLOT.bottom}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${n(x(v))}" y="${PLOT.bottom + 16}" text-anchor="middle">${escapeXml(xFmt(v))}</text>`);
  }
  out.push(
    `<line x1="${PLOT.left}" y1="${PLOT.bottom}" x2="${PLOT.right}" y2="${PLOT.bottom}" stroke="black"/>`,
    `<line x1="${PLOT.left}" y1="${PLOT.top}" x2="${PLOT.left}" y2="${PLOT.bottom}" stroke="black"/>`,
    `<text x="${(PLOT.left + PLOT.right) / 2}" y="${PLOT.bottom + 36}" text-anchor="middle">${escapeXml(chart.xLabel)}</text>`,
    `<text x="16" y="${(PLOT.top + PLOT.bottom) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(PLOT.top + PLOT.bottom) / 2})">${escapeXml(chart.yLabel)}</text>`,
  );
  chart.series.forEach((s, i) => {
    const points = s.points.filter((p): p is { x: number; y: number } => p.y !== null && Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    out.push(`<polyline data-series="${escapeXml(s.name)}" points="${points.map((p) => `${n(x(p.x))},${n(y(p.y))}`).join(' ')}" fill="none" stroke="${s.color}" stroke-width="2"${dash}/>`);
    if (points.length <= MAX_MARKED_POINTS) for (const p of points) out.push(`<circle cx="${n(x(p.x))}" cy="${n(y(p.y))}" r="3" fill="${s.color}"/>`);
    const rowY = PLOT.top + 8 + i * 18;
    out.push(`<line x1="${PLOT.right + 16}" y1="${rowY}" x2="${PLOT.right + 44}" y2="${rowY}" stroke="${s.color}" stroke-width="2"${dash}/>`);
    out.push(`<text x="${PLOT.right + 50}" y="${rowY + 4}">${escapeXml(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

/** The smallest of 1, 2, 2.5, 5 x 10^k at or above v (the top of a readable axis). */
function niceCeiling(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function n(v: number): string {
  return v.toFixed(1);
}

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);
}
