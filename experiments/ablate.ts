/**
 * The ablation that tests the paper's claim: the same model, data, seed and budget in each
 * sink mode (only model.sink_mode differs), trained (or reused, or resumed), then streamed
 * over the held-out test text under the Table-3 caches, with dense and recompute as
 * references, validation loss, attention-sink statistics and their emergence over steps.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunConfig, SinkMode } from '../core/config.js';
import { makeDirs, writeFileAtomic } from '../core/fsutil.js';
import { checkOutputPath } from '../core/outpath.js';
import { prepareData } from '../data/prepare.js';
import type { AttentionStats } from '../infer/attention.js';
import { readText } from '../infer/text.js';
import { CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE } from '../model/checkpoint.js';
import { listCheckpoints, METRICS_FILE, readMetrics, readState, STATE_FILE } from '../train/rundir.js';
import { train } from '../train/trainer.js';
import { emergenceTrace, type EmergencePoint } from './emergence.js';
import { evaluateGrid, gridCaches, type GridCell, type GridSpec } from './grid.js';
import { verdicts, type Verdict } from './verdicts.js';
import { writeReport } from './report.js';

/** Windows of the test text the attention statistics average over (Gu et al. use 100 x 64 tokens). */
export const ATTENTION_WINDOWS = 8;

export interface VariantSummary {
  name: string;
  sink_mode: SinkMode;
  dir: string;
  steps: number;
  tokens_seen: number;
  val_loss: number | null;
  train_seconds: number;
  attention: AttentionStats;
  /** Sink metric at each weight snapshot taken during training, and at the end. */
  emergence: EmergencePoint[];
  metrics: { step: number; loss?: number; val_loss?: number }[];
}

export interface AblationResult {
  config: string;
  created: string;
  backend: string;
  spec: GridSpec;
  caches: string[];
  grid: GridCell[];
  verdicts: Verdict[];
  variants: VariantSummary[];
  curves: { model: string; cache: string; policy: string; nll: number[] }[];
  out: string;
}

export function variantConfig(cfg: RunConfig, mode: SinkMode): RunConfig {
  const base = (cfg.name ?? 'ablate').replace(/-(none|token|softmax1|logit)$/, '');
  return { ...cfg, name: `${base}-${mode}`, model: { ...cfg.model, sink_mode: mode } };
}

export function ablateRoot(cfg: RunConfig, out?: string): string {
  return path.resolve(out ?? cfg.ablate.out ?? path.join('runs', (cfg.name ?? 'ablate').replace(/-(none|token|softmax1|logit)$/, '')));
}

export function gridSpec(cfg: RunConfig): GridSpec {
  const window = cfg.ablate.window ?? Math.floor(cfg.train.seq_len / 2);
  return { window, initial: cfg.ablate.initial, maxTokens: cfg.ablate.max_tokens ?? 20 * window };
}

/** Trains what is missing: finished variants are reused, interrupted ones resumed. */
export async function trainVariants(cfg: RunConfig, root: string, log: (l: string) => void, progress?: boolean): Promise<void> {
  for (const mode of cfg.ablate.variants) {
    const dir = path.join(root, mode);
    const last = listCheckpoints(dir).at(-1);
    const done = last && readState(last.dir).step >= cfg.train.max_steps;
    if (done) {
      log(`ablate: ${mode}: trained (step ${cfg.train.max_steps}), reusing ${dir}`);
      continue;
    }
    log(`ablate: ${mode}: ${last ? `resuming from step ${last.step}` : 'training'} -> ${dir}`);
    await train(variantConfig(cfg, mode), { out: dir, resume: !!last, progress, log });
  }
}

export async function ablate(
  cfg: RunConfig,
  opts: {
    out?: string;
    progress?: boolean;
    log?: (l: string) => void;
    skipTraining?: boolean;
    /** Where shipAblation will copy the result: checked here, before any training, so a bad one costs nothing. */
    ship?: string;
  } = {},
): Promise<AblationResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const root = ablateRoot(cfg, opts.out);
  checkOutputPath(root, 'folder', opts.out !== undefined ? '--out' : 'ablate.out');
  if (opts.ship !== undefined) checkOutputPath(opts.ship, 'folder', '--ship');
  if (!opts.skipTraining) await trainVariants(cfg, root, log, opts.progress);

  const prep = await prepareData(cfg, { log });
  const textFile = path.join(prep.dir, 'test_stream.txt');
  const text = readText(textFile);
  const spec = gridSpec(cfg);
  const models = cfg.ablate.variants.map((mode) => ({ name: mode === 'none' ? 'vanilla' : mode, dir: path.join(root, mode) }));
  const context = cfg.model.max_position_embeddings ?? cfg.train.seq_len;
  log(`ablate: streaming ${spec.maxTokens} test tokens per cache (W = ${spec.window}) for ${models.length} models`);
  const { grid, curves } = await evaluateGrid(models, text, spec, {
    progress: opts.progress,
    log,
    extra: [
      // Dense within the context (the sink token, where there is one, takes a position).
      { policy: 'dense', cache: `0+${context}`, maxTokens: context - 1 },
      { policy: 'recompute', cache: `0+${spec.window}` },
    ],
  });

  const variants: VariantSummary[] = [];
  for (const [i, mode] of cfg.ablate.variants.entries()) {
    const m = models[i]!;
    // Statistics over several windows of the test text, at every snapshot and at the end;
    // the last point is the variant's final weights, whose full statistics the report shows.
    let attention: AttentionStats | undefined;
    const onPoint = (_p: EmergencePoint, stats: AttentionStats) => (attention = stats);
    const emergence = (await emergenceTrace(m.dir, text, { windows: ATTENTION_WINDOWS, file: textFile, name: m.name, onPoint })).points;
    attention!.model = m.name;
    const state = readState(m.dir);
    variants.push({
      name: m.name,
      sink_mode: mode,
      dir: m.dir,
      steps: state.step,
      tokens_seen: state.tokens_seen,
      val_loss: state.val_loss,
      train_seconds: state.wall_seconds,
      attention: attention!,
      emergence,
      metrics: readMetrics<VariantSummary['metrics'][number]>(m.dir),
    });
  }

  const result: AblationResult = {
    config: cfg.source,
    created: new Date().toISOString(),
    backend: grid[0]?.backend ?? 'unknown',
    spec,
    caches: gridCaches(spec),
    grid,
    verdicts: verdicts({ grid, curves }, spec.window),
    variants,
    curves: curves.map((c) => ({ ...c, nll: Array.from(c.nll) })),
    out: root,
  };
  await writeReport(result, path.join(root, 'report'));
  return result;
}

/**
 * Copies what `validate` needs into a folder meant for git: each variant's HF files and
 * training logs, the report, the test text, and validate.json with the grid to reproduce.
 */
export function shipAblation(result: AblationResult, textFile: string, dest: string): void {
  checkOutputPath(dest, 'folder', '--ship');
  makeDirs(dest);
  for (const v of result.variants) {
    const to = path.join(dest, v.sink_mode);
    makeDirs(to);
    for (const f of [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, METRICS_FILE, STATE_FILE]) {
      writeFileAtomic(path.join(to, f), fs.readFileSync(path.join(v.dir, f)));
    }
  }
  const reportDir = path.join(result.out, 'report');
  makeDirs(path.join(dest, 'report'));
  for (const f of fs.readdirSync(reportDir)) writeFileAtomic(path.join(dest, 'report', f), fs.readFileSync(path.join(reportDir, f)));
  writeFileAtomic(path.join(dest, 'test_stream.txt'), fs.readFileSync(textFile));
  const manifest = {
    about: 'Shipped ablation checkpoints; `sinklm validate` recomputes `grid` from them.',
    created: result.created,
    backend: result.backend,
    text: 'test_stream.txt',
    spec: result.spec,
    variants: result.variants.map((v) => ({ name: v.name, sink_mode: v.sink_mode, dir: v.sink_mode, steps: v.steps, tokens_seen: v.tokens_seen, val_loss: v.val_loss })),
    grid: result.grid.filter((c) => c.policy === 'sinks').map((c) => ({ model: c.model, sink_mode: c.sink_mode, cache: c.cache, ppl: c.ppl })),
  };
  writeFileAtomic(path.join(dest, 'validate.json'), JSON.stringify(manifest, null, 2) + '\n');
}
