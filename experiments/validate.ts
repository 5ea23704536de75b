/**
 * The main job: the Table-3 grid recomputed from the shipped checkpoints (checkpoints/),
 * with the paper's claims checked on it and the numbers compared to those the ablation
 * recorded when it made the checkpoints.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SinkMode } from '../core/config.js';
import { CheckFailure, UserError } from '../core/errors.js';
import { readJsonFile } from '../core/fsutil.js';
import { checkInputDir } from '../core/outpath.js';
import type { DecodePath } from '../infer/policy.js';
import { readText } from '../infer/text.js';
import { evaluateGrid, verdicts, type GridCell, type GridSpec, type Verdict } from './grid.js';

export interface ShippedManifest {
  text: string;
  spec: GridSpec;
  backend: string;
  created: string;
  variants: { name: string; sink_mode: SinkMode; dir: string; steps: number; tokens_seen: number; val_loss: number | null }[];
  grid: { model: string; sink_mode: SinkMode; cache: string; ppl: number }[];
}

export interface ValidateResult {
  grid: { model: string; sink_mode: SinkMode; cache: string; ppl: number }[];
  verdicts: Verdict[];
  spec: GridSpec;
  backend: string;
  /** Where the cached streaming step ran (see infer/policy.ts decodePath). */
  decode: DecodePath;
  seconds: number;
  /** Largest relative difference from the grid recorded at ablation time. */
  max_rel_diff_vs_recorded: number;
  recorded_backend: string;
  checkpoints: string;
  variants: ShippedManifest['variants'];
}

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

export async function validate(opts: { dir?: string; progress?: boolean; log?: (l: string) => void; tolerance?: number } = {}): Promise<ValidateResult> {
  const dir = path.resolve(opts.dir ?? shippedDir());
  checkInputDir(dir, 'checkpoints folder');
  const file = path.join(dir, 'validate.json');
  if (!fs.existsSync(file)) throw new UserError('no validate.json: this folder holds no shipped ablation (make one with `sinklm ablate --ship DIR`)', { file: dir });
  const m = readJsonFile(file) as ShippedManifest;
  const text = readText(path.join(dir, m.text));
  const started = performance.now();
  const { grid } = await evaluateGrid(
    m.variants.map((v) => ({ name: v.name, dir: path.join(dir, v.dir) })),
    text,
    m.spec,
    { progress: opts.progress, log: opts.log },
  );
  const maxRel = checkDrift(grid, m.grid, opts.tolerance ?? DRIFT_TOLERANCE, file);
  return {
    grid: grid.map((c: GridCell) => ({ model: c.model, sink_mode: c.sink_mode, cache: c.cache, ppl: c.ppl })),
    verdicts: verdicts(grid, m.spec.window),
    spec: m.spec,
    backend: grid[0]?.backend ?? 'unknown',
    decode: grid[0]!.decode,
    seconds: (performance.now() - started) / 1000,
    max_rel_diff_vs_recorded: maxRel,
    recorded_backend: m.backend,
    checkpoints: dir,
    variants: m.variants,
  };
}
