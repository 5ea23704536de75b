/**
 * Dense attention: keep every key (no eviction). Positions are the stream positions.
 * The reference the other policies are checked against; memory grows without bound.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CacheLayout, KVCache } from '../../model/cache.js';
import { NEG_INF } from '../../model/ops.js';

export class DenseCache implements KVCache {
  private k: (tf.Tensor4D | undefined)[] = [];
  private v: (tf.Tensor4D | undefined)[] = [];
  private length = 0;
  private pending = 0;

  /** Keys held (and attended to) by the next token. */
  get size(): number {
    return this.length;
  }

  begin(n: number): CacheLayout {
    const L = this.length + n;
    const queryPositions = Int32Array.from({ length: n }, (_, i) => this.length + i);
    const keyPositions = Int32Array.from({ length: L }, (_, j) => j);
    const bias = new Float32Array(n * L);
    for (let i = 0; i < n; i++) for (let j = this.length + i + 1; j < L; j++) bias[i * L + j] = NEG_INF;
    this.pending = n;
    return { queryPositions, keyPositions, bias };
  }

  update(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { k: tf.Tensor4D; v: tf.Tensor4D } {
    const oldK = this.k[layer];
    const oldV = this.v[layer];
    const nk = tf.keep(oldK ? tf.concat([oldK, k], 2) : k.clone());
    const nv = tf.keep(oldV ? tf.concat([oldV, v], 2) : v.clone());
    oldK?.dispose();
    oldV?.dispose();
    this.k[layer] = nk;
    this.v[layer] = nv;
    return { k: nk, v: nv };
  }

  commit(): void {
    this.length += this.pending;
    this.pending = 0;
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t?.dispose();
    this.k = [];
    this.v = [];
    this.length = 0;
  }
}
