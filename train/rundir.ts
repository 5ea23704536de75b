/**
 * A training run's output folder, which is itself a checkpoint (HF files at the top, so
 * `--checkpoint OUT` works), plus the training state and logs:
 *
 *   OUT/config.json, model.safetensors, tokenizer.json   newest weights (HF layout), links into latest/
 *   OUT/trainer_state.json                               step, sampler, optimizer t, hashes (link too)
 *   OUT/latest -> checkpoints/step-000500                the newest complete checkpoint
 *   OUT/run.json                                         the config and data manifest it was started with
 *   OUT/metrics.jsonl, OUT/events.out.tfevents.*         logs (JSON lines, TensorBoard)
 *   OUT/checkpoints/step-000500/                         last K complete checkpoints (+ optimizer.safetensors)
 *   OUT/snapshots/step-000100/                           optional weight snapshots (sink emergence)
 *
 * Checkpoint and snapshot folders are written by core/atomicdir (temporary sibling, fsync,
 * rename), so a kill at any moment leaves the previous ones whole. The top-level files
 * are fixed symbolic links through the one link `latest`: publishing a checkpoint is one
 * rename of that link, so the top level never mixes new weights with an old state file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../core/errors.js';
import { isStaleName, writeDirAtomic } from '../core/atomicdir.js';
import { fsyncDir, readJsonFile, writeFileAtomic } from '../core/fsutil.js';
import { CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE } from '../model/checkpoint.js';

export const STATE_FILE = 'trainer_state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const RUN_FILE = 'run.json';
export const METRICS_FILE = 'metrics.jsonl';

export interface TrainerState {
  step: number;
  tokens_seen: number;
  optimizer_t: number;
  sampler: unknown;
  manifest_hash: string;
  backend: string;
  wall_seconds: number;
  /** Loss of the step saved. */
  last_loss: number | null;
  val_loss: number | null;
  /** Steps since the last log line (absent in checkpoints of older sinklm). */
  log_interval?: LoggedStep[];
}

/** One training step as the log sees it (a log line is the mean over an interval of these). */
export interface LoggedStep {
  step: number;
  lr: number;
  loss: number;
  grad_norm: number;
}

export function stepDirName(step: number): string {
  return `step-${String(step).padStart(6, '0')}`;
}

/** Complete checkpoints (those with a state file), newest last. */
export function listCheckpoints(out: string): { step: number; dir: string }[] {
  const root = path.join(out, 'checkpoints');
  if (!fs.existsSync(root)) return [];
  return fs
    .readdirSync(root)
    .filter((n) => /^step-\d+$/.test(n) && fs.existsSync(path.join(root, n, STATE_FILE)))
    .map((n) => ({ step: Number(n.slice(5)), dir: path.join(root, n) }))
    .sort((a, b) => a.step - b.step);
}

/** The lines of a run's metrics.jsonl (training and validation records), oldest first; none if absent. */
export function readMetrics<T = Record<string, unknown>>(dir: string): T[] {
  const file = path.join(dir, METRICS_FILE);
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as T);
}

export function readState(dir: string): TrainerState {
  return readJsonFile(path.join(dir, STATE_FILE)) as TrainerState;
}

/** Writes checkpoints/step-N atomically: `fill` writes the files into the temporary folder it is given. */
export async function writeCheckpointDir(out: string, step: number, fill: (tmp: string) => Promise<void>): Promise<string> {
  return writeDirAtomic(path.join(out, 'checkpoints', stepDirName(step)), fill);
}

/** Writes snapshots/step-N atomically, as a checkpoint is written. */
export async function writeSnapshotDir(out: string, step: number, fill: (tmp: string) => Promise<void>): Promise<string> {
  return writeDirAtomic(path.join(out, 'snapshots', stepDirName(step)), fill);
}

export const LATEST_LINK = 'latest';
const TOP_FILES = [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, STATE_FILE];

/** Points `link` at `target` in one rename (a symlink made beside it, then moved over it). */
function swapLink(link: string, target: string): void {
  try {
    if (fs.readlinkSync(link) === target) return;
  } catch {
    // Missing, or a regular file left by older sinklm: replaced below.
  }
  const tmp = path.join(path.dirname(link), `.${path.basename(link)}.tmp-${process.pid}`);
  fs.rmSync(tmp, { force: true });
  fs.symlinkSync(target, tmp);
  fs.renameSync(tmp, link);
}

/**
 * Makes `ckptDir` the run's newest weights at the top of OUT: one rename of the `latest`
 * link. The top-level files are links through it, made once; runs written by older sinklm
 * had copies there, which are replaced by links while `latest` already names the
 * checkpoint those copies came from, so no moment mixes two checkpoints.
 */
export function publishTop(out: string, ckptDir: string): void {
  swapLink(path.join(out, LATEST_LINK), path.relative(out, ckptDir));
  for (const f of TOP_FILES) {
    if (fs.existsSync(path.join(ckptDir, f))) swapLink(path.join(out, f), path.join(LATEST_LINK, f));
  }
  fsyncDir(out);
}

export function pruneCheckpoints(out: string, keep: number): void {
  const all = listCheckpoints(out);
  for (const c of all.slice(0, Math.max(0, all.length - keep))) fs.rmSync(c.dir, { recursive: true, force: true });
  // Leftovers of runs killed mid-save.
  for (const sub of ['checkpoints', 'snapshots']) {
    const root = path.join(out, sub);
    for (const n of fs.existsSync(root) ? fs.readdirSync(root) : []) {
      if (isStaleName(n)) fs.rmSync(path.join(root, n), { recursive: true, force: true });
    }
  }
}

/** Keeps metrics lines up to `step` (a resumed run re-logs what came after its checkpoint). */
export function truncateMetrics(out: string, step: number): void {
  const file = path.join(out, METRICS_FILE);
  if (!fs.existsSync(file)) return;
  const kept = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => {
      if (!l.trim()) return false;
      try {
        return (JSON.parse(l) as { step: number }).step <= step;
      } catch {
        return false;
      }
    });
  writeFileAtomic(file, kept.map((l) => l + '\n').join(''));
}

/**
 * Compares the settings a checkpoint was trained with to the current ones; any
 * difference that would change the run is bad input naming the field.
 */
export function checkSameRun(
  saved: Record<string, unknown>,
  current: Record<string, unknown>,
  file: string,
  prefix = '',
): void {
  for (const key of new Set([...Object.keys(saved), ...Object.keys(current)])) {
    const a = saved[key];
    const b = current[key];
    const field = prefix ? `${prefix}.${key}` : key;
    if (typeof a === 'object' && a && typeof b === 'object' && b && !Array.isArray(a)) {
      checkSameRun(a as Record<string, unknown>, b as Record<string, unknown>, file, field);
    } else if (JSON.stringify(a) !== JSON.stringify(b)) {
      throw new UserError(
        `the run in this folder was made with ${JSON.stringify(a)}, the config now says ${JSON.stringify(b)}; use another --out or restore the config`,
        { file, field },
      );
    }
  }
}

/** Refuses to write into a folder that holds something other than this run. */
export function checkOutDir(out: string, resume: boolean): 'fresh' | 'resume' {
  const hasRun = fs.existsSync(path.join(out, RUN_FILE));
  if (resume) {
    if (!hasRun || listCheckpoints(out).length === 0) {
      throw new UserError('--resume: no complete checkpoint here to resume from', { file: out });
    }
    return 'resume';
  }
  if (hasRun) {
    const ckpts = listCheckpoints(out);
    throw new UserError(
      `already holds a training run${ckpts.length ? ` (step ${ckpts.at(-1)!.step})` : ''}; pass --resume to continue it, or choose another --out`,
      { file: out },
    );
  }
  if (fs.existsSync(out) && fs.readdirSync(out).length > 0) {
    throw new UserError('is not empty and holds no sinklm run; choose another --out', { file: out });
  }
  return 'fresh';
}
