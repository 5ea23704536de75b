/**
 * The main job: the Table-3 grid, the attention-sink statistics and the paper's claims as
 * statistics, on any set of GPT-NeoX checkpoints and a text. Two sources:
 *  - the shipped ablation (checkpoints/, made by `ablate --ship`): its recorded grid is
 *    recomputed and must match (a drift fails the run);
 *  - any checkpoint folders (`--model name=dir`): real Pythia models, your own runs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SinkMode } from '../core/config.js';
import { CheckFailure, UserError } from '../core/errors.js';
import { readJsonFile } from '../core/fsutil.js';
import { checkInputDir } from '../core/outpath.js';
import { attentionStatsOver, attentionWindows, SINK_EPS, type AttentionStats } from '../infer/attention.js';
import type { DecodePath } from '../infer/policy.js';
import { readText, type LoadedCheckpoint } from '../infer/text.js';
import { checkCheckpointDir, checkpointTokenizerPath, readCheckpointConfig } from '../model/checkpoint.js';
import { evaluateGrid, type GridCell, type GridModel, type GridSpec } from './grid.js';
import { BOOTSTRAP_RESAMPLES } from './stats.js';
import { MARGIN, verdicts, type Verdict } from './verdicts.js';

export interface ShippedManifest {
  text: string;
  spec: GridSpec;
  backend: string;
  created: string;
  variants: { name: string; sink_mode: SinkMode; dir: string; steps: number; tokens_seen: number; val_loss: number | null }[];
  grid: { model: string; sink_mode: SinkMode; cache: string; ppl: number }[];
}

/** A model's attention-sink statistics over windows of the text (infer/attention.ts). */
export interface ModelSinkStats {
  name: string;
  dir: string;
  sink_mode: SinkMode;
  context: number;
  /** Gu et al.'s Sink^eps: share of (layer, head) pairs whose first-token attention exceeds eps. */
  sink_metric: number;
  eps: number;
  /** Mean first-token attention per layer (over heads). */
  first_by_layer: number[];
  strongest_head: { layer: number; head: number; first: number };
  /** softmax1 / logit: share of heads whose implicit-sink mass exceeds eps. */
  implicit_sink_metric: number | null;
  windows: number;
  tokens_per_window: number;
}

export interface ValidateResult {
  source: 'shipped' | 'models';
  text: string;
  /** The Table-3 cells (policy sinks), model by model in the order given. */
  grid: GridCell[];
  /** dense within the context and recompute (sliding window with re-computation), for reference. */
  references: GridCell[];
  verdicts: Verdict[];
  margin: number;
  resamples: number;
  spec: GridSpec;
  backend: string;
  /** Where the cached streaming step ran (see infer/policy.ts decodePath). */
  decode: DecodePath;
  seconds: number;
  /** Shipped source: largest relative difference from the grid recorded at ablation time. */
  max_rel_diff_vs_recorded: number | null;
  recorded_backend: string | null;
  checkpoints: string | null;
  variants: ShippedManifest['variants'] | null;
  models: ModelSinkStats[];
  /** True when the models cut the text with different tokenizers: compare rows by bits per byte. */
  tokenizers_differ: boolean;
}

/** Windows of the text the attention statistics average over (as `ablate`). */
const ATTENTION_WINDOWS = 8;
/**
 * Their length at most: the statistics keep every head's [T, T] weights of a layer, which
 * for Pythia-160M at T = 2048 grows the process to ~12 GB; Gu et al. measure on 64 tokens.
 */
const ATTENTION_WINDOW_TOKENS = 512;
/** Tokens the recompute reference runs over by default: it re-runs W tokens per token. */
export const RECOMPUTE_TOKENS = 256;

/** The checkpoints/ folder shipped with the package (wherever it is installed). */
export function shippedDir(): string {
  // Up from this file (dist/experiments/ when built, experiments/ from source) to the package root.
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return path.join(dir, 'checkpoints');
}

/**
 * How far a recomputed cell may be from the recorded one (relative perplexity). Backends
 * and decode paths agree to about 1e-6 on these grids; 0.1% is far above float noise and
 * far below any difference the verdicts read.
 */
export const DRIFT_TOLERANCE = 1e-3;

/**
 * The largest relative difference between recomputed and recorded cells; a cell further
 * off than `tolerance`, or one the record lacks, fails the check (exit 1, one line).
 */
export function checkDrift(grid: { model: string; cache: string; ppl: number }[], recorded: ShippedManifest['grid'], tolerance: number, file: string): number {
  let worst = { rel: 0, model: '', cache: '', ppl: 0, rec: 0 };
  for (const c of grid) {
    const rec = recorded.find((g) => g.model === c.model && g.cache === c.cache);
    if (!rec) throw new CheckFailure(`${file}: no recorded cell for ${c.model} ${c.cache} to compare the recomputed one with`);
    const rel = Math.abs(c.ppl / rec.ppl - 1);
    if (!(rel <= worst.rel)) worst = { rel, model: c.model, cache: c.cache, ppl: c.ppl, rec: rec.ppl };
  }
  if (!(worst.rel <= tolerance)) {
    throw new CheckFailure(
      `recomputed grid drifts from the one recorded in ${file}: ${worst.model} ${worst.cache} gives ${worst.ppl.toFixed(4)}, recorded ${worst.rec.toFixed(4)} (${(worst.rel * 100).toFixed(4)}% > tolerance ${(tolerance * 100).toFixed(4)}%)`,
    );
  }
  return worst.rel;
}

function sinkStats(name: string, ck: LoadedCheckpoint, a: AttentionStats): ModelSinkStats {
  const layers = a.layers.map((l) => l.heads.reduce((x, h) => x + h.first, 0) / l.heads.length);
  let strongest = { layer: 0, head: 0, first: -1 };
  for (const l of a.layers) for (const h of l.heads) if (h.first > strongest.first) strongest = { layer: l.layer, head: h.head, first: h.first };
  return {
    name,
    dir: ck.dir,
    sink_mode: ck.model.config.sink_mode,
    context: ck.model.config.max_position_embeddings,
    sink_metric: a.sink_metric.first,
    eps: a.eps,
    first_by_layer: layers,
    strongest_head: strongest,
    implicit_sink_metric: a.sink_metric.implicit_sink,
    windows: a.windows ?? 1,
    tokens_per_window: a.tokens,
  };
}

/** Parameters of a GPT-NeoX config, near enough for a cost estimate. */
function approxParams(c: { hidden_size: number; num_hidden_layers: number; vocab_size: number; intermediate_size: number }): number {
  const d = c.hidden_size;
  return c.num_hidden_layers * (4 * d * d + 2 * d * c.intermediate_size) + 2 * c.vocab_size * d;
}

/**
 * Recompute re-runs W tokens for every token: about 2 x params x W flops each. Run it over
 * RECOMPUTE_TOKENS while that stays under ~1e12 flops (a minute or two on 2 cores), fewer
 * when the model is larger, not at all below 16 tokens (Pythia-160M at W = 1024).
 */
function affordableRecompute(spec: GridSpec, params: number, log?: (l: string) => void): number {
  const perToken = 2 * params * spec.window;
  const n = Math.min(RECOMPUTE_TOKENS, spec.maxTokens, Math.floor(1e12 / perToken));
  if (n >= 16) return n;
  log?.(`validate: recompute skipped (about ${(perToken / 1e9).toFixed(0)} GFLOP per token at W = ${spec.window}; --recompute-tokens N runs it anyway)`);
  return 0;
}

interface RunOptions {
  progress?: boolean;
  log?: (l: string) => void;
  recomputeTokens?: number;
  resamples?: number;
}

/** The grid, references, sink statistics and verdicts of some models on one text. */
async function run(models: GridModel[], text: string, textFile: string, spec: GridSpec, opts: RunOptions) {
  const started = performance.now();
  const configs = models.map((m) => readCheckpointConfig(m.dir));
  const contexts = configs.map((c) => c.max_position_embeddings);
  const stats: ModelSinkStats[] = [];
  const recompute = opts.recomputeTokens ?? affordableRecompute(spec, Math.max(...configs.map(approxParams)), opts.log);
  const context = Math.min(...contexts);
  const { grid, curves } = await evaluateGrid(models, text, spec, {
    progress: opts.progress,
    log: opts.log,
    extra: [
      // Dense within the context (a sink token, where there is one, takes a position).
      { policy: 'dense', cache: `0+${context}`, maxTokens: context - 1 },
      ...(recompute > 0 ? [{ policy: 'recompute' as const, cache: `0+${spec.window}`, maxTokens: recompute }] : []),
    ],
    onModel: async (name, ck) => {
      stats.push(sinkStats(name, ck, await attentionStatsOver(ck, attentionWindows(ck, text, ATTENTION_WINDOWS, textFile, ATTENTION_WINDOW_TOKENS))));
    },
  });
  const sinks = grid.filter((c) => c.policy === 'sinks');
  const resamples = opts.resamples ?? BOOTSTRAP_RESAMPLES;
  const tokenizers = models.map((m) => fs.readFileSync(checkpointTokenizerPath(m.dir)));
  return {
    grid: sinks,
    references: grid.filter((c) => c.policy !== 'sinks'),
    verdicts: verdicts({ grid: sinks, curves }, spec.window, { resamples }),
    margin: MARGIN,
    resamples,
    spec,
    backend: grid[0]?.backend ?? 'unknown',
    decode: sinks[0]!.decode,
    seconds: (performance.now() - started) / 1000,
    models: stats,
    tokenizers_differ: tokenizers.some((t) => !t.equals(tokenizers[0]!)),
  };
}

/** What `validate` on a shipped ablation will run: its record, text and models, all checked. */
export interface ShippedPlan {
  dir: string;
  file: string;
  manifest: ShippedManifest;
  textFile: string;
  models: GridModel[];
}

/**
 * The checks of a shipped ablation (default: checkpoints/ of this package), with no backend:
 * the folder, its validate.json, its text and every model folder it names.
 */
export function planShipped(dirArg?: string): ShippedPlan {
  const dir = path.resolve(dirArg ?? shippedDir());
  checkInputDir(dir, 'checkpoints folder');
  const file = path.join(dir, 'validate.json');
  if (!fs.existsSync(file)) throw new UserError('no validate.json: this folder holds no shipped ablation (make one with `sinklm ablate --ship DIR`, or name models with --model)', { file: dir });
  const manifest = readJsonFile(file) as ShippedManifest;
  const textFile = path.join(dir, manifest.text);
  readText(textFile);
  const models = manifest.variants.map((v) => ({ name: v.name, dir: path.join(dir, v.dir) }));
  for (const m of models) checkCheckpointDir(m.dir, `model ${m.name} of ${file}`);
  return { dir, file, manifest, textFile, models };
}

/** The shipped ablation (default: checkpoints/ of this package), checked against its record. */
export async function validate(opts: RunOptions & { dir?: string; tolerance?: number } = {}): Promise<ValidateResult> {
  const { dir, file, manifest: m, textFile, models } = planShipped(opts.dir);
  const r = await run(models, readText(textFile), textFile, m.spec, opts);
  const maxRel = checkDrift(r.grid, m.grid, opts.tolerance ?? DRIFT_TOLERANCE, file);
  return {
    ...r,
    source: 'shipped',
    text: textFile,
    max_rel_diff_vs_recorded: maxRel,
    recorded_backend: m.backend,
    checkpoints: dir,
    variants: m.variants,
  };
}

/** `name=dir` as `--model` takes it; a bare dir is named after its folder. */
export function parseModelArg(arg: string): GridModel {
  const eq = arg.indexOf('=');
  const name = eq > 0 ? arg.slice(0, eq) : path.basename(path.resolve(arg));
  const dir = eq > 0 ? arg.slice(eq + 1) : arg;
  if (!name || !dir) throw new UserError(`"${arg}": write NAME=FOLDER, e.g. vanilla=path/to/pythia-160m`, { field: '--model' });
  return { name, dir };
}

export interface ModelsOptions {
  models: GridModel[];
  text: string;
  window?: number;
  maxTokens?: number;
}

/**
 * The checks of `validate --model`, with no backend: every model folder is a checkpoint
 * (config, weights, tokenizer), the text reads, the cache fits every model's context. Returns
 * the grid it will run.
 */
export function planModels(opts: ModelsOptions): GridSpec {
  if (opts.models.length === 0) throw new UserError('name at least one model', { field: '--model' });
  const names = opts.models.map((m) => m.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new UserError(`two models are called "${dup}"; give each its own NAME=FOLDER`, { field: '--model' });
  const contexts = opts.models.map((m) => {
    checkCheckpointDir(m.dir, `--model ${m.name}`);
    checkpointTokenizerPath(m.dir);
    return readCheckpointConfig(m.dir).max_position_embeddings;
  });
  readText(opts.text);
  const smallest = Math.min(...contexts);
  const window = opts.window ?? Math.floor(smallest / 2);
  if (!Number.isInteger(window) || window < 5) throw new UserError(`must be a whole number >= 5, so that 4+(W-4) keeps a recent token (got ${window})`, { field: '--window' });
  opts.models.forEach((m, i) => {
    if (window > contexts[i]!) {
      throw new UserError(`cache ${window} is larger than model ${m.name}'s context (max_position_embeddings ${contexts[i]}); choose --window <= ${contexts[i]}`, { field: '--window' });
    }
  });
  const maxTokens = opts.maxTokens ?? 8 * window;
  if (!Number.isInteger(maxTokens) || maxTokens < 2) throw new UserError(`must be a whole number >= 2 (got ${maxTokens})`, { field: '--max-tokens' });
  return { window, initial: [0, 1, 2, 4], maxTokens };
}

/** Any checkpoints on any text; planModels' checks come first. */
export async function validateModels(opts: RunOptions & ModelsOptions): Promise<ValidateResult> {
  const spec = planModels(opts);
  const text = readText(opts.text);
  const r = await run(opts.models, text, opts.text, spec, opts);
  return {
    ...r,
    source: 'models',
    text: path.resolve(opts.text),
    max_rel_diff_vs_recorded: null,
    recorded_backend: null,
    checkpoints: null,
    variants: null,
  };
}

export { SINK_EPS };
