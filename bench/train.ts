/**
 * Training throughput: the step `sinklm train` takes (forward, backward through
 * tf.variableGrads, flat AdamW), on random token batches so the data pipeline is not what
 * is measured. Reports tokens/s, the step split into forward, backward and optimizer, and
 * model FLOPs utilisation against the matmul peak measured here, in the same run.
 */
import * as os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import seedrandom from 'seedrandom';
import { backendInfo, checkDevice, deviceCounts, retainFreedMemory, type KernelInfo } from '../core/backend.js';
import type { RunConfig } from '../core/config.js';
import { toHFConfig, type NeoXConfig } from '../model/config.js';
import { modelConfigFor } from '../train/modelconfig.js';
import { GPTNeoX } from '../model/neox.js';
import { initParams } from '../model/params.js';
import { AdamW, type AdamWOptions } from '../train/optimizer.js';
import { ReplicaPool } from '../train/replicas.js';
import { measureMatmulPeak, type PeakResult } from './peak.js';
import { profileKernels, type KernelProfile } from './profile.js';

/**
 * The model a run config describes, without preparing its data: the vocabulary is the
 * size the config asks its tokenizer for (data.tokenizer.vocab_size), with <|endoftext|>
 * at 0 and <|sink|> at 1, as a tokenizer sinklm trains has them.
 */
export function benchModelConfig(cfg: RunConfig, over: Partial<NeoXConfig> = {}): NeoXConfig {
  return modelConfigFor(cfg, { vocabSize: cfg.data.tokenizer.vocab_size, sinkTokenId: 1, eosTokenId: 0 }, over);
}

/** Parameters that sit in matmuls: every layer's four projections and the output head. */
export function matmulParams(c: NeoXConfig): number {
  const D = c.hidden_size;
  const F = c.intermediate_size;
  // qkv 3D^2 + dense D^2 + MLP 2DF per layer; the untied head V x D is a real matmul.
  // The input embedding is a lookup (no FLOPs), biases and LayerNorms are negligible.
  return c.num_hidden_layers * (4 * D * D + 2 * D * F) + c.vocab_size * D;
}

/**
 * Model FLOPs per trained token, PaLM's convention (Chowdhery et al. 2022, app. B;
 * Chinchilla's is the same to within a few per cent):
 *
 *   6 N + 12 L T D
 *
 * N = matmulParams (2 FLOPs per weight per token forward, 4 backward), and 12 L T D for
 * the attention scores QK^T and the weighted sum AV (2 T D each per layer forward, x3 with
 * backward), counted over the full T x T as a dense kernel computes it. What the
 * implementation adds on top (the rotary rotation as a small matmul, softmax, LayerNorm,
 * GELU, AdamW) is not model FLOPs: MFU is useful work over peak.
 */
export function modelFlopsPerToken(c: NeoXConfig, seq: number): number {
  return 6 * matmulParams(c) + 12 * c.num_hidden_layers * seq * c.hidden_size;
}

export interface TrainBenchOptions {
  model: NeoXConfig;
  batch: number;
  seq: number;
  /** Timed steps (each phase). */
  steps: number;
  /** Untimed steps first (kernel loading, allocator and thread pools settle). */
  warmup: number;
  adamw: AdamWOptions;
  lr: number;
  seed?: number;
  /** Matmul size of the peak measurement (default 1024). */
  peakN?: number;
  /** Kernels listed in the profile (default 12). */
  topKernels?: number;
  /** Progress lines (stderr in the CLI). */
  log?: (line: string) => void;
  /** Data-parallel replicas for the whole steps (train.replicas; default 1). */
  replicas?: number;
}

export interface TrainBenchResult {
  backend: string;
  /** sinklm's own TensorFlow ops: whether they ran in this measurement, which, and why not. */
  kernels: KernelInfo;
  batch: number;
  seq: number;
  steps: number;
  warmup: number;
  tokens_per_s: number;
  /** Processes the whole steps ran on (train.replicas); the split and profile are one process's. */
  replicas: number;
  /** Mean wall time of a whole training step, synchronised once at its end. */
  ms_per_step: number;
  ms_per_step_median: number;
  /** Forward pass and loss alone (a separate forward-only pass). */
  ms_forward: number;
  /** tf.variableGrads (forward + backward) minus ms_forward. */
  ms_backward: number;
  /** AdamW on the flat parameter vector, clipping included. */
  ms_optimizer: number;
  /** GPU dispatches of one training step on webgpu (tfjs's programs and sinklm's WGSL); kernels called elsewhere. */
  kernels_per_step: number;
  gpu_kernel_ms: number;
  reads_per_step: number;
  model_gflops_per_step: number;
  model_flops_per_token: number;
  /** Achieved model FLOP/s over peak_gflops. */
  mfu: number;
  peak_gflops: number;
  peak: PeakResult;
  params: number;
  params_matmul: number;
  threads: number;
  /**
   * CPU time this process used during the timed steps over (wall time x threads), as
   * bench/pytorch_side_by_side.py reports it: well below 1 means other processes took
   * the cores, and the figure understates this machine.
   */
  cpu_utilization: number;
  /** 1-minute load average at the end of the run (other processes share the cores). */
  loadavg: number;
  loadavg_start: number;
  profile: KernelProfile;
  /** The HF config.json fields of the model (what bench/pytorch_side_by_side.py reads). */
  config: Record<string, unknown>;
}

interface Batch {
  input: tf.Tensor2D;
  target: tf.Tensor1D;
  mask: tf.Tensor1D;
}

function hostBatch(rng: () => number, B: number, T: number, V: number): { input: Int32Array; target: Int32Array; mask: Float32Array } {
  const ids = new Int32Array(B * (T + 1));
  for (let i = 0; i < ids.length; i++) ids[i] = Math.floor(rng() * V);
  const input = new Int32Array(B * T);
  const target = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    input.set(ids.subarray(b * (T + 1), b * (T + 1) + T), b * T);
    target.set(ids.subarray(b * (T + 1) + 1, (b + 1) * (T + 1)), b * T);
  }
  return { input, target, mask: new Float32Array(B * T).fill(1) };
}

function randomBatch(rng: () => number, B: number, T: number, V: number): Batch {
  const h = hostBatch(rng, B, T, V);
  return { input: tf.tensor2d(h.input, [B, T], 'int32'), target: tf.tensor1d(h.target, 'int32'), mask: tf.tensor1d(h.mask, 'float32') };
}

function disposeBatch(b: Batch): void {
  tf.dispose([b.input, b.target, b.mask]);
}

/** Forward and backward as the trainer does them; gradients keyed by parameter name. */
function forwardBackward(model: GPTNeoX, b: Batch): { loss: tf.Scalar; grads: Map<string, tf.Tensor> } {
  const { value, grads } = tf.variableGrads(() => model.loss(model.forward(b.input), b.target, b.mask));
  const byName = new Map<string, tf.Tensor>();
  for (const [name, v] of model.params) byName.set(name, grads[v.name]!);
  return { loss: value, grads: byName };
}

/** One whole training step; returns the loss (the caller reads and disposes it). */
function trainStep(model: GPTNeoX, opt: AdamW, b: Batch, lr: number): tf.Scalar {
  const { loss, grads } = forwardBackward(model, b);
  const norm = opt.apply(grads, lr);
  tf.dispose([...grads.values(), norm]);
  return loss;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export async function benchTrain(o: TrainBenchOptions): Promise<TrainBenchResult> {
  const log = o.log ?? (() => {});
  const c = o.model;
  const { batch: B, seq: T } = o;
  if (T > c.max_position_embeddings) throw new Error(`seq ${T} exceeds max_position_embeddings ${c.max_position_embeddings}`);
  const loadStart = os.loadavg()[0]!;
  retainFreedMemory();
  const rng = seedrandom(`sinklm-bench-${o.seed ?? 0}`);
  const model = new GPTNeoX(c, initParams(c, o.seed ?? 0));
  const opt = new AdamW(model, o.adamw);
  const replicas = o.replicas ?? 1;
  if (B % replicas !== 0) throw new Error(`batch ${B} does not split over ${replicas} replicas`);
  const pool = replicas > 1 ? await ReplicaPool.start(model, replicas, backendInfo().backend) : null;
  const embedName = 'gpt_neox.embed_in.weight';
  const lastParam = model.specs.at(-1)!.name;
  try {
    log(`bench train: ${o.warmup} warmup step(s)`);
    for (let i = 0; i < o.warmup; i++) {
      const b = randomBatch(rng, B, T, c.vocab_size);
      const loss = trainStep(model, opt, b, o.lr);
      await loss.data();
      tf.dispose([loss]);
      disposeBatch(b);
    }

    // Whole steps, as training runs them: reading the loss at the end of each step waits
    // for everything the step queued.
    const stepMs: number[] = [];
    const cpu0 = process.cpuUsage();
    if (pool) {
      // As the trainer steps with replicas: gradients of every share, AdamW, weights back.
      for (let i = 0; i < o.warmup + o.steps; i++) {
        const b = hostBatch(rng, B, T, c.vocab_size);
        const t0 = performance.now();
        const { loss, grads } = await pool.gradients(model, b, B, T);
        const norm = opt.apply(grads, o.lr);
        await pool.broadcast(model);
        await loss.data();
        if (i >= o.warmup) stepMs.push(performance.now() - t0);
        tf.dispose([loss, norm, ...grads.values()]);
        log(`bench train: ${replicas} replicas, step ${i + 1}/${o.warmup + o.steps}  ${(performance.now() - t0).toFixed(0)} ms${i < o.warmup ? ' (warmup)' : ''}`);
      }
    } else {
      for (let i = 0; i < o.steps; i++) {
        const b = randomBatch(rng, B, T, c.vocab_size);
        const t0 = performance.now();
        const loss = trainStep(model, opt, b, o.lr);
        await loss.data();
        stepMs.push(performance.now() - t0);
        loss.dispose();
        disposeBatch(b);
        log(`bench train: step ${i + 1}/${o.steps}  ${stepMs.at(-1)!.toFixed(0)} ms`);
      }
    }
    pool?.close();
    const cpu = process.cpuUsage(cpu0);
    const cpuUtil = (cpu.user + cpu.system) / 1000 / (stepMs.reduce((a, b) => a + b, 0) * backendInfo().threads);

    // The split, each part synchronised on its own: a forward-only pass; forward +
    // backward (variableGrads), waiting for the loss and for the embedding's gradient,
    // the last one backprop produces; then the optimizer, waiting for the gradient norm
    // and for the last parameter it writes. (On tfjs-node, wasm and cpu every kernel runs
    // synchronously anyway; the reads make the split honest on any backend.)
    const fwdMs: number[] = [];
    const fbMs: number[] = [];
    const optMs: number[] = [];
    for (let i = 0; i < o.steps; i++) {
      const b = randomBatch(rng, B, T, c.vocab_size);
      let t0 = performance.now();
      const fwd = tf.tidy(() => model.loss(model.forward(b.input), b.target, b.mask));
      await fwd.data();
      fwd.dispose();
      fwdMs.push(performance.now() - t0);

      t0 = performance.now();
      const { loss, grads } = forwardBackward(model, b);
      await loss.data();
      await grads.get(embedName)!.data();
      fbMs.push(performance.now() - t0);

      t0 = performance.now();
      const norm = opt.apply(grads, o.lr);
      await norm.data();
      await model.params.get(lastParam)!.data();
      optMs.push(performance.now() - t0);
      tf.dispose([loss, norm, ...grads.values()]);
      disposeBatch(b);
      log(`bench train: split ${i + 1}/${o.steps}  forward ${fwdMs.at(-1)!.toFixed(0)}  fwd+bwd ${fbMs.at(-1)!.toFixed(0)}  optimizer ${optMs.at(-1)!.toFixed(0)} ms`);
    }

    // One step under tf.profile: which kernels the time goes to, and how many a step runs.
    log('bench train: profiling one step');
    const b = randomBatch(rng, B, T, c.vocab_size);
    const before = deviceCounts();
    const profile = await profileKernels(async () => {
      const loss = trainStep(model, opt, b, o.lr);
      await loss.data();
      loss.dispose();
    }, o.topKernels ?? 12);
    const after = deviceCounts();
    disposeBatch(b);
    // A validation error, an out-of-memory or a lost device means the figures are not of this step.
    checkDevice('bench train');
    // On webgpu a kernel may record several dispatches (and tfjs's run one each): count
    // what the GPU was given. Elsewhere every kernel is one call.
    const kernelsPerStep = backendInfo().backend === 'webgpu' ? after.dispatches - before.dispatches : profile.kernels;

    log(`bench train: matmul peak (${o.peakN ?? 1024}^3 float32)`);
    const peak = await measureMatmulPeak({ n: o.peakN });

    const msStep = mean(stepMs);
    const tokensPerS = (B * T) / (msStep / 1000);
    const flopsPerToken = modelFlopsPerToken(c, T);
    const params = model.specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);
    return {
      backend: backendInfo().backend,
      kernels: backendInfo().kernels,
      batch: B,
      seq: T,
      steps: o.steps,
      warmup: o.warmup,
      tokens_per_s: tokensPerS,
      replicas,
      ms_per_step: msStep,
      ms_per_step_median: median(stepMs),
      ms_forward: mean(fwdMs),
      ms_backward: mean(fbMs) - mean(fwdMs),
      ms_optimizer: mean(optMs),
      kernels_per_step: kernelsPerStep,
      // Kernel time of the profiled step (timestamp queries on webgpu; 0 where the adapter has none).
      gpu_kernel_ms: profile.kernel_ms,
      // Device-to-host reads in the profiled step: the loss, which the bench itself reads.
      reads_per_step: after.reads - before.reads,
      model_gflops_per_step: (flopsPerToken * B * T) / 1e9,
      model_flops_per_token: flopsPerToken,
      mfu: (flopsPerToken * tokensPerS) / (peak.gflops * 1e9),
      peak_gflops: peak.gflops,
      peak,
      params,
      params_matmul: matmulParams(c),
      threads: backendInfo().threads,
      cpu_utilization: cpuUtil,
      loadavg: os.loadavg()[0]!,
      loadavg_start: loadStart,
      profile,
      config: toHFConfig(c),
    };
  } finally {
    pool?.close();
    opt.dispose();
    model.dispose();
  }
}
