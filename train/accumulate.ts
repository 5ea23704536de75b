/**
 * The loss and gradient of a batch from those of its parts (micro-batches of gradient
 * accumulation, or the rows each data-parallel replica ran). Each part's loss is a mean
 * over its counted (mask = 1) tokens, so the whole batch's mean is the parts' means
 * weighted by their counted tokens, not their plain average: a part with few counted tokens
 * (the end of a document, a short stream) must not weigh as much as a full one.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface Part {
  /** Mean loss over the part's counted tokens. */
  loss: tf.Scalar;
  /** Counted tokens (the sum of its mask). */
  count: number;
  grads: Map<string, tf.Tensor>;
}

/** A running, token-weighted sum of parts; owns (and disposes) every tensor it is given. */
export class TokenWeightedSum {
  private only: Part | null = null;
  private loss: tf.Scalar | null = null;
  private grads = new Map<string, tf.Tensor>();
  private count = 0;
  private parts = 0;

  add(part: Part): void {
    this.parts += 1;
    // One part is the common case (no accumulation): kept as it is, so no rounding is added.
    if (this.parts === 1) {
      this.only = part;
      return;
    }
    if (this.only) {
      this.fold(this.only);
      this.only = null;
    }
    this.fold(part);
  }

  /** Adds count x part to the sums and frees the part. */
  private fold(p: Part): void {
    const prevLoss = this.loss;
    this.loss = tf.tidy(() => {
      const l = tf.mul(p.loss, p.count);
      return (prevLoss ? tf.add(prevLoss, l) : l) as tf.Scalar;
    });
    for (const [name, g] of p.grads) {
      const prev = this.grads.get(name);
      this.grads.set(name, tf.tidy(() => (prev ? tf.add(prev, tf.mul(g, p.count)) : tf.mul(g, p.count))));
      prev?.dispose();
    }
    tf.dispose([prevLoss, p.loss, ...p.grads.values()].filter((t): t is tf.Tensor => t !== null));
    this.count += p.count;
  }

  /** The batch's mean loss and gradient; the caller owns them, this sum is emptied. */
  result(): Part {
    if (this.only) {
      const p = this.only;
      this.only = null;
      this.parts = 0;
      return p;
    }
    if (!this.loss) throw new Error('TokenWeightedSum: no parts were added');
    const total = Math.max(this.count, 1);
    const sumLoss = this.loss;
    const loss = tf.tidy(() => tf.div(sumLoss, total) as tf.Scalar);
    const grads = new Map<string, tf.Tensor>();
    for (const [name, g] of this.grads) grads.set(name, tf.tidy(() => tf.div(g, total)));
    tf.dispose([sumLoss, ...this.grads.values()]);
    const out = { loss, count: this.count, grads };
    this.loss = null;
    this.grads = new Map();
    this.count = 0;
    this.parts = 0;
    return out;
  }

  /** Frees whatever was added and not yet taken (a step that failed half-way). */
  dispose(): void {
    if (this.only) tf.dispose([this.only.loss, ...this.only.grads.values()]);
    tf.dispose([this.loss, ...this.grads.values()].filter((t): t is tf.Tensor => t !== null));
    this.only = null;
    this.loss = null;
    this.grads = new Map();
    this.count = 0;
    this.parts = 0;
  }
}
