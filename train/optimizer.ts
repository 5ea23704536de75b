/**
 * AdamW as PyTorch (and so Pythia) has it: bias-corrected moments, weight decay decoupled
 * from the gradient (p *= 1 - lr * wd), applied only to matrices, after clipping the
 * gradients to a global norm.
 *
 * The update runs on one flat vector of all parameters, as one kernel (SinklmAdamW: one pass
 * on native TensorFlow with sinklm's ops, the formula elsewhere) instead of a dozen small
 * ops per parameter (per-op dispatch, not arithmetic, dominates the optimizer's cost in
 * TF.js). The moments are flat float32 tensors; they save to safetensors under each
 * parameter's name, so checkpoints stay readable and resume exactly.
 */
import * as tf from '@tensorflow/tfjs-core';
import { run } from '../model/kernels/index.js';
import { decays, type ParamSpec } from '../model/params.js';
import type { TensorMap } from '../model/safetensors.js';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Global gradient-norm clip; 0 disables. */
  gradClip: number;
}

/** What the optimizer updates: the model's variables, and its notice that they changed. */
export interface Trainable {
  readonly params: Map<string, tf.Variable>;
  readonly specs: ParamSpec[];
  weightsChanged(): void;
}

export class AdamW {
  /** Steps taken (the t of the bias correction). */
  t = 0;
  private readonly sizes: number[];
  private readonly m: tf.Variable;
  private readonly v: tf.Variable;
  /** 1 where weight decay applies, 0 elsewhere. */
  private readonly decayMask: tf.Tensor1D;

  private readonly params: Map<string, tf.Variable>;
  private readonly specs: ParamSpec[];

  constructor(
    private readonly model: Trainable,
    private readonly o: AdamWOptions,
  ) {
    this.params = model.params;
    this.specs = model.specs;
    const specs = this.specs;
    this.sizes = specs.map((s) => s.shape.reduce((a, b) => a * b, 1));
    const total = this.sizes.reduce((a, b) => a + b, 0);
    this.m = tf.tidy(() => tf.variable(tf.zeros([total]), false));
    this.v = tf.tidy(() => tf.variable(tf.zeros([total]), false));
    const mask = new Float32Array(total);
    let at = 0;
    specs.forEach((s, i) => {
      if (decays(s.kind)) mask.fill(1, at, at + this.sizes[i]!);
      at += this.sizes[i]!;
    });
    this.decayMask = tf.keep(tf.tensor1d(mask));
  }

  private flat(tensors: tf.Tensor[]): tf.Tensor1D {
    return tf.concat(tensors.map((t) => tf.reshape(t, [-1]))) as tf.Tensor1D;
  }

  /**
   * One update from gradients keyed by parameter name. Returns the global gradient norm
   * (before clipping) as a scalar tensor the caller owns: reading it is left to the
   * caller so a step needs no host round-trip.
   */
  apply(grads: Map<string, tf.Tensor>, lr: number): tf.Scalar {
    this.t += 1;
    const { beta1, beta2, eps, weightDecay, gradClip } = this.o;
    const bc1 = 1 - beta1 ** this.t;
    const bc2 = 1 - beta2 ** this.t;
    return tf.tidy(() => {
      const g0 = this.flat(this.specs.map((s) => grads.get(s.name)!));
      const p = this.flat(this.specs.map((s) => this.params.get(s.name)!));
      const norm = tf.sqrt(tf.sum(tf.square(g0))) as tf.Scalar;
      // min(1, clip / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.
      const scale = gradClip > 0 ? tf.minimum(tf.div(gradClip, tf.add(norm, 1e-6)), 1) : tf.scalar(1);
      const hyper = tf.concat([tf.tensor1d([lr, beta1, beta2, eps, weightDecay, bc1, bc2]), tf.reshape(scale, [1])]);
      const [next, m, v] = run('SinklmAdamW', { p, g: g0, m: this.m, v: this.v, mask: this.decayMask, hyper }) as tf.Tensor[];
      this.m.assign(m!);
      this.v.assign(v!);
      const parts = tf.split(next!, this.sizes);
      this.specs.forEach((s, i) => this.params.get(s.name)!.assign(tf.reshape(parts[i]!, s.shape)));
      // The variables were written directly: copies of the old weights are now stale.
      this.model.weightsChanged();
      return tf.keep(norm);
    });
  }

  async state(): Promise<TensorMap> {
    const out: TensorMap = new Map();
    const m = (await this.m.data()) as Float32Array;
    const v = (await this.v.data()) as Float32Array;
    let at = 0;
    this.specs.forEach((s, i) => {
      const n = this.sizes[i]!;
      out.set(`m.${s.name}`, { shape: s.shape, data: m.slice(at, at + n) });
      out.set(`v.${s.name}`, { shape: s.shape, data: v.slice(at, at + n) });
      at += n;
    });
    return out;
  }

  load(state: TensorMap, t: number): void {
    const total = this.sizes.reduce((a, b) => a + b, 0);
    const m = new Float32Array(total);
    const v = new Float32Array(total);
    let at = 0;
    this.specs.forEach((s, i) => {
      for (const [prefix, dst] of [['m', m], ['v', v]] as const) {
        const w = state.get(`${prefix}.${s.name}`);
        if (!w || w.shape.join() !== s.shape.join()) throw new Error(`optimizer state lacks ${prefix}.${s.name} [${s.shape}]`);
        dst.set(w.data, at);
      }
      at += this.sizes[i]!;
    });
    tf.tidy(() => {
      this.m.assign(tf.tensor1d(m));
      this.v.assign(tf.tensor1d(v));
    });
    this.t = t;
  }

  dispose(): void {
    this.m.dispose();
    this.v.dispose();
    this.decayMask.dispose();
  }
}
