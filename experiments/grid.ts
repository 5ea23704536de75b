/**
 * The Table-3 grid: streaming perplexity of each model under caches 0+W, 1+(W-1), 2+(W-2),
 * 4+(W-4) (the same total cache, more or fewer of it spent on initial tokens), on one text.
 * `ablate` and `validate` both call this, so their numbers are the same computation.
 */
import type { SinkMode } from '../core/config.js';
import { parseCache, type DecodePath, type PolicyName } from '../infer/policy.js';
import { streamEval, streamEvalMany, type StreamRow } from '../infer/stream.js';
import { loadCheckpoint, textStream, type LoadedCheckpoint } from '../infer/text.js';

export interface GridSpec {
  /** Total cache W (initial + recent). */
  window: number;
  /** Initial (sink) token counts, e.g. [0, 1, 2, 4]. */
  initial: number[];
  /** Text tokens streamed per config. */
  maxTokens: number;
}

export interface GridModel {
  name: string;
  dir: string;
}

export interface GridCell {
  model: string;
  sink_mode: SinkMode;
  cache: string;
  policy: PolicyName;
  ppl: number;
  nll_mean: number;
  tokens: number;
  ms_per_token: number;
  backend: string;
  decode: DecodePath;
  /**
   * Bits per UTF-8 byte of the text the predicted tokens cover: comparable across models
   * whose tokenizers cut the same text into different tokens.
   */
  bpb: number;
}

export interface GridResult {
  grid: GridCell[];
  /** Per-token NLL per (model, cache), for the perplexity-over-stream plots. */
  curves: { model: string; cache: string; policy: PolicyName; nll: Float64Array }[];
}

export function gridCaches(spec: GridSpec): string[] {
  return spec.initial.map((s) => `${s}+${spec.window - s}`);
}

export async function evaluateGrid(
  models: GridModel[],
  text: string,
  spec: GridSpec,
  opts: {
    extra?: { policy: PolicyName; cache: string; maxTokens?: number }[];
    progress?: boolean;
    log?: (l: string) => void;
    /** Called with each loaded model before it is freed (e.g. for its attention statistics). */
    onModel?: (name: string, ck: LoadedCheckpoint) => void | Promise<void>;
  } = {},
): Promise<GridResult> {
  const grid: GridCell[] = [];
  const curves: GridResult['curves'] = [];
  for (const m of models) {
    const ck = await loadCheckpoint(m.dir);
    try {
      // The grid's caches share one capacity: one batched stream covers them all.
      const stream = textStream(ck, text, spec.maxTokens);
      const caches = gridCaches(spec);
      const many = await streamEvalMany(ck, stream, caches.map((c) => parseCache(c)), { progress: opts.progress, label: `${m.name} ${caches.join(' ')}` });
      const bytes = predictedBytes(ck, stream);
      many.forEach(({ row, nll }, i) => {
        grid.push(cell(m.name, ck.model.config.sink_mode, row, bytes));
        curves.push({ model: m.name, cache: caches[i]!, policy: 'sinks', nll });
        opts.log?.(`${m.name.padEnd(10)} sinks     ${caches[i]!.padStart(8)}  ppl ${row.ppl.toFixed(3)}  (${row.tokens} tokens)`);
      });
      const runs = (opts.extra ?? []).map((e) => ({ ...e, maxTokens: e.maxTokens ?? spec.maxTokens }));
      for (const r of runs) {
        const stream = textStream(ck, text, r.maxTokens);
        const { row, nll } = await streamEval(ck, stream, r.policy, parseCache(r.cache), { progress: opts.progress, label: `${m.name} ${r.policy} ${r.cache}` });
        grid.push(cell(m.name, ck.model.config.sink_mode, row, predictedBytes(ck, stream)));
        curves.push({ model: m.name, cache: r.cache, policy: r.policy, nll });
        opts.log?.(`${m.name.padEnd(10)} ${r.policy.padEnd(9)} ${r.cache.padStart(8)}  ppl ${row.ppl.toFixed(3)}  (${row.tokens} tokens, ${row.ms_per_token.toFixed(1)} ms/token)`);
      }
      await opts.onModel?.(m.name, ck);
    } finally {
      ck.model.dispose();
    }
  }
  return { grid, curves };
}

/** UTF-8 bytes of the text behind the predicted tokens (all text tokens but the first). */
function predictedBytes(ck: LoadedCheckpoint, stream: { tokens: number[]; prefix: number }): number {
  return Buffer.byteLength(ck.tokenizer.decode(stream.tokens.slice(stream.prefix + 1)), 'utf8');
}

function cell(model: string, mode: SinkMode, r: StreamRow, bytes: number): GridCell {
  const bpb = (r.nll_mean * r.tokens) / Math.LN2 / Math.max(1, bytes);
  return { model, sink_mode: mode, cache: r.cache, policy: r.policy, ppl: r.ppl, nll_mean: r.nll_mean, tokens: r.tokens, ms_per_token: r.ms_per_token, backend: r.backend, decode: r.decode, bpb };
}

/** ppl of one cell of the sinks grid. */
export function pplAt(grid: GridCell[], model: string, initial: number, window: number): number | undefined {
  return grid.find((c) => c.model === model && c.policy === 'sinks' && c.cache === `${initial}+${window - initial}`)?.ppl;
}
