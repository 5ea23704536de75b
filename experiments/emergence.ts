/**
 * How attention sinks emerge over training: the sink metric of every weight snapshot a run
 * kept (train.snapshot_every) and of its newest weights, measured over several windows of
 * a held-out text, beside the run's validation loss. Comparing runs that differ in one
 * training setting (length, learning rate, weight decay, context) is how `sinklm emergence`
 * finds the smallest change that makes a vanilla model grow a sink.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseRunConfig, type SinkMode } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { readJsonFile } from '../core/fsutil.js';
import { checkInputDir } from '../core/outpath.js';
import { lineChart } from '../core/plot.js';
import { prepareData } from '../data/prepare.js';
import { attentionStatsOver, attentionWindows, FIRST_K, SINK_EPS, stackSvgs, type AttentionStats } from '../infer/attention.js';
import { loadCheckpoint } from '../infer/text.js';
import { WEIGHTS_FILE } from '../model/checkpoint.js';
import { readMetrics, readState, RUN_FILE } from '../train/rundir.js';

export interface EmergencePoint {
  step: number;
  /** Sink^eps: share of layer-head pairs whose mean first-token attention exceeds eps. */
  sink: number;
  /** The same for the implicit sink (softmax1 / logit), else null. */
  implicit_sink: number | null;
  /** Mean first-token attention over all heads, and the largest single head's. */
  mean_first: number;
  max_first: number;
  /** Validation loss logged at the nearest evaluation at or before `step` (null if none yet). */
  val_loss: number | null;
  val_step: number | null;
}

export interface EmergenceTrace {
  run: string;
  name: string;
  sink_mode: SinkMode;
  /** Tokens per window (the model's context) and how many windows the means run over. */
  tokens: number;
  windows: number;
  eps: number;
  points: EmergencePoint[];
  backend: string;
}

/** The weights a run holds, oldest first: snapshots/step-N, then the run's newest weights. */
export function runWeights(run: string): { step: number; dir: string }[] {
  checkInputDir(run, 'run folder');
  const snaps = path.join(run, 'snapshots');
  const out = (fs.existsSync(snaps) ? fs.readdirSync(snaps) : [])
    .filter((n) => /^step-\d+$/.test(n) && fs.existsSync(path.join(snaps, n, WEIGHTS_FILE)))
    .map((n) => ({ step: Number(n.slice(5)), dir: path.join(snaps, n) }))
    .sort((a, b) => a.step - b.step);
  if (fs.existsSync(path.join(run, WEIGHTS_FILE))) {
    const step = readState(run).step;
    if (out.at(-1)?.step !== step) out.push({ step, dir: run });
  }
  if (out.length === 0) throw new UserError(`has no ${WEIGHTS_FILE} and no snapshots/step-N: not a sinklm run folder, or nothing saved yet`, { file: run });
  return out;
}

function validationLosses(run: string): { step: number; val_loss: number }[] {
  return readMetrics<{ step: number; val_loss?: number }>(run).filter((m): m is { step: number; val_loss: number } => typeof m.val_loss === 'number');
}

/** The held-out test stream of the data a run was trained on (prepared again if missing). */
export async function runTestText(run: string, log?: (l: string) => void): Promise<string> {
  checkInputDir(run, 'run folder');
  const file = path.join(run, RUN_FILE);
  if (!fs.existsSync(file)) throw new UserError(`has no ${RUN_FILE}; pass --text`, { file: run });
  const saved = readJsonFile(file) as { config?: unknown };
  const cfg = parseRunConfig(saved.config, file);
  const prep = await prepareData(cfg, { log });
  return path.join(prep.dir, 'test_stream.txt');
}

function meanFirst(s: AttentionStats): number {
  const all = s.layers.flatMap((l) => l.heads.map((h) => h.first));
  return all.reduce((a, b) => a + b, 0) / all.length;
}

/** One point: the attention statistics of one set of weights over `windows` windows of the text. */
async function sinkPoint(dir: string, text: string, windows: number, eps = SINK_EPS, file?: string): Promise<{ stats: AttentionStats; mean_first: number; max_first: number }> {
  const ck = await loadCheckpoint(dir);
  try {
    const stats = await attentionStatsOver(ck, attentionWindows(ck, text, windows, file), { eps });
    const firsts = stats.layers.flatMap((l) => l.heads.map((h) => h.first));
    return { stats, mean_first: meanFirst(stats), max_first: Math.max(...firsts) };
  } finally {
    ck.model.dispose();
  }
}

export async function emergenceTrace(
  run: string,
  text: string,
  opts: { windows?: number; eps?: number; file?: string; name?: string; onPoint?: (p: EmergencePoint, stats: AttentionStats) => void } = {},
): Promise<EmergenceTrace> {
  const windows = opts.windows ?? 8;
  const eps = opts.eps ?? SINK_EPS;
  // Checked before any weights load: a bad count would otherwise surface only after them.
  if (!Number.isInteger(windows) || windows < 1) throw new UserError(`must be a whole number >= 1 (got ${windows})`, { field: 'windows' });
  if (!(eps > 0 && eps < 1)) throw new UserError(`must be a number between 0 and 1 (got ${eps})`, { field: 'eps' });
  const losses = validationLosses(run);
  const points: EmergencePoint[] = [];
  let last: AttentionStats | undefined;
  for (const w of runWeights(run)) {
    const { stats, mean_first, max_first } = await sinkPoint(w.dir, text, windows, eps, opts.file);
    const val = losses.filter((m) => m.step <= w.step).at(-1);
    const p: EmergencePoint = {
      step: w.step,
      sink: stats.sink_metric.first,
      implicit_sink: stats.sink_metric.implicit_sink,
      mean_first,
      max_first,
      val_loss: val?.val_loss ?? null,
      val_step: val?.step ?? null,
    };
    points.push(p);
    opts.onPoint?.(p, stats);
    last = stats;
  }
  return {
    run: path.resolve(run),
    name: opts.name ?? path.basename(path.resolve(run)),
    sink_mode: last!.sink_mode,
    tokens: last!.tokens,
    windows: last!.windows ?? 1,
    eps,
    points,
    backend: last!.backend,
  };
}

export function formatEmergence(traces: EmergenceTrace[]): string {
  const out: string[] = [];
  for (const t of traces) {
    out.push(`${t.name} (sink_mode ${t.sink_mode}; ${t.windows} windows of ${t.tokens} tokens) [${t.backend}]`);
    const implicit = t.points.some((p) => p.implicit_sink !== null);
    out.push(`  ${'step'.padStart(7)}  ${`Sink^${t.eps}`.padStart(9)}  ${'mean first'.padStart(10)}  ${'max head'.padStart(8)}  ${implicit ? 'implicit  ' : ''}val loss`);
    for (const p of t.points) {
      const val = p.val_loss === null ? '-' : `${p.val_loss.toFixed(3)}${p.val_step !== p.step ? ` (step ${p.val_step})` : ''}`;
      out.push(
        `  ${String(p.step).padStart(7)}  ${p.sink.toFixed(3).padStart(9)}  ${p.mean_first.toFixed(3).padStart(10)}  ${p.max_first.toFixed(3).padStart(8)}  ` +
          (implicit ? `${(p.implicit_sink ?? 0).toFixed(3).padStart(8)}  ` : '') +
          val,
      );
    }
  }
  return out.join('\n') + '\n';
}

/** What a head spreading its attention evenly over what it can see gives the first token (queries FIRST_K..T-1). */
export function uniformFirst(tokens: number): number {
  let s = 0;
  for (let q = FIRST_K; q < tokens; q++) s += 1 / (q + 1);
  return s / (tokens - FIRST_K);
}

/** Run names for legends: folder names, with their parent's where two would read the same. */
export function runLabels(runs: string[]): string[] {
  const base = runs.map((r) => path.basename(path.resolve(r)));
  return runs.map((r, i) => (base.filter((b) => b === base[i]).length > 1 ? path.join(path.basename(path.dirname(path.resolve(r))), base[i]!) : base[i]!));
}

/** Two charts stacked: Sink^eps over steps, and the strongest head's first-token attention beside uniform attention. */
export async function emergencePlot(traces: EmergenceTrace[]): Promise<string> {
  const t0 = traces[0];
  const eps = t0?.eps ?? SINK_EPS;
  const contexts = [...new Set(traces.map((t) => t.tokens))].sort((a, b) => a - b);
  const sub = `${t0?.windows ?? 1} windows of ${contexts.join(' or ')} test tokens (each run's context) per point [${t0?.backend ?? '?'}]`;
  const series = (f: (p: EmergencePoint) => number) => traces.map((t) => ({ name: t.name, x: t.points.map((p) => p.step), y: t.points.map(f) }));
  const top = Math.max(0.1, ...traces.flatMap((t) => t.points.map((p) => p.sink)));
  const sink = await lineChart({
    title: `Sink^${eps} over training: share of heads with first-token attention > ${eps}`,
    subtitle: sub,
    xLabel: 'training step',
    yLabel: `Sink^${eps}`,
    yDomain: [0, Math.min(1, top * 1.1)],
    series: series((p) => p.sink),
  });
  const steps = traces.flatMap((t) => t.points.map((p) => p.step));
  const uniform = contexts.map((T) => ({
    name: `uniform attention${contexts.length > 1 ? ` (${T} tokens)` : ''}`,
    x: [Math.min(...steps), Math.max(...steps)],
    y: [uniformFirst(T), uniformFirst(T)],
  }));
  // The mean over heads stays in the JSON (mean_first): beside ten runs' strongest heads it only crowds the chart.
  const strongest = await lineChart({
    title: 'First-token attention of the strongest head',
    subtitle: `a sink head puts most of its attention on the first token whatever the query (Sink^${eps} counts heads above ${eps})`,
    xLabel: 'training step',
    yLabel: 'attention on the first token',
    series: [...series((p) => p.max_first), ...uniform],
  });
  return stackSvgs([sink, strongest]);
}
