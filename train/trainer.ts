/**
 * The pre-training loop: shards -> batches -> AdamW steps -> checkpoints.
 * Flat on purpose (nanoGPT's train.py): set-up, then one loop that steps, logs,
 * evaluates and saves. Everything a resumed run needs is in the checkpoint, so a run
 * killed and resumed produces the same losses as one that never stopped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { ensureBackend } from '../core/backend.js';
import type { RunConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';
import { checkOutputPath } from '../core/outpath.js';
import { progressBar, formatDuration } from '../core/progress.js';
import { prepareData, readSplitTokens, type PreparedData } from '../data/prepare.js';
import { BatchSampler, evalBatches, type Batch } from '../data/sampler.js';
import { CONFIG_FILE, readCheckpointConfig, readCheckpointWeights, saveModel, TOKENIZER_FILE } from '../model/checkpoint.js';
import { GPTNeoX } from '../model/neox.js';
import { initParams } from '../model/params.js';
import { readSafetensors, writeSafetensors } from '../model/safetensors.js';
import { modelConfigFor } from './modelconfig.js';
import { AdamW } from './optimizer.js';
import { ReplicaPool, shareGradients } from './replicas.js';
import {
  checkOutDir,
  checkSameRun,
  listCheckpoints,
  METRICS_FILE,
  OPTIMIZER_FILE,
  publishTop,
  pruneCheckpoints,
  readState,
  RUN_FILE,
  STATE_FILE,
  stepDirName,
  truncateMetrics,
  writeCheckpointDir,
  type TrainerState,
} from './rundir.js';
import { learningRate } from './schedule.js';
import { TensorBoardWriter } from './tensorboard.js';

export interface TrainOptions {
  /** Output folder; default cfg.train.out, else runs/<config name>. */
  out?: string;
  /** Stop after this step (the schedule still spans train.max_steps), e.g. to split a run. */
  stopAt?: number;
  resume?: boolean;
  /** Progress bar on stderr (default: when stderr is a TTY). */
  progress?: boolean;
  /** Log lines (default: stderr). */
  log?: (line: string) => void;
  /** Handle SIGINT/SIGTERM by saving and returning (default true). */
  handleSignals?: boolean;
  /** Called after every optimizer step (tests use it to watch memory). */
  onStep?: (step: number) => void;
}

export interface TrainResult {
  out: string;
  step: number;
  stopped: 'finished' | 'stop-at' | 'signal';
  loss: number | null;
  valLoss: number | null;
  tokensPerSecond: number;
  backend: string;
  seconds: number;
}

export function defaultOutDir(cfg: RunConfig): string {
  return cfg.train.out ?? path.join('runs', cfg.name ?? path.basename(cfg.source, '.json'));
}

/**
 * The settings a resumed run must share with the run it continues. The replica count may
 * change between sessions (more cores free): the batch and its mean loss are the same, only
 * the summation order of the gradient differs, so such a run matches one with a constant
 * count to float rounding, not bit for bit.
 */
function runIdentity(cfg: RunConfig): Record<string, unknown> {
  const { out: _o, log_every: _l, eval_every: _e, eval_batches: _b, ckpt_every: _c, keep_last: _k, snapshot_every: _s, replicas: _r, ...train } = cfg.train;
  return { model: cfg.model, data: { ...cfg.data, dir: undefined }, train };
}

function toTensors(b: Batch, B: number, T: number) {
  return {
    input: tf.tensor2d(b.input, [B, T], 'int32'),
    target: tf.tensor1d(b.target, 'int32'),
    mask: tf.tensor1d(b.mask, 'float32'),
  };
}

/** Mean validation loss over fixed batches. */
export function evaluate(model: GPTNeoX, batches: Batch[], B: number, T: number): number {
  let sum = 0;
  let count = 0;
  for (const b of batches) {
    const [s, n] = tf.tidy(() => {
      const { input, target, mask } = toTensors(b, B, T);
      const nll = model.tokenNll(model.forward(input), target);
      return [tf.sum(tf.mul(nll, mask)).dataSync()[0]!, tf.sum(mask).dataSync()[0]!];
    });
    sum += s;
    count += n;
  }
  return sum / Math.max(1, count);
}

export async function train(cfg: RunConfig, opts: TrainOptions = {}): Promise<TrainResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const info = await ensureBackend();
  const out = path.resolve(opts.out ?? defaultOutDir(cfg));
  const t = cfg.train;
  checkOutputPath(out, 'folder');
  const mode = checkOutDir(out, !!opts.resume);

  // Data: prepared (or reused) exactly as `sinklm prepare` would.
  const prep: PreparedData = await prepareData(cfg, { log });
  const trainSplit = await readSplitTokens(prep, 'train');
  const valSplit = await readSplitTokens(prep, 'validation');
  const mc = modelConfigFor(cfg, prep.tokenizer);
  const sinkId = mc.sink_mode === 'token' ? mc.sink_token_id : null;
  const minTokens = t.seq_len + 1;
  if (trainSplit.tokens.length < minTokens || valSplit.tokens.length < minTokens) {
    throw new UserError(
      `the corpus is too small for train.seq_len ${t.seq_len}: train has ${trainSplit.tokens.length} tokens, validation ${valSplit.tokens.length}`,
      { file: cfg.source, field: 'train.seq_len' },
    );
  }
  const samplerOpts = { tokens: trainSplit.tokens, seqLen: t.seq_len, batchSize: t.batch_size, seed: t.seed, sinkTokenId: sinkId };
  const valBatches = evalBatches(valSplit.tokens, t.seq_len, t.batch_size, t.eval_batches, sinkId);

  // Model, optimizer and sampler: fresh, or exactly as the newest checkpoint left them.
  let model: GPTNeoX;
  let sampler: BatchSampler;
  let state: TrainerState | undefined;
  const identity = { ...runIdentity(cfg), manifest_hash: prep.manifestHash };
  if (mode === 'resume') {
    const runFile = path.join(out, RUN_FILE);
    const recorded = (JSON.parse(fs.readFileSync(runFile, 'utf8')) as { identity: Record<string, unknown> }).identity;
    // Runs started before replicas could change recorded the count in their identity.
    delete (recorded.train as Record<string, unknown> | undefined)?.replicas;
    // Runs started before model.init existed: the init only shaped step 0, which is past.
    const rm = recorded.model as Record<string, unknown> | undefined;
    if (rm && !('init' in rm)) rm.init = cfg.model.init;
    checkSameRun(recorded, identity, cfg.source);
    const last = listCheckpoints(out).at(-1)!;
    state = readState(last.dir);
    const saved = readCheckpointConfig(last.dir);
    model = new GPTNeoX(saved, readCheckpointWeights(last.dir, saved));
    sampler = BatchSampler.restore(samplerOpts, state.sampler as Parameters<typeof BatchSampler.restore>[1]);
    truncateMetrics(out, state.step);
    log(`sinklm train: resuming ${out} from step ${state.step}`);
  } else {
    fs.mkdirSync(out, { recursive: true });
    writeFileAtomic(path.join(out, RUN_FILE), JSON.stringify({ config: { ...cfg, source: undefined }, identity }, null, 2) + '\n');
    model = new GPTNeoX(mc, initParams(mc, t.seed, cfg.model.init));
    sampler = new BatchSampler(samplerOpts);
  }
  const opt = new AdamW(model.params, model.specs, {
    beta1: t.beta1,
    beta2: t.beta2,
    eps: t.eps,
    weightDecay: t.weight_decay,
    gradClip: t.grad_clip,
  });
  if (state) {
    const last = listCheckpoints(out).at(-1)!;
    opt.load(readSafetensors(path.join(last.dir, OPTIMIZER_FILE)).tensors, state.optimizer_t);
  }

  // Data-parallel helpers (train.replicas > 1) start from the weights just loaded or made.
  let pool: ReplicaPool | null = null;
  try {
    if (t.replicas > 1) {
      pool = await ReplicaPool.start(model, t.replicas, info.backend);
      log(`sinklm train: ${t.replicas} data-parallel replicas, ${t.batch_size / t.replicas} rows of every batch each`);
    }
  } catch (e) {
    opt.dispose();
    model.dispose();
    throw e;
  }
  const tb = new TensorBoardWriter(out);
  const metrics = fs.openSync(path.join(out, METRICS_FILE), 'a');
  const B = t.batch_size;
  const T = t.seq_len;
  const tokensPerStep = B * T * t.grad_accum;
  const endStep = Math.min(t.max_steps, opts.stopAt ?? t.max_steps);
  let step = state?.step ?? 0;
  let tokensSeen = state?.tokens_seen ?? 0;
  let wall = state?.wall_seconds ?? 0;
  let lastLoss: number | null = state?.last_loss ?? null;
  let valLoss: number | null = state?.val_loss ?? null;
  const schedule = { lr: t.lr, totalSteps: t.max_steps, warmupFrac: t.warmup_frac, minLrRatio: t.min_lr_ratio };
  const bar = progressBar({ total: endStep, unit: 'step', label: 'train', enabled: opts.progress });
  bar.update(step, { loss: lastLoss?.toFixed(3) ?? '-', tps: '-' });

  let stopRequested = false;
  const onSignal = () => {
    stopRequested = true;
  };
  if (opts.handleSignals !== false) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }

  // Losses stay on the device until a log line needs them: no host round-trip per step.
  let pending: { step: number; loss: tf.Scalar; lr: number }[] = [];
  let lastNorm: tf.Scalar | null = null;
  let intervalStart = performance.now();
  let intervalTokens = 0;
  let tokensPerSecond = 0;

  const flushLogs = () => {
    if (!pending.length) return;
    const losses = tf.tidy(() => tf.stack(pending.map((p) => p.loss)).dataSync());
    const norm = lastNorm ? lastNorm.dataSync()[0]! : NaN;
    const bad = pending.findIndex((_, i) => !Number.isFinite(losses[i]!));
    const entries = pending.map((p, i) => ({ ...p, value: losses[i]! }));
    tf.dispose(pending.map((p) => p.loss));
    pending = [];
    if (bad >= 0) {
      const good = listCheckpoints(out).at(-1);
      throw new UserError(
        `loss became ${entries[bad]!.value} at step ${entries[bad]!.step}; stopped without saving (last good checkpoint: ${good ? good.dir : 'none'}). Lower train.lr or raise train.warmup_frac`,
        { file: cfg.source, field: 'train.lr' },
      );
    }
    const seconds = (performance.now() - intervalStart) / 1000;
    tokensPerSecond = intervalTokens / Math.max(seconds, 1e-9);
    wall += seconds;
    intervalStart = performance.now();
    intervalTokens = 0;
    const mean = entries.reduce((a, e) => a + e.value, 0) / entries.length;
    const last = entries.at(-1)!;
    lastLoss = mean;
    const line = { step: last.step, loss: mean, lr: last.lr, grad_norm: norm, tokens_per_s: tokensPerSecond, tokens: tokensSeen, backend: info.backend, time: new Date().toISOString() };
    fs.writeSync(metrics, JSON.stringify(line) + '\n');
    tb.scalar('train/loss', mean, last.step);
    tb.scalar('train/lr', last.lr, last.step);
    tb.scalar('train/grad_norm', norm, last.step);
    tb.scalar('train/tokens_per_s', tokensPerSecond, last.step);
    const eta = ((endStep - step) * tokensPerStep) / Math.max(tokensPerSecond, 1);
    bar.update(step, { loss: mean.toFixed(3), tps: Math.round(tokensPerSecond), eta: formatDuration(eta) });
    if (!bar.enabled) log(`step ${last.step}/${endStep}  loss ${mean.toFixed(4)}  lr ${last.lr.toExponential(2)}  ${Math.round(tokensPerSecond)} tok/s  eta ${formatDuration(eta)}`);
  };

  const save = async () => {
    flushLogs();
    const trainerState: TrainerState = {
      step,
      tokens_seen: tokensSeen,
      optimizer_t: opt.t,
      sampler: sampler.state(),
      manifest_hash: prep.manifestHash,
      backend: info.backend,
      wall_seconds: wall,
      last_loss: lastLoss,
      val_loss: valLoss,
    };
    const weights = await model.weights();
    const optState = await opt.state();
    const dir = await writeCheckpointDir(out, step, async (tmp) => {
      await saveModel(tmp, model, { tokenizerPath: prep.tokenizer.path, weights });
      // Fault injection for the crash-safety test: die half-way through a save.
      if (process.env.SINKLM_TEST_CRASH_IN_SAVE === String(step)) process.kill(process.pid, 'SIGKILL');
      writeSafetensors(path.join(tmp, OPTIMIZER_FILE), optState);
      writeFileAtomic(path.join(tmp, STATE_FILE), JSON.stringify(trainerState, null, 2) + '\n');
    });
    publishTop(out, dir);
    pruneCheckpoints(out, t.keep_last);
    tb.flush();
  };

  const started = performance.now();
  let stopped: TrainResult['stopped'] = 'finished';
  try {
    while (step < endStep) {
      step += 1;
      const lr = learningRate(step, schedule);
      const grads = new Map<string, tf.Tensor>();
      let loss: tf.Scalar | null = null;
      for (let a = 0; a < t.grad_accum; a++) {
        const batch = sampler.next();
        const { loss: value, grads: g } = pool ? await pool.gradients(model, batch, B, T) : shareGradients(model, { ...batch, B, T });
        for (const name of model.params.keys()) {
          const gi = g.get(name)!;
          const prev = grads.get(name);
          grads.set(name, prev ? tf.tidy(() => tf.add(prev, gi)) : gi);
          if (prev) tf.dispose([prev, gi]);
        }
        loss = loss ? (tf.tidy(() => tf.add(loss!, value)) as tf.Scalar) : value;
        if (loss !== value) value.dispose();
      }
      if (t.grad_accum > 1) {
        for (const [name, g] of grads) {
          grads.set(name, tf.tidy(() => tf.div(g, t.grad_accum)));
          g.dispose();
        }
        const l = loss!;
        loss = tf.tidy(() => tf.div(l, t.grad_accum)) as tf.Scalar;
        l.dispose();
      }
      lastNorm?.dispose();
      lastNorm = opt.apply(grads, lr);
      tf.dispose([...grads.values()]);
      await pool?.broadcast(model);
      tokensSeen += tokensPerStep;
      intervalTokens += tokensPerStep;
      pending.push({ step, loss: loss!, lr });
      opts.onStep?.(step);

      if (step % t.log_every === 0 || step === endStep) flushLogs();
      else bar.update(step, {});
      if (step % t.eval_every === 0 || step === endStep) {
        flushLogs();
        valLoss = evaluate(model, valBatches, B, T);
        tb.scalar('val/loss', valLoss, step);
        tb.scalar('val/ppl', Math.exp(valLoss), step);
        fs.writeSync(metrics, JSON.stringify({ step, val_loss: valLoss, val_ppl: Math.exp(valLoss) }) + '\n');
        if (!bar.enabled) log(`step ${step}  val loss ${valLoss.toFixed(4)}  ppl ${Math.exp(valLoss).toFixed(2)}`);
      }
      if (t.snapshot_every > 0 && step % t.snapshot_every === 0) {
        await saveModel(path.join(out, 'snapshots', stepDirName(step)), model, { tokenizerPath: prep.tokenizer.path });
      }
      if (step % t.ckpt_every === 0 || step === endStep) await save();
      // Let signal handlers run: tfjs-node ops are synchronous and would starve them.
      await new Promise((r) => setImmediate(r));
      if (stopRequested) {
        if (step % t.ckpt_every !== 0 && step !== endStep) await save();
        stopped = 'signal';
        log(`sinklm train: interrupted; saved step ${step} to ${out} (continue with --resume)`);
        break;
      }
    }
    if (stopped === 'finished' && endStep < t.max_steps) stopped = 'stop-at';
  } finally {
    bar.stop();
    if (opts.handleSignals !== false) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    tf.dispose(pending.map((p) => p.loss));
    lastNorm?.dispose();
    pool?.close();
    tb.close();
    fs.closeSync(metrics);
    opt.dispose();
    model.dispose();
  }
  return {
    out,
    step,
    stopped,
    loss: lastLoss,
    valLoss,
    tokensPerSecond,
    backend: info.backend,
    seconds: (performance.now() - started) / 1000,
  };
}

export { CONFIG_FILE, TOKENIZER_FILE };
