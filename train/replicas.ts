/**
 * Data-parallel training on one machine: train.replicas processes, each running one share
 * of every batch on one TensorFlow thread, as PyTorch's DistributedDataParallel does across
 * GPUs. Native TensorFlow gains little from a second intra-op thread on these small ops
 * (measured here: 1,764 vs 1,821 tokens/s for 1 vs 2 threads), so two single-thread
 * replicas do nearly twice the work of one two-thread process.
 *
 * The trainer (rank 0) owns the optimizer, the sampler, evaluation and checkpoints. Each
 * step it sends every helper process its rows of the batch, computes the gradient of its
 * own rows meanwhile, then combines all gradients weighted by their counted (masked)
 * tokens, which is the gradient of the whole batch's mean loss. After the AdamW update it
 * sends the new parameters back, so every replica always holds the same weights.
 * Deterministic: the same replica count gives bit-identical runs, resumed or not.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import type { NeoXConfig } from '../model/config.js';
import { GPTNeoX } from '../model/neox.js';
import { paramSpecs, type ParamSpec } from '../model/params.js';
import type { TensorMap } from '../model/safetensors.js';
import { TokenWeightedSum, type Part } from './accumulate.js';

interface Rows {
  input: Int32Array;
  target: Int32Array;
  mask: Float32Array;
  /** Rows and columns of `input`. */
  B: number;
  T: number;
}

type ToReplica =
  | { kind: 'init'; config: NeoXConfig; params: Float32Array; backend: string }
  | { kind: 'params'; params: Float32Array }
  | ({ kind: 'step' } & Rows);

type FromReplica =
  | { kind: 'ready' }
  | { kind: 'grads'; loss: number; count: number; grads: Float32Array }
  | { kind: 'error'; message: string };

/** All parameters, in spec order, as one host vector. */
export function flatParams(model: GPTNeoX): Float32Array {
  return tf.tidy(() => tf.concat(model.specs.map((s) => tf.reshape(model.params.get(s.name)!, [-1])))).dataSync() as Float32Array;
}

/** Splits a spec-ordered flat vector back into named arrays. */
export function unflatten(flat: Float32Array, specs: ParamSpec[]): TensorMap {
  const out: TensorMap = new Map();
  let at = 0;
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    out.set(s.name, { shape: s.shape, data: flat.subarray(at, at + n) });
    at += n;
  }
  if (at !== flat.length) throw new Error(`flat parameters: ${flat.length} values for ${at} expected`);
  return out;
}

/** Loss (mean over masked tokens), counted tokens and gradients of one share of a batch. */
export function shareGradients(model: GPTNeoX, rows: Rows): Part {
  const input = tf.tensor2d(rows.input, [rows.B, rows.T], 'int32');
  const target = tf.tensor1d(rows.target, 'int32');
  const mask = tf.tensor1d(rows.mask, 'float32');
  const { value, grads: g } = tf.variableGrads(() => model.loss(model.forward(input), target, mask));
  tf.dispose([input, target, mask]);
  const grads = new Map<string, tf.Tensor>();
  for (const [name, v] of model.params) grads.set(name, g[v.name]!);
  let count = 0;
  for (const m of rows.mask) count += m;
  return { loss: value, count, grads };
}

/** Rows [from, from + n) of a batch. */
export function sliceRows(b: { input: Int32Array; target: Int32Array; mask: Float32Array }, T: number, from: number, n: number): Rows {
  return {
    input: b.input.slice(from * T, (from + n) * T),
    target: b.target.slice(from * T, (from + n) * T),
    mask: b.mask.slice(from * T, (from + n) * T),
    B: n,
    T,
  };
}

/** The compiled helper entry: beside this file in dist/, or dist/train/ when run from source (tests). */
function replicaEntry(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const beside = path.join(here, 'replica-main.js');
  if (fs.existsSync(beside)) return beside;
  const built = path.join(here, '..', 'dist', 'train', 'replica-main.js');
  if (fs.existsSync(built)) return built;
  throw new Error(`training replicas need the compiled helper (${beside}); run \`npm run build\``);
}

/** The helper processes of a data-parallel run (ranks 1..R-1). */
export class ReplicaPool {
  private readonly children: ChildProcess[] = [];
  private readonly waiting: ((m: FromReplica) => void)[][] = [];
  private failure: Error | null = null;

  private constructor(private readonly specs: ParamSpec[]) {}

  /** Starts R-1 helpers holding the model's current weights. */
  static async start(model: GPTNeoX, replicas: number, backend: string): Promise<ReplicaPool> {
    const pool = new ReplicaPool(model.specs);
    const params = flatParams(model);
    const entry = replicaEntry();
    for (let r = 1; r < replicas; r++) {
      const child = fork(entry, [], {
        serialization: 'advanced',
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
        env: { ...process.env, TF_NUM_INTRAOP_THREADS: '1', TF_NUM_INTEROP_THREADS: '1', SINKLM_BACKEND: backend },
      });
      const index = pool.children.length;
      pool.children.push(child);
      pool.waiting.push([]);
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
      child.on('message', (m: FromReplica) => pool.waiting[index]!.shift()?.(m));
      child.on('exit', (code, signal) => {
        if (!pool.failure) {
          const last = stderr.trim().split('\n').filter((l) => !/^(I0000|WARNING: All log)/.test(l)).at(-1) ?? '';
          pool.failure = new Error(`training replica ${index + 1} exited (${signal ?? `code ${code}`})${last ? `: ${last}` : ''}`);
        }
        for (const w of pool.waiting[index]!.splice(0)) w({ kind: 'error', message: pool.failure.message });
      });
    }
    await Promise.all(pool.children.map((_, i) => pool.request(i, { kind: 'init', config: model.config, params, backend })));
    return pool;
  }

  private async send(i: number, msg: ToReplica): Promise<void> {
    if (this.failure) throw this.failure;
    // Wait until the message is written: the caller is about to block the event loop in TF.
    await new Promise<void>((resolve, reject) => this.children[i]!.send(msg, (e) => (e ? reject(e) : resolve())));
  }

  private async request(i: number, msg: ToReplica): Promise<FromReplica> {
    const reply = new Promise<FromReplica>((resolve) => this.waiting[i]!.push(resolve));
    await this.send(i, msg);
    const m = await reply;
    if (m.kind === 'error') throw new Error(m.message);
    return m;
  }

  /**
   * One training step's gradients over the whole batch: helper r computes rows
   * [r * share, (r + 1) * share), this process rows [0, share) meanwhile. Returns the
   * combined loss and gradients (train/accumulate: weighted by counted tokens); the caller
   * disposes them.
   */
  async gradients(model: GPTNeoX, batch: { input: Int32Array; target: Int32Array; mask: Float32Array }, B: number, T: number): Promise<Part> {
    const R = this.children.length + 1;
    const share = B / R;
    const replies = this.children.map((_, i) => {
      const reply = new Promise<FromReplica>((resolve) => this.waiting[i]!.push(resolve));
      return { reply, sent: this.send(i, { kind: 'step', ...sliceRows(batch, T, (i + 1) * share, share) }) };
    });
    await Promise.all(replies.map((r) => r.sent));
    const own = shareGradients(model, sliceRows(batch, T, 0, share));
    const others: { loss: number; count: number; grads: Float32Array }[] = [];
    for (const r of replies) {
      const m = await r.reply;
      if (m.kind === 'error') {
        tf.dispose([own.loss, ...own.grads.values()]);
        throw new Error(m.message);
      }
      if (m.kind !== 'grads') throw new Error(`training replica: unexpected reply ${m.kind}`);
      others.push(m);
    }
    const sum = new TokenWeightedSum();
    sum.add(own);
    for (const o of others) {
      const g = unflatten(o.grads, this.specs);
      const grads = new Map<string, tf.Tensor>(this.specs.map((s) => [s.name, tf.tensor(g.get(s.name)!.data, s.shape)]));
      sum.add({ loss: tf.scalar(o.loss), count: o.count, grads });
    }
    return sum.result();
  }

  /** Hands every helper the weights after an optimizer step. */
  async broadcast(model: GPTNeoX): Promise<void> {
    const params = flatParams(model);
    await Promise.all(this.children.map((_, i) => this.request(i, { kind: 'params', params })));
  }

  close(): void {
    for (const c of this.children) if (c.connected) c.disconnect();
  }
}

/** The helper process: holds a replica, answers step and params messages until disconnected. */
export function replicaMain(init: (backend: string) => Promise<void>): void {
  let model: GPTNeoX | null = null;
  const reply = (m: FromReplica) => process.send!(m);
  // Ctrl-C reaches the whole process group: the trainer saves and closes us; we just wait.
  process.on('SIGINT', () => {});
  process.on('disconnect', () => {
    model?.dispose();
    process.exit(0);
  });
  let queue = Promise.resolve();
  process.on('message', (msg: ToReplica) => {
    queue = queue.then(async () => {
      try {
        if (msg.kind === 'init') {
          await init(msg.backend);
          model = new GPTNeoX(msg.config, unflatten(msg.params, paramSpecs(msg.config)));
          reply({ kind: 'ready' });
        } else if (msg.kind === 'params') {
          model!.assign(unflatten(msg.params, model!.specs));
          reply({ kind: 'ready' });
        } else {
          const { loss, count, grads } = shareGradients(model!, msg);
          const flat = tf.tidy(() => tf.concat(model!.specs.map((s) => tf.reshape(grads.get(s.name)!, [-1])))).dataSync() as Float32Array;
          const value = loss.dataSync()[0]!;
          tf.dispose([loss, ...grads.values()]);
          reply({ kind: 'grads', loss: value, count, grads: flat });
        }
      } catch (e) {
        reply({ kind: 'error', message: e instanceof Error ? e.message : String(e) });
      }
    });
  });
}
