/**
 * AdamW as PyTorch (and so Pythia) has it: bias-corrected moments, weight decay decoupled
 * from the gradient (p *= 1 - lr * wd), applied only to matrices, after clipping the
 * gradients to a global norm. The moments are plain float32 tensors under the parameter's
 * name, so they save to safetensors and resume exactly.
 */
import * as tf from '@tensorflow/tfjs-core';
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

export class AdamW {
  /** Steps taken (the t of the bias correction). */
  t = 0;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();

  constructor(
    private readonly params: Map<string, tf.Variable>,
    private readonly specs: ParamSpec[],
    private readonly o: AdamWOptions,
  ) {
    for (const s of specs) {
      this.m.set(s.name, tf.variable(tf.zeros(s.shape), false));
      this.v.set(s.name, tf.variable(tf.zeros(s.shape), false));
    }
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
      const sq = this.specs.map((s) => tf.sum(tf.square(grads.get(s.name)!)));
      const norm = tf.sqrt(tf.addN(sq)) as tf.Scalar;
      // min(1, clip / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.
      const scale = gradClip > 0 ? tf.minimum(tf.div(gradClip, tf.add(norm, 1e-6)), 1) : tf.scalar(1);
      for (const s of this.specs) {
        const p = this.params.get(s.name)!;
        const g = tf.mul(grads.get(s.name)!, scale);
        const m = this.m.get(s.name)!;
        const v = this.v.get(s.name)!;
        m.assign(tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1)));
        v.assign(tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2)));
        const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(bc2)), eps);
        let next = tf.sub(p, tf.mul(tf.div(m, denom), lr / bc1));
        if (decays(s.kind) && weightDecay > 0) next = tf.sub(next, tf.mul(p, lr * weightDecay));
        p.assign(next);
      }
      return tf.keep(norm);
    });
  }

  async state(): Promise<TensorMap> {
    const out: TensorMap = new Map();
    for (const s of this.specs) {
      out.set(`m.${s.name}`, { shape: s.shape, data: (await this.m.get(s.name)!.data()) as Float32Array });
      out.set(`v.${s.name}`, { shape: s.shape, data: (await this.v.get(s.name)!.data()) as Float32Array });
    }
    return out;
  }

  load(state: TensorMap, t: number): void {
    for (const s of this.specs) {
      for (const [prefix, store] of [['m', this.m], ['v', this.v]] as const) {
        const w = state.get(`${prefix}.${s.name}`);
        if (!w || w.shape.join() !== s.shape.join()) throw new Error(`optimizer state lacks ${prefix}.${s.name} [${s.shape}]`);
        tf.tidy(() => store.get(s.name)!.assign(tf.tensor(w.data, s.shape)));
      }
    }
    this.t = t;
  }

  dispose(): void {
    for (const x of [...this.m.values(), ...this.v.values()]) x.dispose();
  }
}
