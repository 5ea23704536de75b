/**
 * Figures as SVG text, drawn by vega-lite in Node (no browser, no canvas): training curves,
 * per-token perplexity over a long stream, perplexity grids, attention heatmaps.
 *
 * Every chart shares one look (see THEME) and a colour-blind-safe palette: Okabe-Ito for
 * categories, viridis for magnitudes. Callers pass plain arrays; nothing here knows about
 * models or tensors.
 */
import * as vega from 'vega';
import { compile } from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';

/** Okabe & Ito (2008), reordered so the first colours are the most distinct on white. */
export const CATEGORY_COLOURS = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#000000', '#F0E442'];

/** Past this many points a line is averaged down: the SVG stays small and the trend readable. */
export const MAX_LINE_POINTS = 2000;

/** Stroke patterns for line charts with more series than colours: the second round of colours is dashed, the third dotted. */
export const LINE_DASHES: number[][] = [[1, 0], [6, 3], [1, 3]];

const WIDTH = 720;
const HEIGHT = 360;
const FONT = 'Helvetica, Arial, "DejaVu Sans", sans-serif';

const THEME = {
  background: 'white',
  padding: 16,
  font: FONT,
  view: { stroke: null },
  title: { fontSize: 16, fontWeight: 600, anchor: 'start', offset: 12, subtitleFontSize: 12, subtitleColor: '#555' },
  axis: {
    labelFontSize: 11,
    labelColor: '#333',
    titleFontSize: 13,
    titleFontWeight: 'normal',
    titleColor: '#222',
    titlePadding: 8,
    domainColor: '#888',
    tickColor: '#888',
    gridColor: '#ebebeb',
  },
  legend: { labelFontSize: 12, titleFontSize: 12, titleFontWeight: 'normal', titleColor: '#222', labelLimit: 320, titleLimit: 320 },
  header: { labelFontSize: 13, titleFontSize: 13 },
  concat: { spacing: 24 },
} as const;

// Without a canvas, vega guesses every character at 0.8 em, which truncates legend titles and
// spreads legends far apart. A per-character-class guess for Helvetica-like fonts is close
// enough for layout; vega documents replacing textMetrics.width for exactly this case.
function guessTextWidth(item: { fontSize?: number; fontWeight?: string | number }, text: string): number {
  let em = 0;
  for (const ch of String(text ?? '')) {
    if (/[ilIj.,:;'|!()\[\] ]/.test(ch)) em += 0.28;
    else if (/[mwMW@]/.test(ch)) em += 0.85;
    else if (/[A-Z]/.test(ch)) em += 0.68;
    else em += 0.56;
  }
  const bold = item.fontWeight === 'bold' || Number(item.fontWeight) >= 600;
  return em * (item.fontSize ?? 11) * (bold ? 1.08 : 1);
}
(vega as unknown as { textMetrics: { width: typeof guessTextWidth } }).textMetrics.width = guessTextWidth;

/** Axis labels that read well at any scale: 0.25, 12, 1,500 or, on axes reaching 10k, 5k, 20k, 3M. */
function numberLabels(values: readonly number[]): string {
  const big = values.some((v) => Math.abs(v) >= 1e4);
  return big ? "abs(datum.value) >= 1000 ? format(datum.value, '~s') : format(datum.value, '~g')" : "format(datum.value, ',~g')";
}

/**
 * A log axis from the decade below the data to just above it, labelled at 1-2-5 steps (or
 * only at powers of ten when it spans more than three decades): vega's own log ticks
 * crowd the axis with 300, 400, 500, ...
 */
function logAxis(
  values: number[],
  fixed?: [number, number],
): { scale: { type: 'log'; domain: [number, number]; nice: false }; axis: { values?: number[]; labelExpr: string } } {
  const positive = values.filter((v) => v > 0 && Number.isFinite(v));
  const lo = fixed?.[0] ?? (positive.length ? 10 ** Math.floor(Math.log10(Math.min(...positive))) : 1);
  const max = Math.max(...positive, lo * 10);
  const steps = Math.log10(max / lo) > 3 ? [1] : [1, 2, 5];
  const ticks: number[] = [];
  for (let p = Math.floor(Math.log10(lo)); ticks.length === 0 || ticks[ticks.length - 1]! < max * (1 - 1e-9); p++) {
    for (const m of steps) if (m * 10 ** p >= lo * (1 - 1e-9)) ticks.push(m * 10 ** p);
  }
  // The axis ends on a labelled tick, the first at or above the data.
  const hi = fixed?.[1] ?? ticks.find((t) => t >= max * (1 - 1e-9))!;
  const shown = ticks.filter((t) => t <= hi * (1 + 1e-9));
  return {
    scale: { type: 'log', domain: [lo, hi], nice: false },
    axis: { values: shown.length >= 2 ? shown : undefined, labelExpr: numberLabels(shown) },
  };
}

async function render(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

function titleOf(text: string, subtitle?: string): { text: string; subtitle?: string } {
  return subtitle ? { text, subtitle } : { text };
}

// ---------------------------------------------------------------------------------------
// Line chart
// ---------------------------------------------------------------------------------------

export interface LineSeries {
  name: string;
  x: number[];
  y: number[];
}

export interface LineChartOptions {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  logY?: boolean;
  /** Fixes the y range; points outside it are clipped rather than stretching the axis. */
  yDomain?: [number, number];
  /** Upper bound on the points drawn per series (default MAX_LINE_POINTS). */
  maxPoints?: number;
}

/**
 * Averages consecutive points in windows so at most `maxPoints` remain, keeping a long
 * trace's level and trend. With `geometric`, windows average in log space: the mean of
 * per-token perplexities that way is exp(mean NLL), the window's own perplexity.
 * Non-finite values (and, when geometric, values <= 0) are left out of each window.
 */
export function downsample(
  x: readonly number[],
  y: readonly number[],
  maxPoints: number = MAX_LINE_POINTS,
  geometric = false,
): { x: number[]; y: number[]; window: number } {
  if (x.length !== y.length) throw new Error(`x and y differ in length (${x.length} vs ${y.length})`);
  const window = Math.max(1, Math.ceil(x.length / Math.max(1, maxPoints)));
  const outX: number[] = [];
  const outY: number[] = [];
  for (let start = 0; start < x.length; start += window) {
    let sx = 0;
    let sy = 0;
    let n = 0;
    for (let i = start; i < Math.min(start + window, x.length); i++) {
      const xi = x[i]!;
      const yi = y[i]!;
      if (!Number.isFinite(xi) || !Number.isFinite(yi) || (geometric && yi <= 0)) continue;
      sx += xi;
      sy += geometric ? Math.log(yi) : yi;
      n++;
    }
    if (n > 0) {
      outX.push(sx / n);
      outY.push(geometric ? Math.exp(sy / n) : sy / n);
    }
  }
  return { x: outX, y: outY, window };
}

/** A horizontal legend above the plot, wrapped into as many columns as fit its width. */
function topLegend(names: string[], width: number) {
  const widest = Math.max(...names.map((n) => guessTextWidth({ fontSize: 12 }, n))) + 40;
  const fit = Math.max(1, Math.min(names.length, Math.floor(width / widest)));
  // Balanced rows: 4 names that do not fit in one row go 2 + 2, not 3 + 1.
  const columns = Math.ceil(names.length / Math.ceil(names.length / fit));
  return { orient: 'top' as const, direction: 'horizontal' as const, columns };
}

export async function lineChart(opts: LineChartOptions): Promise<string> {
  const rows: { series: string; x: number; y: number; single: boolean }[] = [];
  let widest = 1;
  for (const s of opts.series) {
    const d = downsample(s.x, s.y, opts.maxPoints ?? MAX_LINE_POINTS, opts.logY ?? false);
    widest = Math.max(widest, d.window);
    d.x.forEach((x, i) => rows.push({ series: s.name, x, y: d.y[i]!, single: d.x.length === 1 }));
  }
  const averaged = opts.logY ? 'geometric mean' : 'mean';
  const note = widest > 1 ? `each point is the ${averaged} of ${widest} consecutive values` : undefined;
  const names = opts.series.map((s) => s.name);
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    config: THEME,
    title: titleOf(opts.title, [opts.subtitle, note].filter(Boolean).join(' · ')),
    width: WIDTH,
    height: HEIGHT,
    data: { values: rows },
    // A line needs two points: a series with one gets a marker, or it would not show at all.
    layer: [
      { mark: { type: 'line', strokeWidth: 1.6, clip: true } },
      { transform: [{ filter: 'datum.single' }], mark: { type: 'point', filled: true, size: 50, opacity: 1, clip: true } },
    ],
    encoding: {
      x: {
        field: 'x',
        type: 'quantitative',
        title: opts.xLabel,
        scale: { zero: false, nice: true },
        axis: { labelExpr: numberLabels(rows.map((r) => r.x)), tickCount: 8, labelOverlap: 'greedy' },
      },
      y: {
        field: 'y',
        type: 'quantitative',
        title: opts.yLabel,
        ...(opts.logY
          ? logAxis(rows.map((r) => r.y), opts.yDomain)
          : {
              scale: { zero: false, ...(opts.yDomain ? { domain: opts.yDomain, nice: false } : {}) },
              axis: { labelExpr: numberLabels(opts.yDomain ?? rows.map((r) => r.y)) },
            }),
      },
      color: {
        field: 'series',
        type: 'nominal',
        title: null,
        sort: names,
        scale: { domain: names, range: CATEGORY_COLOURS },
        legend: names.length > 1 ? { ...topLegend(names, WIDTH), symbolType: 'stroke', symbolStrokeWidth: 3 } : null,
      },
      // Same field, domain and title as colour, so vega-lite draws one legend for both.
      ...(names.length > CATEGORY_COLOURS.length
        ? {
            strokeDash: {
              field: 'series',
              type: 'nominal' as const,
              title: null,
              sort: names,
              scale: { domain: names, range: names.map((_, i) => LINE_DASHES[Math.floor(i / CATEGORY_COLOURS.length) % LINE_DASHES.length]!) },
            },
          }
        : {}),
    },
  };
  return render(spec);
}

// ---------------------------------------------------------------------------------------
// Grouped bar chart
// ---------------------------------------------------------------------------------------

export interface BarChartOptions {
  title: string;
  subtitle?: string;
  /** Label of the group axis, e.g. "KV cache (sinks + recent window)". */
  xLabel: string;
  yLabel: string;
  /** One cluster of bars per group, e.g. per cache configuration. */
  groups: string[];
  /** One bar per series in every group, e.g. per model. */
  series: string[];
  /** values[group][series]; NaN for a missing cell. */
  values: number[][];
  logY?: boolean;
  yDomain?: [number, number];
  /** Print each bar's value above it (default: when there are at most 40 bars). */
  showValues?: boolean;
  /** d3-format of the printed values (default 3 significant digits). */
  valueFormat?: string;
}

export async function barChart(opts: BarChartOptions): Promise<string> {
  if (opts.values.length !== opts.groups.length) {
    throw new Error(`values has ${opts.values.length} rows but there are ${opts.groups.length} groups`);
  }
  const rows: { group: string; series: string; value: number }[] = [];
  opts.values.forEach((row, g) => {
    if (row.length !== opts.series.length) {
      throw new Error(`values[${g}] has ${row.length} entries but there are ${opts.series.length} series`);
    }
    row.forEach((value, s) => {
      if (Number.isFinite(value) && (!opts.logY || value > 0)) rows.push({ group: opts.groups[g]!, series: opts.series[s]!, value });
    });
  });
  const showValues = opts.showValues ?? opts.groups.length * opts.series.length <= 40;
  // Headroom above the tallest bar for its printed value.
  const top = Math.max(...rows.map((r) => r.value), 0);
  const headroom = showValues ? (opts.logY ? 1.4 : 1.08) : 1;
  const y = opts.logY
    ? logAxis([...rows.map((r) => r.value), top * headroom], opts.yDomain)
    : {
        scale: opts.yDomain ? { domain: opts.yDomain, nice: false } : top > 0 ? { domainMax: top * headroom } : {},
        axis: { labelExpr: numberLabels([top]) },
      };
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    config: THEME,
    title: titleOf(opts.title, opts.subtitle),
    width: WIDTH,
    height: HEIGHT,
    data: { values: rows },
    encoding: {
      x: {
        field: 'group',
        type: 'nominal',
        title: opts.xLabel,
        sort: opts.groups,
        scale: { domain: opts.groups, paddingInner: 0.2, paddingOuter: 0.1 },
        axis: { labelAngle: 0, labelLimit: WIDTH / opts.groups.length - 6, ticks: false },
      },
      xOffset: { field: 'series', type: 'nominal', sort: opts.series, scale: { domain: opts.series, paddingInner: 0.06 } },
      y: {
        field: 'value',
        type: 'quantitative',
        title: opts.yLabel,
        // Unstacked: bars of one group sit side by side, and a log axis has no 0 to stack from.
        stack: null,
        ...y,
      },
      color: {
        field: 'series',
        type: 'nominal',
        title: null,
        sort: opts.series,
        scale: { domain: opts.series, range: CATEGORY_COLOURS },
        legend: topLegend(opts.series, WIDTH),
      },
    },
    layer: [
      { mark: { type: 'bar', clip: true } },
      ...(showValues
        ? [
            {
              mark: { type: 'text' as const, dy: -3, baseline: 'bottom' as const, fontSize: 10 },
              encoding: {
                text: { field: 'value', type: 'quantitative' as const, format: opts.valueFormat ?? ',.3~r' },
                color: { value: '#333' },
              },
            },
          ]
        : []),
    ],
  };
  return render(spec);
}

// ---------------------------------------------------------------------------------------
// Heatmaps
// ---------------------------------------------------------------------------------------

export interface HeatmapPanel {
  title: string;
  /** Labels of values' rows (drawn top to bottom) and columns (left to right). */
  rows: string[];
  cols: string[];
  /** values[row][col]; NaN leaves the cell blank (e.g. above a causal mask's diagonal). */
  values: number[][];
}

export interface HeatmapOptions extends HeatmapPanel {
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  /** Title of the colour legend, e.g. "attention to token 0". */
  valueLabel: string;
  /** Fixes the colour range so several figures compare; defaults to the data's range. */
  domain?: [number, number];
  /** Print each cell's value (default: when there are at most 120 cells). */
  annotate?: boolean;
}

export interface HeatmapGridOptions {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  valueLabel: string;
  panels: HeatmapPanel[];
  /** One colour scale for all panels, so equal colours mean equal values across panels. */
  domain?: [number, number];
  /** Panels per row before wrapping (default: all in one row, up to 4). */
  columns?: number;
  annotate?: boolean;
}

type Cell = { row: string; col: string; value: number };

function cellsOf(p: HeatmapPanel): Cell[] {
  if (p.values.length !== p.rows.length) throw new Error(`${p.title}: values has ${p.values.length} rows, rows has ${p.rows.length} labels`);
  const cells: Cell[] = [];
  p.values.forEach((row, r) => {
    if (row.length !== p.cols.length) throw new Error(`${p.title}: values[${r}] has ${row.length} entries, cols has ${p.cols.length} labels`);
    row.forEach((value, c) => {
      if (Number.isFinite(value)) cells.push({ row: p.rows[r]!, col: p.cols[c]!, value });
    });
  });
  return cells;
}

function dataRange(panels: HeatmapPanel[]): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of panels) {
    for (const row of p.values) {
      for (const v of row) {
        if (!Number.isFinite(v)) continue;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
  }
  if (!Number.isFinite(lo)) return [0, 1];
  // Probabilities and other non-negative quantities read best against a scale from 0.
  if (lo >= 0 && lo < hi / 10) lo = 0;
  return [lo, hi > lo ? hi : lo + 1];
}

// Square cells, as large as fit the box, so a query x key map keeps its diagonal at 45°.
function cellSize(rows: number, cols: number, maxW: number, maxH: number): number {
  return Math.max(2, Math.min(44, maxW / cols, maxH / rows));
}

// Once labels would collide, show every 2nd, 4th, 8th...: token positions 0, 8, 16, ...
function sparseLabels(labels: string[], step: number, fontSize: number, horizontal: boolean): { values?: string[] } {
  const need = horizontal ? Math.max(...labels.map((l) => guessTextWidth({ fontSize }, l))) + 6 : fontSize + 3;
  let every = 1;
  while (every * step < need) every *= 2;
  return every > 1 ? { values: labels.filter((_, i) => i % every === 0) } : {};
}

function heatmapLayers(
  panel: HeatmapPanel,
  o: { xLabel: string; yLabel: string; valueLabel: string; domain: [number, number]; nice: boolean; annotate: boolean; cell: number },
) {
  const colour = {
    field: 'value',
    type: 'quantitative' as const,
    scale: { scheme: 'viridis', domain: o.domain, clamp: true, nice: o.nice },
    title: o.valueLabel,
    legend: { gradientLength: Math.min(300, Math.max(120, o.cell * panel.rows.length)), labelExpr: numberLabels(o.domain), titleLimit: 300 },
  };
  return {
    width: { step: o.cell },
    height: { step: o.cell },
    data: { values: cellsOf(panel) },
    encoding: {
      x: {
        field: 'col',
        type: 'ordinal' as const,
        title: o.xLabel,
        scale: { domain: panel.cols },
        axis: { labelAngle: 0, ticks: false, domain: false, labelOverlap: false, ...sparseLabels(panel.cols, o.cell, 11, true) },
      },
      y: {
        field: 'row',
        type: 'ordinal' as const,
        title: o.yLabel || null,
        scale: { domain: panel.rows },
        axis: { ticks: false, domain: false, labelOverlap: false, ...sparseLabels(panel.rows, o.cell, 11, false) },
      },
    },
    layer: [
      {
        // Annotated maps get white gutters between cells; dense maps paint each cell's edge
        // in its own colour, which hides the hairline seams SVG rasterisers leave.
        mark: {
          type: 'rect' as const,
          strokeWidth: o.annotate ? 1 : 0.5,
          stroke: o.annotate ? 'white' : { expr: "scale('color', datum.value)" },
        },
        encoding: { color: colour },
      },
      ...(o.annotate
        ? [
            {
              mark: { type: 'text' as const, fontSize: Math.min(11, Math.max(8, o.cell * 0.3)) },
              encoding: {
                text: { field: 'value', type: 'quantitative' as const, format: '.2~f' },
                // Dark text on the bright end of viridis, light text on the dark end.
                color: {
                  condition: { test: `datum.value > ${o.domain[0] + 0.6 * (o.domain[1] - o.domain[0])}`, value: '#111' },
                  value: '#f2f2f2',
                },
              },
            },
          ]
        : []),
    ],
  };
}

export async function heatmap(opts: HeatmapOptions): Promise<string> {
  const cell = cellSize(opts.rows.length, opts.cols.length, WIDTH - 100, HEIGHT + 120);
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    config: THEME,
    title: titleOf(opts.title, opts.subtitle),
    ...heatmapLayers(opts, {
      ...opts,
      domain: opts.domain ?? dataRange([opts]),
      nice: !opts.domain,
      annotate: opts.annotate ?? (opts.rows.length * opts.cols.length <= 120 && cell >= 24),
      cell,
    }),
  };
  return render(spec);
}

/**
 * Several heatmaps side by side with one shared colour scale, e.g. per-layer x per-head
 * attention to the first token for each model, or averaged query x key attention maps of
 * a few layers (StreamingLLM, Figure 2).
 */
export async function heatmapGrid(opts: HeatmapGridOptions): Promise<string> {
  if (opts.panels.length === 0) throw new Error('heatmapGrid needs at least one panel');
  const columns = opts.columns ?? Math.min(4, opts.panels.length);
  const maxRows = Math.max(...opts.panels.map((p) => p.rows.length));
  const maxCols = Math.max(...opts.panels.map((p) => p.cols.length));
  const cell = cellSize(maxRows, maxCols, Math.max(120, (WIDTH + 240) / columns - 70), HEIGHT);
  const o = {
    ...opts,
    domain: opts.domain ?? dataRange(opts.panels),
    nice: !opts.domain,
    annotate: opts.annotate ?? (maxRows * maxCols <= 120 && cell >= 24),
    cell,
  };
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    config: THEME,
    title: titleOf(opts.title, opts.subtitle),
    columns,
    // Only the first panel of each row names the y axis; the rest would repeat it.
    concat: opts.panels.map((p, i) => ({
      title: { text: p.title, fontSize: 13, fontWeight: 'normal', anchor: 'middle', offset: 6, subtitle: '' },
      ...heatmapLayers(p, { ...o, yLabel: i % columns === 0 ? opts.yLabel : '' }),
    })),
    resolve: { scale: { color: 'shared' } },
  };
  return render(spec);
}
