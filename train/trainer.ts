/**
 * The pre-training loop: shards -> batches -> AdamW steps -> checkpoints.
 * Flat on purpose (nanoGPT's train.py): set-up, then one loop that steps, logs,
 * evaluates and saves. Everything a resumed run needs is in the checkpoint, so a run
 * killed and resumed produces the same losses as one that never stopped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { checkDevice, ensureBackend, retainFreedMemory } from '../core/backend.js';
import type { RunConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { makeDirs, writeFileAtomic } from '../core/fsutil.js';
import { checkOutputPath } from '../core/outpath.js';
import { progressBar, formatDuration } from '../core/progress.js';
import { prepareData, readSplitTokens, type PreparedData } from '../data/prepare.js';
import { BatchSampler, evalBatches, type Batch } from '../data/sampler.js';
import { CONFIG_FILE, nonFiniteTensor, readCheckpointConfig, readCheckpointWeights, saveModel, TOKENIZER_FILE } from '../model/checkpoint.js';
import { GPTNeoX } from '../model/neox.js';
import { initParams } from '../model/params.js';
import { readSafetensors, writeSafetensors, type TensorMap } from '../model/safetensors.js';
import { TokenWeightedSum } from './accumulate.js';
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
  truncateMetrics,
  writeCheckpointDir,
  writeSnapshotDir,
  type LoggedStep,
  type TrainerState,
} from './rundir.js';
import { learningRate } from './schedule.js';
import { dropEventsAfter, TensorBoardWriter } from './tensorboard.js';

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
  /** 'already-finished': a resume found the run at its last step and did nothing. */
  stopped: 'finished' | 'stop-at' | 'signal' | 'already-finished';
  /** Training loss of the last step taken (the step it stopped at). */
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

/** Mean validation loss over fixed batches: the sums stay on the device, one read at the end. */
export async function evaluate(model: GPTNeoX, batches: Batch[], B: number, T: number): Promise<number> {
  const sums = batches.map((b) =>
    tf.tidy(() => {
      const { input, target, mask } = toTensors(b, B, T);
      const nll = model.tokenNll(model.forward(input), target);
      return tf.stack([tf.sum(tf.mul(nll, mask)), tf.sum(mask)]);
    }),
  );
  const packed = tf.tidy(() => tf.sum(tf.stack(sums), 0));
  const [sum, count] = await packed.data();
  tf.dispose([...sums, packed]);
  return sum! / Math.max(1, count!);
}

export async function train(cfg: RunConfig, opts: TrainOptions = {}): Promise<TrainResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const info = await ensureBackend();
  retainFreedMemory();
  const out = path.resolve(opts.out ?? defaultOutDir(cfg));
  const t = cfg.train;
  checkOutputPath(out, 'folder');
  const mode = checkOutDir(out, !!opts.resume);
  if (t.replicas > 1 && info.backend === 'webgpu') {
    throw new UserError('data-parallel replicas run on CPU backends; on webgpu the GPU runs the whole batch: set train.replicas to 1', { file: cfg.source, field: 'train.replicas' });
  }

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
    const end = Math.min(t.max_steps, opts.stopAt ?? t.max_steps);
    if (state.step >= end) {
      const why = end === t.max_steps ? `finished (train.max_steps ${t.max_steps})` : `past --max-steps ${end}`;
      log(`sinklm train: ${out} is already at step ${state.step}, ${why}; nothing to do`);
      return { out, step: state.step, stopped: 'already-finished', loss: state.last_loss, valLoss: state.val_loss, tokensPerSecond: 0, backend: info.backend, seconds: 0 };
    }
    // Top-level files of runs saved by older sinklm become links to this checkpoint.
    publishTop(out, last.dir);
    const saved = readCheckpointConfig(last.dir);
    model = new GPTNeoX(saved, readCheckpointWeights(last.dir, saved));
    sampler = BatchSampler.restore(samplerOpts, state.sampler as Parameters<typeof BatchSampler.restore>[1]);
    truncateMetrics(out, state.step);
    log(`sinklm train: resuming ${out} from step ${state.step}`);
  } else {
    makeDirs(out);
    writeFileAtomic(path.join(out, RUN_FILE), JSON.stringify({ config: { ...cfg, source: undefined }, identity }, null, 2) + '\n');
    model = new GPTNeoX(mc, initParams(mc, t.seed, cfg.model.init));
    sampler = new BatchSampler(samplerOpts);
  }
  const opt = new AdamW(model, {
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
  // Steps past the checkpoint are redone: their old points must not show twice.
  if (state) dropEventsAfter(out, state.step);
  const tb = new TensorBoardWriter(out);
  if (state) tb.sessionStart(state.step + 1);
  const metrics = fs.openSync(path.join(out, METRICS_FILE), 'a');
  const B = t.batch_size;
  const T = t.seq_len;
  const tokensPerStep = B * T * t.grad_accum;
  const endStep = Math.min(t.max_steps, opts.stopAt ?? t.max_steps);
  let step = state?.step ?? 0;
  let tokensSeen = state?.tokens_seen ?? 0;
  let wall = state?.wall_seconds ?? 0;
  let lastLoss: number | null = state?.last_loss ?? null;
  // Steps since the last log line, synced; a checkpoint keeps them, so a resumed run logs the
  // same interval means as one that never stopped.
  let interval: LoggedStep[] = state?.log_interval ?? [];
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

  // Losses and gradient norms stay on the device until a log line or a save needs them:
  // no host round-trip per step.
  let onDevice: { step: number; loss: tf.Scalar; norm: tf.Scalar; lr: number }[] = [];
  let intervalStart = performance.now();
  let intervalTokens = 0;
  let tokensPerSecond = 0;

  const diverged = (what: string, at: number): never => {
    const good = listCheckpoints(out).at(-1);
    throw new UserError(
      `${what} at step ${at}; stopped without saving (last good checkpoint: ${good ? good.dir : 'none'}). Lower train.lr or raise train.warmup_frac`,
      { file: cfg.source, field: 'train.lr' },
    );
  };

  /** Brings waiting losses and norms to the host in one read; stops the run at the first non-finite one. */
  const syncSteps = async () => {
    if (!onDevice.length) return;
    const packed = tf.tidy(() => tf.stack(onDevice.flatMap((p) => [p.loss, p.norm])));
    const values = await packed.data();
    packed.dispose();
    checkDevice(`the steps up to ${onDevice.at(-1)!.step}`);
    const synced = onDevice.map((p, i) => ({ step: p.step, lr: p.lr, loss: values[2 * i]!, grad_norm: values[2 * i + 1]! }));
    tf.dispose(onDevice.flatMap((p) => [p.loss, p.norm]));
    onDevice = [];
    for (const e of synced) {
      if (!Number.isFinite(e.loss)) diverged(`loss became ${e.loss}`, e.step);
      if (!Number.isFinite(e.grad_norm)) diverged(`gradient norm became ${e.grad_norm}`, e.step);
    }
    interval.push(...synced);
    lastLoss = synced.at(-1)!.loss;
  };

  /** Host copies of tensors about to be saved; a non-finite value stops the run instead. */
  const finite = async (tensors: TensorMap, what: string): Promise<TensorMap> => {
    await syncSteps(); // names the step it went wrong at, when a loss or norm shows it
    checkDevice(`the run before saving ${what}s`);
    const bad = nonFiniteTensor(tensors);
    if (bad) diverged(`${what} ${bad} became non-finite`, step);
    return tensors;
  };

  const flushLogs = async () => {
    await syncSteps();
    if (!interval.length) return;
    const seconds = (performance.now() - intervalStart) / 1000;
    tokensPerSecond = intervalTokens / Math.max(seconds, 1e-9);
    wall += seconds;
    intervalStart = performance.now();
    intervalTokens = 0;
    const mean = interval.reduce((a, e) => a + e.loss, 0) / interval.length;
    const last = interval.at(-1)!;
    interval = [];
    const line = { step: last.step, loss: mean, lr: last.lr, grad_norm: last.grad_norm, tokens_per_s: tokensPerSecond, tokens: tokensSeen, backend: info.backend, time: new Date().toISOString() };
    fs.writeSync(metrics, JSON.stringify(line) + '\n');
    tb.scalar('train/loss', mean, last.step);
    tb.scalar('train/lr', last.lr, last.step);
    tb.scalar('train/grad_norm', last.grad_norm, last.step);
    tb.scalar('train/tokens_per_s', tokensPerSecond, last.step);
    const eta = ((endStep - step) * tokensPerStep) / Math.max(tokensPerSecond, 1);
    bar.update(step, { loss: mean.toFixed(3), tps: Math.round(tokensPerSecond), eta: formatDuration(eta) });
    if (!bar.enabled) log(`step ${last.step}/${endStep}  loss ${mean.toFixed(4)}  lr ${last.lr.toExponential(2)}  ${Math.round(tokensPerSecond)} tok/s  eta ${formatDuration(eta)}`);
  };

  const save = async () => {
    const weights = await finite(await model.weights(), 'weight');
    const optState = await finite(await opt.state(), 'optimizer moment');
    const trainerState: TrainerState = {
      step,
      tokens_seen: tokensSeen,
      optimizer_t: opt.t,
      sampler: sampler.state(),
      manifest_hash: prep.manifestHash,
      backend: info.backend,
      wall_seconds: wall + (performance.now() - intervalStart) / 1000,
      last_loss: lastLoss,
      val_loss: valLoss,
      log_interval: interval,
    };
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
      // Micro-batches weigh by their counted tokens: the batch's gradient whatever the split.
      const sum = new TokenWeightedSum();
      try {
        for (let a = 0; a < t.grad_accum; a++) {
          const batch = sampler.next();
          sum.add(pool ? await pool.gradients(model, batch, B, T) : shareGradients(model, { ...batch, B, T }));
        }
      } catch (e) {
        sum.dispose();
        throw e;
      }
      const { loss, grads } = sum.result();
      // Fault injection for the divergence test: an infinite gradient at one step.
      if (process.env.SINKLM_TEST_INF_GRAD_AT === String(step)) {
        const [name, g] = grads.entries().next().value!;
        grads.set(name, tf.tidy(() => tf.mul(g, Infinity)));
        g.dispose();
      }
      const norm = opt.apply(grads, lr);
      tf.dispose([...grads.values()]);
      await pool?.broadcast(model);
      tokensSeen += tokensPerStep;
      intervalTokens += tokensPerStep;
      onDevice.push({ step, loss, norm, lr });
      opts.onStep?.(step);

      // Log lines fall on the same steps however a run was split: a save keeps the interval.
      if (step % t.log_every === 0 || step === t.max_steps) await flushLogs();
      else bar.update(step, {});
      if (step % t.eval_every === 0 || step === endStep) {
        await syncSteps();
        valLoss = await evaluate(model, valBatches, B, T);
        tb.scalar('val/loss', valLoss, step);
        tb.scalar('val/ppl', Math.exp(valLoss), step);
        fs.writeSync(metrics, JSON.stringify({ step, val_loss: valLoss, val_ppl: Math.exp(valLoss) }) + '\n');
        if (!bar.enabled) log(`step ${step}  val loss ${valLoss.toFixed(4)}  ppl ${Math.exp(valLoss).toFixed(2)}`);
      }
      if (t.snapshot_every > 0 && step % t.snapshot_every === 0) {
        const weights = await finite(await model.weights(), 'weight');
        await writeSnapshotDir(out, step, (tmp) => saveModel(tmp, model, { tokenizerPath: prep.tokenizer.path, weights }));
      }
      if (step % t.ckpt_every === 0 || step === endStep) await save();
      // Let signal handlers run: tfjs-node ops are synchronous and would starve them.
      await new Promise((r) => setImmediate(r));
      if (stopRequested) {
        if (step % t.ckpt_every !== 0 && step !== endStep) await save();
        stopped = 'signal';
        log(`sinklm train: interrupted at step ${step} (loss ${lastLoss?.toFixed(4) ?? '-'}); saved to ${out} (continue with --resume)`);
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
    tf.dispose(onDevice.flatMap((p) => [p.loss, p.norm]));
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
    // A session too short for a log line still reports its rate.
    tokensPerSecond: tokensPerSecond || ((step - (state?.step ?? 0)) * tokensPerStep) / Math.max((performance.now() - started) / 1000, 1e-9),
    backend: info.backend,
    seconds: (performance.now() - started) / 1000,
  };
}

export { CONFIG_FILE, TOKENIZER_FILE };
