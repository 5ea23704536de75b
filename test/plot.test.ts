import { describe, expect, it } from 'vitest';
import { MAX_LINE_POINTS, barChart, downsample, heatmap, heatmapGrid, lineChart } from '../core/plot.js';

/** Balanced tags under a single <svg> root: enough to catch truncated or mis-escaped output. */
function expectWellFormedSvg(svg: string): void {
  expect(svg.startsWith('<svg')).toBe(true);
  expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
  const stack: string[] = [];
  let roots = 0;
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (closing) expect(stack.pop()).toBe(name);
    else if (!selfClosing) {
      if (stack.length === 0) roots++;
      stack.push(name!);
    }
  }
  expect(stack).toEqual([]);
  expect(roots).toBe(1);
  // Every & in text or attributes is an entity.
  expect(svg).not.toMatch(/&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/);
}

/** Vertices of each drawn line, from the path data of vega's line marks. */
function lineVertexCounts(svg: string): number[] {
  return [...svg.matchAll(/aria-roledescription="line mark" d="([^"]*)"/g)].map((m) => (m[1]!.match(/[ML]/g) ?? []).length);
}

describe('downsample', () => {
  it('keeps short series as they are', () => {
    expect(downsample([0, 1, 2], [5, 6, 7])).toEqual({ x: [0, 1, 2], y: [5, 6, 7], window: 1 });
  });

  it('bounds the point count and keeps the mean', () => {
    const n = 100_000;
    const x = Array.from({ length: n }, (_, i) => i);
    const y = x.map((i) => (i % 2 === 0 ? 1 : 3));
    const d = downsample(x, y);
    expect(d.x.length).toBeLessThanOrEqual(MAX_LINE_POINTS);
    expect(d.window).toBe(50);
    expect(d.y.every((v) => v === 2)).toBe(true);
    expect(d.x[0]).toBe(24.5);
  });

  it('averages perplexities geometrically and skips values it cannot average', () => {
    const d = downsample([0, 1, 2, 3], [1, 100, NaN, Infinity], 1, true);
    expect(d.y[0]).toBeCloseTo(10, 10);
    expect(downsample([0, 1], [-1, 0], 1, true).y).toEqual([]);
  });
});

describe('charts render as SVG', () => {
  it('lineChart: 100k-point series stay under the point and size limits', async () => {
    const n = 100_000;
    const x = Array.from({ length: n }, (_, i) => i);
    const svg = await lineChart({
      title: 'Per-token perplexity & friends',
      xLabel: 'tokens streamed',
      yLabel: 'perplexity',
      logY: true,
      series: [
        { name: 'window', x, y: x.map((i) => 20 + (i % 97)) },
        { name: 'sink + window', x, y: x.map((i) => 10 + (i % 13)) },
      ],
    });
    expectWellFormedSvg(svg);
    expect(svg).toContain('Per-token perplexity &amp; friends');
    expect(svg).toContain('geometric mean of 50 consecutive values');
    const counts = lineVertexCounts(svg);
    expect(counts).toHaveLength(2);
    for (const c of counts) expect(c).toBeLessThanOrEqual(MAX_LINE_POINTS);
    expect(svg.length).toBeLessThan(1_000_000);
  });

  it('lineChart: a fixed linear y range', async () => {
    const svg = await lineChart({
      title: 'Training loss',
      xLabel: 'step',
      yLabel: 'loss',
      yDomain: [0, 10],
      series: [{ name: 'train', x: [0, 1, 2, 3], y: [9, 6, 4, 3.5] }],
    });
    expectWellFormedSvg(svg);
    expect(svg).toContain('Training loss');
    expect(lineVertexCounts(svg)).toEqual([4]);
  });

  it('lineChart: a series with a single point is drawn as a marker (a line needs two), longer series are not', async () => {
    const svg = await lineChart({
      title: 'one point',
      xLabel: 'x',
      yLabel: 'y',
      series: [
        { name: 'one', x: [5], y: [3] },
        { name: 'many', x: [0, 5, 10], y: [1, 2, 4] },
      ],
    });
    expectWellFormedSvg(svg);
    const points = svg.match(/aria-roledescription="point"/g) ?? [];
    expect(points).toHaveLength(1);
    expect(svg).toMatch(/aria-label="x: 5; y: 3; series: one" role="graphics-symbol" aria-roledescription="point"/);
    expect(lineVertexCounts(svg)).toContain(3);
  });

  it('lineChart: more series than colours: the second round of colours is dashed, the first solid', async () => {
    const line = (n: number) => ({ name: `run ${n}`, x: [0, 1], y: [n, n + 1] });
    const eight = await lineChart({ title: 'eight', xLabel: 'x', yLabel: 'y', series: [1, 2, 3, 4, 5, 6, 7, 8].map(line) });
    expect(eight).not.toContain('stroke-dasharray');
    const ten = await lineChart({ title: 'ten', xLabel: 'x', yLabel: 'y', series: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map(line) });
    expectWellFormedSvg(ten);
    expect(lineVertexCounts(ten)).toHaveLength(10);
    // Two dashed lines (runs 9 and 10) and their two legend symbols.
    expect(ten.match(/stroke-dasharray="6,3"/g)).toHaveLength(4);
  });

  it('barChart: grouped bars on a log axis all have height', async () => {
    const svg = await barChart({
      title: 'Perplexity grid',
      xLabel: 'KV cache',
      yLabel: 'perplexity',
      logY: true,
      groups: ['dense', '0 + 1024', '4 + 1020'],
      series: ['vanilla', 'sink token'],
      values: [
        [24.1, 23.9],
        [1520, 26.8],
        [25.3, NaN],
      ],
    });
    expectWellFormedSvg(svg);
    for (const s of ['Perplexity grid', '0 + 1024', 'vanilla', 'sink token', '1,520']) expect(svg).toContain(s);
    const bars = [...svg.matchAll(/aria-roledescription="bar" d="M[^h]*h[^v]*v([-\d.]+)/g)].map((m) => Number(m[1]));
    expect(bars).toHaveLength(5);
    for (const h of bars) expect(h).toBeGreaterThan(0);
  });

  it('heatmap: one cell per finite value, legend titled', async () => {
    const svg = await heatmap({
      title: 'Attention to the first token',
      xLabel: 'head',
      yLabel: 'layer',
      rows: ['L0', 'L1', 'L2'],
      cols: ['H0', 'H1'],
      values: [
        [0.1, 0.9],
        [0.5, NaN],
        [1, 0],
      ],
      valueLabel: 'attention to token 0',
      domain: [0, 1],
    });
    expectWellFormedSvg(svg);
    expect(svg).toContain('Attention to the first token');
    expect(svg).toContain('attention to token 0');
    expect([...svg.matchAll(/aria-roledescription="rect mark"/g)]).toHaveLength(5);
  });

  it('heatmapGrid: several panels under one title', async () => {
    const pos = Array.from({ length: 16 }, (_, i) => String(i));
    const causal = (sink: number) => pos.map((_, q) => pos.map((_, k) => (k > q ? NaN : k === 0 ? sink : (1 - sink) / q)));
    const svg = await heatmapGrid({
      title: 'Average attention maps',
      xLabel: 'key position',
      yLabel: 'query position',
      valueLabel: 'attention',
      panels: [
        { title: 'layer 0', rows: pos, cols: pos, values: causal(0.1) },
        { title: 'layer 5', rows: pos, cols: pos, values: causal(0.8) },
      ],
    });
    expectWellFormedSvg(svg);
    for (const s of ['Average attention maps', 'layer 0', 'layer 5', 'key position']) expect(svg).toContain(s);
    // 136 cells on and below the diagonal in each panel; NaN above it draws nothing.
    expect([...svg.matchAll(/aria-roledescription="rect mark"/g)]).toHaveLength(2 * 136);
  });
});
