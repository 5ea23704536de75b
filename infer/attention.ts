/**
 * Attention-sink statistics: how much attention each head of each layer puts on the first
 * token(s) of a stream, over one full forward pass (StreamingLLM, Figure 2; Gu et al.,
 * "When Attention Sink Emerges in Language Models", ICLR 2025, for the sink metric).
 *
 * Means run over the queries at positions >= FIRST_K only: a query at position q < 4 can
 * see nothing but the first q + 1 tokens, so it would count as "sink" attention whatever
 * the head does. In the sink modes softmax1 and logit a row of weights sums to less than
 * 1; the rest went to the implicit sink, reported on its own.
 */
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { backendInfo } from '../core/backend.js';
import type { SinkMode } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { heatmapGrid } from '../core/plot.js';
import { textStream, type LoadedCheckpoint } from './text.js';

/** Gu et al.'s threshold: a head "is a sink head" when its first-token attention exceeds it. */
export const SINK_EPS = 0.3;
/** "The first 4 tokens", StreamingLLM's sink count; also where the averaged queries start. */
export const FIRST_K = 4;
/** Size of the averaged attention maps kept per layer (the paper's figure shows 16). */
export const MAP_TOKENS = 16;

export interface HeadStats {
  head: number;
  /** Mean attention weight on token 0. */
  first: number;
  /** Mean attention mass on tokens 0..3. */
  first4: number;
  /** Mean mass given to the implicit sink (1 - row sum); null when the mode has none. */
  implicit_sink: number | null;
}

export interface LayerStats {
  layer: number;
  heads: HeadStats[];
}

export interface AttentionMap {
  layer: number;
  /** values[query][key] for the first tokens, averaged over heads; NaN above the diagonal. */
  values: number[][];
}

export interface AttentionStats {
  model: string;
  sink_mode: SinkMode;
  /** Length of the stream the forward ran over (the sink token included). */
  tokens: number;
  /** Means are over queries at positions >= this. */
  query_from: number;
  layers: LayerStats[];
  /**
   * Sink^eps: the share of (layer, head) pairs whose mean first-token attention exceeds eps;
   * for softmax1/logit also the share whose implicit-sink mass exceeds it.
   */
  sink_metric: { first: number; implicit_sink: number | null };
  eps: number;
  /** Head-averaged attention over the first min(MAP_TOKENS, tokens) tokens, every layer. */
  maps: AttentionMap[];
  /** How many windows of the text the means run over (1 unless attentionStatsOver). */
  windows?: number;
  backend: string;
}

function hasImplicitSink(mode: SinkMode): boolean {
  return mode === 'softmax1' || mode === 'logit';
}

/**
 * The stream the statistics run over: the text's tokens (after the sink token in a
 * sink-token model), cut to `maxTokens` (default and upper bound: the model's positions).
 */
export function attentionTokens(ck: LoadedCheckpoint, text: string, maxTokens?: number, file?: string): number[] {
  const max = ck.model.config.max_position_embeddings;
  const n = maxTokens ?? max;
  if (!Number.isInteger(n) || n <= FIRST_K || n > max) {
    throw new UserError(`must be a whole number from ${FIRST_K + 1} to ${max} (the model's max_position_embeddings)`, { field: '--tokens' });
  }
  const tokens = textStream(ck, text, undefined, file).tokens.slice(0, n);
  if (tokens.length <= FIRST_K) throw new UserError(`gives ${tokens.length} tokens; at least ${FIRST_K + 1} are needed`, { file });
  return tokens;
}

/** Runs one forward over `tokens` and reduces each layer's [1, H, T, T] weights on device. */
export async function attentionStats(ck: LoadedCheckpoint, tokens: number[], opts: { eps?: number } = {}): Promise<AttentionStats> {
  const model = ck.model;
  const c = model.config;
  const T = tokens.length;
  const H = c.num_attention_heads;
  const eps = opts.eps ?? SINK_EPS;
  if (T <= FIRST_K) throw new Error(`attentionStats needs more than ${FIRST_K} tokens, got ${T}`);
  if (T > c.max_position_embeddings) throw new Error(`${T} tokens exceed the model's ${c.max_position_embeddings} positions`);
  const M = Math.min(MAP_TOKENS, T);
  const implicit = hasImplicitSink(c.sink_mode);
  const layers: LayerStats[] = [];
  const maps: AttentionMap[] = [];

  // The probe runs inside the forward; each layer's packed vector is kept and read after it.
  const packs: { layer: number; packed: tf.Tensor }[] = [];
  const probe = (layer: number, w: tf.Tensor4D): void => {
    // One packed vector per layer, read once: first[H] | first4[H] | rowSum[H] | map[M*M].
    const packed = tf.tidy(() => {
      const heads = tf.reshape(w, [H, T, T]);
      const rows = tf.slice(heads, [0, FIRST_K, 0], [H, T - FIRST_K, T]);
      const first = tf.mean(tf.slice(rows, [0, 0, 0], [H, -1, 1]), [1, 2]);
      const first4 = tf.mean(tf.sum(tf.slice(rows, [0, 0, 0], [H, -1, FIRST_K]), -1), 1);
      const rowSum = tf.mean(tf.sum(rows, -1), 1);
      const map = tf.mean(tf.slice(heads, [0, 0, 0], [H, M, M]), 0);
      return tf.keep(tf.concat([first, first4, rowSum, tf.reshape(map, [M * M])]));
    });
    packs.push({ layer, packed });
  };
  const record = (layer: number, d: Float32Array): void => {
    layers.push({
      layer,
      heads: Array.from({ length: H }, (_, h) => ({
        head: h,
        first: d[h]!,
        first4: d[H + h]!,
        implicit_sink: implicit ? Math.max(0, 1 - d[2 * H + h]!) : null,
      })),
    });
    const at = 3 * H;
    maps.push({
      layer,
      values: Array.from({ length: M }, (_, q) => Array.from({ length: M }, (_, k) => (k <= q ? d[at + q * M + k]! : NaN))),
    });
  };
  tf.tidy(() => {
    model.forward(tf.tensor2d(tokens, [1, T], 'int32'), probe);
  });
  for (const { layer, packed } of packs) {
    record(layer, (await packed.data()) as Float32Array);
    packed.dispose();
  }

  const pairs = layers.flatMap((l) => l.heads);
  const share = (f: (h: HeadStats) => number) => pairs.filter((h) => f(h) > eps).length / pairs.length;
  return {
    model: ck.dir,
    sink_mode: c.sink_mode,
    tokens: T,
    query_from: FIRST_K,
    layers,
    sink_metric: { first: share((h) => h.first), implicit_sink: implicit ? share((h) => h.implicit_sink!) : null },
    eps,
    maps,
    backend: backendInfo().backend,
  };
}

/**
 * Windows of a text for attention statistics: `count` spans of the model's context, evenly
 * spread over the text's tokens (each led by the sink token in a sink-token model). Gu et
 * al. average over 100 samples; one window of 128 tokens is noisy (one head can look like a
 * sink on one passage only).
 */
export function attentionWindows(ck: LoadedCheckpoint, text: string, count: number, file?: string, maxLength?: number): number[][] {
  if (!Number.isInteger(count) || count < 1) throw new UserError('must be a positive whole number', { field: '--windows' });
  const { tokens, prefix } = textStream(ck, text, undefined, file);
  const head = tokens.slice(0, prefix);
  const body = tokens.slice(prefix);
  const span = Math.min(Math.min(ck.model.config.max_position_embeddings, maxLength ?? Infinity) - prefix, body.length);
  if (span + prefix <= FIRST_K) throw new UserError(`gives ${body.length} tokens; at least ${FIRST_K + 1} are needed`, { file });
  const room = body.length - span;
  const n = Math.min(count, room + 1);
  return Array.from({ length: n }, (_, i) => {
    const start = n === 1 ? 0 : Math.round((i * room) / (n - 1));
    return [...head, ...body.slice(start, start + span)];
  });
}

/**
 * attentionStats over several windows of the same length: per-head means (and the maps)
 * averaged over the windows, the sink metric taken on those averages.
 */
export async function attentionStatsOver(ck: LoadedCheckpoint, windows: number[][], opts: { eps?: number } = {}): Promise<AttentionStats> {
  if (windows.length === 0) throw new Error('attentionStatsOver needs at least one window');
  const all: AttentionStats[] = [];
  for (const w of windows) all.push(await attentionStats(ck, w, opts));
  const first = all[0]!;
  if (all.some((s) => s.tokens !== first.tokens)) throw new Error('attentionStatsOver: windows differ in length');
  const avg = (f: (s: AttentionStats) => number) => all.reduce((a, s) => a + f(s), 0) / all.length;
  const layers: LayerStats[] = first.layers.map((l, li) => ({
    layer: l.layer,
    heads: l.heads.map((h, hi) => {
      const at = (s: AttentionStats) => s.layers[li]!.heads[hi]!;
      return {
        head: h.head,
        first: avg((s) => at(s).first),
        first4: avg((s) => at(s).first4),
        implicit_sink: h.implicit_sink === null ? null : avg((s) => at(s).implicit_sink!),
      };
    }),
  }));
  const maps = first.maps.map((m, mi) => ({
    layer: m.layer,
    values: m.values.map((row, q) => row.map((v, k) => (Number.isNaN(v) ? NaN : avg((s) => s.maps[mi]!.values[q]![k]!)))),
  }));
  const eps = first.eps;
  const pairs = layers.flatMap((l) => l.heads);
  const share = (f: (h: HeadStats) => number) => pairs.filter((h) => f(h) > eps).length / pairs.length;
  const implicit = first.sink_metric.implicit_sink !== null;
  return {
    ...first,
    layers,
    maps,
    windows: all.length,
    sink_metric: { first: share((h) => h.first), implicit_sink: implicit ? share((h) => h.implicit_sink!) : null },
  };
}

/** The layers whose maps are drawn: all of them up to four, else first, two between, last. */
export function mapLayers(count: number, most = 4): number[] {
  if (count <= most) return Array.from({ length: count }, (_, i) => i);
  return Array.from({ length: most }, (_, i) => Math.round((i * (count - 1)) / (most - 1)));
}

/**
 * One SVG: on top a layer x head heatmap of first-token attention (and of implicit-sink
 * mass in the softmax1/logit modes), below it the head-averaged attention maps over the
 * first 16 tokens of a few layers, as in StreamingLLM's Figure 2.
 */
export async function attentionPlot(stats: AttentionStats, opts: { name?: string } = {}): Promise<string> {
  const name = opts.name ?? path.basename(path.resolve(stats.model));
  const rows = stats.layers.map((l) => String(l.layer));
  const cols = stats.layers[0]!.heads.map((h) => String(h.head));
  const grid = (f: (h: HeadStats) => number) => stats.layers.map((l) => l.heads.map(f));
  const implicit = stats.sink_metric.implicit_sink !== null;
  const first = stats.sink_mode === 'token' ? 'the sink token (position 0)' : 'the first token';
  // Titles stay short: each part is only as wide as its panels, and a 4-head model's are narrow.
  const heads = await heatmapGrid({
    title: `${name} (sink_mode ${stats.sink_mode})`,
    subtitle: `Sink^${stats.eps} = ${stats.sink_metric.first.toFixed(2)}` + (implicit ? `, implicit sink ${stats.sink_metric.implicit_sink!.toFixed(2)}` : ''),
    xLabel: 'head',
    yLabel: 'layer',
    valueLabel: 'attention',
    domain: [0, 1],
    panels: [
      { title: `attention to ${first}`, rows, cols, values: grid((h) => h.first) },
      ...(implicit ? [{ title: 'mass on the implicit sink', rows, cols, values: grid((h) => h.implicit_sink!) }] : []),
    ],
  });
  const shown = mapLayers(stats.maps.length).map((i) => stats.maps[i]!);
  const M = shown[0]!.values.length;
  const labels = Array.from({ length: M }, (_, i) => String(i));
  const maps = await heatmapGrid({
    title: `Attention over the first ${M} tokens, mean over heads`,
    subtitle:
      `above: means over queries ${stats.query_from}..${stats.tokens - 1} of a ${stats.tokens}-token stream` +
      (implicit ? '; rows here sum to < 1, the rest went to the implicit sink' : ''),
    xLabel: 'key position',
    yLabel: 'query position',
    valueLabel: 'attention',
    panels: shown.map((m) => ({ title: `layer ${m.layer}`, rows: labels, cols: labels, values: m.values })),
  });
  return stackSvgs([heads, maps]);
}

/**
 * Stacks SVG documents top to bottom in one. Each part keeps its own coordinates as a
 * nested <svg>; ids (vega's gradients and clip paths) get a per-part prefix so two parts'
 * "gradient_0" do not collide.
 */
export function stackSvgs(parts: string[]): string {
  let y = 0;
  let width = 0;
  const body = parts.map((svg, n) => {
    const doc = svg.replace(/^\s*<\?xml[^>]*>\s*/, '');
    const root = /^<svg\b[^>]*>/.exec(doc);
    if (!root) throw new Error('stackSvgs: a part does not start with <svg>');
    const w = Number(/\bwidth="([\d.]+)"/.exec(root[0])?.[1]);
    const h = Number(/\bheight="([\d.]+)"/.exec(root[0])?.[1]);
    if (!(w > 0 && h > 0)) throw new Error('stackSvgs: a part has no numeric width/height');
    const renamed = doc
      .replace(/\bid="([^"]+)"/g, `id="p${n}-$1"`)
      .replace(/url\(#([^)]+)\)/g, `url(#p${n}-$1)`)
      .replace(/href="#([^"]+)"/g, `href="#p${n}-$1"`)
      .replace(/^<svg\b/, `<svg x="0" y="${y}" overflow="visible"`);
    y += h;
    width = Math.max(width, w);
    return renamed;
  });
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}">` +
    `<rect width="${width}" height="${y}" fill="white"/>${body.join('')}</svg>`
  );
}

/** The compact text report: one small table per layer, then the sink metric. */
export function formatAttentionStats(s: AttentionStats): string {
  const implicit = s.sink_metric.implicit_sink !== null;
  const f = (x: number) => x.toFixed(3).padStart(7);
  const out: string[] = [
    `${s.model}: sink_mode ${s.sink_mode}, ${s.tokens} tokens${s.sink_mode === 'token' ? ' (token 0 is the sink token)' : ''} [${s.backend}]`,
    `means over queries at positions ${s.query_from}..${s.tokens - 1}: earlier queries can only see the first tokens`,
  ];
  for (const l of s.layers) {
    out.push(`layer ${String(l.layer).padEnd(10)}` + l.heads.map((h) => `h${h.head}`.padStart(7)).join(''));
    out.push('  first token    ' + l.heads.map((h) => f(h.first)).join(''));
    out.push(`  first ${FIRST_K}        ` + l.heads.map((h) => f(h.first4)).join(''));
    if (implicit) out.push('  implicit sink  ' + l.heads.map((h) => f(h.implicit_sink!)).join(''));
  }
  const pairs = s.layers.length * (s.layers[0]?.heads.length ?? 0);
  const count = (share: number) => `${share.toFixed(3)} (${Math.round(share * pairs)}/${pairs} layer-head pairs)`;
  out.push(`Sink^${s.eps} (first-token attention > ${s.eps}): ${count(s.sink_metric.first)}`);
  if (implicit) out.push(`Sink^${s.eps} (implicit-sink mass > ${s.eps}): ${count(s.sink_metric.implicit_sink!)}`);
  return out.join('\n') + '\n';
}
