/**
 * The ablation report: report.json (everything), report.md (what a reader wants first:
 * the grid beside the paper's Table 3, the verdicts, quality and sink statistics) and SVG
 * plots (the grid, perplexity over the stream like the paper's Figure 3, training curves,
 * first-token attention heatmaps, sink emergence over steps).
 */
import * as path from 'node:path';
import { writeFileAtomic } from '../core/fsutil.js';
import { barChart, heatmapGrid, lineChart } from '../core/plot.js';
import type { AblationResult } from './ablate.js';
import { emergencePlot, uniformFirst, type EmergencePoint } from './emergence.js';
import { pplAt } from './grid.js';
import { verdictRule } from './verdicts.js';

/** Table 3 of Xiao et al. (ICLR 2024): Pythia-160M from scratch, cache x+y with y = 1024 - x. */
export const PAPER_TABLE3: { model: string; values: Record<number, number> }[] = [
  { model: 'vanilla', values: { 0: 27.87, 1: 18.49, 2: 18.05, 4: 18.05 } },
  { model: 'zero sink (softmax1)', values: { 0: 29214, 1: 19.9, 2: 18.27, 4: 18.01 } },
  { model: 'learnable sink token', values: { 0: 1235, 1: 18.01, 2: 18.01, 4: 18.02 } },
];

const fmt = (x: number | null | undefined, d = 3) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

export function gridTable(r: Pick<AblationResult, 'grid' | 'spec'>, models: string[]): string {
  const W = r.spec.window;
  const head = `| model | ${r.spec.initial.map((s) => `${s}+${W - s}`).join(' | ')} |`;
  const sep = `|---|${r.spec.initial.map(() => '---:').join('|')}|`;
  const rows = models.map((m) => `| ${m} | ${r.spec.initial.map((s) => fmt(pplAt(r.grid, m, s, W), 2)).join(' | ')} |`);
  return [head, sep, ...rows].join('\n');
}

function markdown(r: AblationResult): string {
  const models = r.variants.map((v) => v.name);
  const W = r.spec.window;
  const ref = (policy: string) => r.grid.filter((c) => c.policy === policy);
  const lines: string[] = [];
  lines.push(`# Attention-sink ablation`, '');
  lines.push(`Config \`${path.basename(r.config)}\`, backend **${r.backend}**, ${r.created.slice(0, 10)}. Streaming perplexity over the first ${r.spec.maxTokens} tokens of the held-out test stream, token by token; cache \`S+W'\` = S initial tokens + W' recent ones (S + W' = ${W}, half the training context), positions within the cache.`, '');
  lines.push(`## The grid (this run)`, '', gridTable(r, models), '');
  lines.push(`## The paper's Table 3 (Pythia-160M, 143k steps, PG19 book, cache 1024)`, '');
  lines.push(`| model | 0+1024 | 1+1023 | 2+1022 | 4+1020 |`, `|---|---:|---:|---:|---:|`);
  for (const p of PAPER_TABLE3) lines.push(`| ${p.model} | ${[0, 1, 2, 4].map((s) => p.values[s]).join(' | ')} |`);
  lines.push('', `## Verdicts`, '');
  for (const v of r.verdicts) lines.push(`- **${v.outcome}**: ${v.claim}. ${v.evidence}${v.note ? ` (${v.note})` : ''}.`);
  lines.push('', verdictRule());
  lines.push('', `## References and quality`, '');
  lines.push(`| model | val loss | dense (within context) | recompute 0+${W} | Sink^0.3 (first token) | implicit-sink Sink^0.3 | mean first-token attention | tokens trained |`);
  lines.push(`|---|---:|---:|---:|---:|---:|---:|---:|`);
  for (const v of r.variants) {
    const dense = ref('dense').find((c) => c.model === v.name);
    const rec = ref('recompute').find((c) => c.model === v.name);
    const mf = v.emergence.at(-1)?.mean_first;
    lines.push(
      `| ${v.name} | ${fmt(v.val_loss, 4)} | ${fmt(dense?.ppl, 2)} | ${fmt(rec?.ppl, 2)} | ${fmt(v.attention.sink_metric.first, 3)} | ${fmt(v.attention.sink_metric.implicit_sink, 3)} | ${fmt(mf, 3)} | ${(v.tokens_seen / 1e6).toFixed(1)}M |`,
    );
  }
  lines.push('', `## Sink emergence over training`, '');
  lines.push('First-token attention at each weight snapshot: mean over all heads / strongest head, and Sink^0.3 (share of heads above 0.3); 8 windows of the test text per point. An even spread over what a query sees would give the first token about ' + fmt(uniformFirst(r.variants[0]?.attention.tokens ?? 2 * W), 3) + '.', '');
  const steps = [...new Set(r.variants.flatMap((v) => v.emergence.map((e) => e.step)))].sort((a, b) => a - b);
  lines.push(`| step | ${models.join(' | ')} |`, `|---:|${models.map(() => '---:').join('|')}|`);
  const cell = (e: EmergencePoint | undefined) => (e ? `${fmt(e.mean_first, 3)} / ${fmt(e.max_first, 3)}, Sink ${fmt(e.sink, 3)}` : '-');
  for (const s of steps) lines.push(`| ${s} | ${r.variants.map((v) => cell(v.emergence.find((e) => e.step === s))).join(' | ')} |`);
  lines.push('', `## Plots`, '');
  for (const [f, t] of [
    ['grid.svg', 'Perplexity grid'],
    ['stream.svg', 'Perplexity over the stream'],
    ['training.svg', 'Training curves'],
    ['attention.svg', 'First-token attention per layer and head'],
    ['emergence.svg', 'Sink emergence'],
  ]) lines.push(`![${t}](${f})`, '');
  lines.push(`Reproduce: \`sinklm ablate --config ${path.relative(process.cwd(), r.config)}\` (reuses trained variants), or \`sinklm validate\` for the grid on the shipped checkpoints.`, '');
  return lines.join('\n');
}

export async function writeReport(r: AblationResult, dir: string): Promise<void> {
  const models = r.variants.map((v) => v.name);
  const W = r.spec.window;
  const sub = `${r.spec.maxTokens} test tokens · backend ${r.backend}`;
  const files: Record<string, string> = {};
  files['grid.svg'] = await barChart({
    title: `Streaming perplexity, cache S+W' = ${W}`,
    subtitle: sub,
    xLabel: 'cache (initial + recent tokens)',
    yLabel: 'perplexity',
    groups: r.caches,
    series: models,
    values: r.caches.map((c) => models.map((m) => r.grid.find((g) => g.model === m && g.cache === c && g.policy === 'sinks')?.ppl ?? NaN)),
    logY: true,
  });
  const show = new Set([`0+${W}`, `1+${W - 1}`, `4+${W - 4}`]);
  files['stream.svg'] = await lineChart({
    title: 'Perplexity over the stream (Figure 3 of the paper, at this scale)',
    subtitle: sub,
    xLabel: 'streamed tokens',
    yLabel: 'perplexity (window mean)',
    logY: true,
    // ~64 windows: per-token perplexity is too noisy to read.
    maxPoints: 64,
    series: r.curves
      .filter((c) => c.policy === 'sinks' && show.has(c.cache))
      .map((c) => ({ name: `${c.model} ${c.cache}`, x: c.nll.map((_, i) => i + 1), y: c.nll.map((v) => Math.exp(v)) })),
  });
  files['training.svg'] = await lineChart({
    title: 'Training loss',
    subtitle: `same data, seed and budget; only the sink mechanism differs · ${r.backend}`,
    xLabel: 'step',
    yLabel: 'loss (nats/token)',
    series: r.variants.flatMap((v) => {
      const tr = v.metrics.filter((m) => m.loss !== undefined);
      const va = v.metrics.filter((m) => m.val_loss !== undefined);
      return [
        { name: `${v.name} train`, x: tr.map((m) => m.step), y: tr.map((m) => m.loss!) },
        ...(va.length ? [{ name: `${v.name} val`, x: va.map((m) => m.step), y: va.map((m) => m.val_loss!) }] : []),
      ];
    }),
  });
  files['attention.svg'] = await heatmapGrid({
    title: 'Mean attention on the first token (queries at positions >= 4)',
    subtitle: `Sink^0.3: ${r.variants.map((v) => `${v.name} ${v.attention.sink_metric.first.toFixed(2)}`).join(', ')}`,
    xLabel: 'head',
    yLabel: 'layer',
    valueLabel: 'attention',
    domain: [0, 1],
    panels: r.variants.map((v) => ({
      title: v.name,
      rows: v.attention.layers.map((l) => String(l.layer)),
      cols: v.attention.layers[0]!.heads.map((h) => String(h.head)),
      values: v.attention.layers.map((l) => l.heads.map((h) => h.first)),
    })),
  });
  files['emergence.svg'] = await emergencePlot(
    r.variants.map((v) => ({ run: v.dir, name: v.name, sink_mode: v.sink_mode, tokens: v.attention.tokens, windows: v.attention.windows ?? 1, eps: v.attention.eps, points: v.emergence, backend: r.backend })),
  );
  for (const [f, svg] of Object.entries(files)) writeFileAtomic(path.join(dir, f), svg);
  writeFileAtomic(path.join(dir, 'report.json'), JSON.stringify({ ...r, curves: undefined }, null, 1) + '\n');
  writeFileAtomic(path.join(dir, 'report.md'), markdown(r));
}
