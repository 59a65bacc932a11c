// report.html: the same context and tables as report.md, plus inline SVG charts per client and
// concurrency: throughput, e2e p50 and p99 latency, and hit ratio against budget, one line per policy,
// Belady's bound dashed on the hit-ratio chart.
import { POLICY_COLORS, SPARE_COLORS } from '../src/experts/replay/hit-ratio-chart.js';
import { escapeXml, lineChartSvg, type Series } from '../src/cli/line-chart-svg.js';
import type { RunResult } from './load-run.js';
import type { ReportContext } from './report-context.js';
import { METRIC_DEFINITIONS } from './report-md.js';
import { groupByClient, TABLE_HEAD, tableRow } from './report-table.js';

const BUDGET_AXIS = 'expert cache budget (% of all expert bytes)';

export function reportHtml(ctx: ReportContext, results: readonly RunResult[]): string {
  const body: string[] = [
    `<h1>moe-serve load test: ${escapeXml(ctx.model)} on ${escapeXml(ctx.device)}</h1>`,
    `<pre>${escapeXml(ctx.command)}</pre>`,
    '<ul>',
    `<li>Date: ${escapeXml(ctx.date)}</li>`,
    `<li>Machine: ${escapeXml(ctx.machine)}; Node ${escapeXml(ctx.node)}</li>`,
    `<li>moe-serve commit: ${escapeXml(ctx.commit ?? 'unknown')}</li>`,
    `<li>Workload: ${escapeXml(ctx.workload)}</li>`,
    ...ctx.notes.map((n) => `<li>${inline(n)}</li>`),
    '</ul>',
  ];
  for (const group of groupByClient(results)) {
    body.push(`<h2>${escapeXml(group.title)}</h2>`);
    for (const concurrency of [...new Set(group.runs.map((r) => r.concurrency))]) {
      const runs = group.runs.filter((r) => r.concurrency === concurrency);
      body.push(`<h3>concurrency ${concurrency}</h3>`, '<div class="charts">', ...charts(runs).map((svg) => `<figure>${svg}</figure>`), '</div>');
    }
    body.push('<table>', `<tr>${TABLE_HEAD.map((h) => `<th>${escapeXml(h)}</th>`).join('')}</tr>`);
    for (const r of group.runs) body.push(`<tr>${tableRow(r).map((c) => `<td>${inline(c)}</td>`).join('')}</tr>`);
    body.push('</table>');
  }
  body.push('<h2>Metric definitions</h2>', '<ul>', ...METRIC_DEFINITIONS.map((d) => `<li>${inline(d)}</li>`), '</ul>');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>moe-serve load test: ${escapeXml(ctx.model)}</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
pre { background: #f4f4f4; padding: 0.5em; }
</style>
</head>
<body>
${body.join('\n')}
</body>
</html>
`;
}

/** The five charts of one client at one concurrency. */
export function charts(runs: readonly RunResult[]): string[] {
  // One line per configuration: the policy, and the admission order where it is not the default.
  const lineOf = (r: RunResult) => (r.scheduling === 'fifo' ? r.policy : `${r.policy} ${r.scheduling}`);
  const lines = [...new Set(runs.map(lineOf))];
  const byPolicy = (value: (r: RunResult) => number | null): Series[] =>
    lines.map((line) => ({
      name: line,
      color: POLICY_COLORS.get(line) ?? SPARE_COLORS[lines.indexOf(line) % SPARE_COLORS.length] ?? 'gray',
      points: runs.filter((r) => lineOf(r) === line).map((r) => ({ x: r.budgetPercent, y: value(r) })),
    }));
  const ms = (y: number) => `${Number(y.toPrecision(3))} ms`;
  const c = runs[0]?.concurrency ?? 0;
  return [
    lineChartSvg({ title: `Throughput, concurrency ${c}`, xLabel: BUDGET_AXIS, yLabel: 'output tokens/s', series: byPolicy((r) => r.tokensPerSecond) }),
    lineChartSvg({ title: `e2e latency p50, concurrency ${c}`, xLabel: BUDGET_AXIS, yLabel: 'ms', series: byPolicy((r) => r.latency.e2eMs.p50), yFormat: ms }),
    lineChartSvg({ title: `e2e latency p99, concurrency ${c}`, xLabel: BUDGET_AXIS, yLabel: 'ms', series: byPolicy((r) => r.latency.e2eMs.p99), yFormat: ms }),
    lineChartSvg({
      title: `Expert cache hit ratio, concurrency ${c}`,
      xLabel: BUDGET_AXIS,
      yLabel: 'hit ratio',
      yRange: [0, 1],
      yFormat: (y) => `${Math.round(y * 100)}%`,
      series: [...byPolicy((r) => r.server.hitRatio), ...beladySeries(runs)],
    }),
    lineChartSvg({
      title: `Loads avoided (1 - loads / uses), concurrency ${c}`,
      xLabel: BUDGET_AXIS,
      yLabel: 'loads avoided',
      yRange: [0, 1],
      yFormat: (y) => `${Math.round(y * 100)}%`,
      series: [...byPolicy((r) => r.server.loadsAvoided), ...beladySeries(runs)],
    }),
  ];
}

/**
 * Belady's bound at each budget, drawn dashed; none without routing traces. Each server has its own
 * trace (the same prompts, but a different number of requests got through in the time), so the bound
 * drawn is the highest of them at that budget.
 */
function beladySeries(runs: readonly RunResult[]): Series[] {
  const best = new Map<number, number>();
  for (const r of runs) if (r.beladyHitRatio !== null) best.set(r.budgetPercent, Math.max(best.get(r.budgetPercent) ?? 0, r.beladyHitRatio));
  return best.size === 0 ? [] : [{ name: 'Belady bound', color: 'black', dashed: true, points: [...best].map(([x, y]) => ({ x, y })) }];
}

/** Markdown's **bold** and `code` in a line of HTML text. */
function inline(text: string): string {
  return escapeXml(text)
    .replace(/\*\*(.+?)\*\*/g, '<b>$1</b>')
    .replace(/`(.+?)`/g, '<code>$1</code>');
}
