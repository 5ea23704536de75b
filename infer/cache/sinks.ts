/**
 * StreamingLLM's cache: S sink slots that are never evicted plus a ring buffer of W recent
 * slots. A token is written into its slot (the oldest recent one once the ring is full);
 * nothing else moves. Positions are assigned within the cache on every step: sinks keep
 * 0..S-1, the recent tokens get S.. in the order they arrived, whatever slot they sit in
 * (attention does not care about slot order, only about positions). Keys are stored
 * before the rotary transform, so re-positioning them costs nothing but the rotation.
 * With S = 0 this is plain window attention.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CacheLayout, KVCache } from '../../model/cache.js';
import { NEG_INF } from '../../model/ops.js';

export class SinkCache implements KVCache {
  readonly sinks: number;
  readonly window: number;
  readonly capacity: number;
  private k: tf.Tensor4D[] = [];
  private v: tf.Tensor4D[] = [];
  /** Stream index of the token in each slot, -1 while empty. */
  private readonly slotTime: Int32Array;
  /** Tokens seen so far. */
  private seen = 0;
  private pendingSlot = 0;
  private pendingN = 0;

  constructor(sinks: number, window: number, private readonly shape: { layers: number; heads: number; headDim: number }) {
    if (!Number.isInteger(sinks) || sinks < 0) throw new Error(`sinks must be an integer >= 0 (got ${sinks})`);
    if (!Number.isInteger(window) || window < 1) throw new Error(`window must be an integer >= 1 (got ${window})`);
    this.sinks = sinks;
    this.window = window;
    this.capacity = sinks + window;
    this.slotTime = new Int32Array(this.capacity).fill(-1);
  }

  /** Keys the next token will attend to, itself included. */
  get size(): number {
    return Math.min(this.seen + 1, this.capacity);
  }

  private slotOf(t: number): number {
    return t < this.sinks ? t : this.sinks + ((t - this.sinks) % this.window);
  }

  begin(n: number): CacheLayout {
    const t0 = this.seen;
    const first = this.slotOf(t0);
    // Several tokens at once only while nothing is evicted and the slots are contiguous
    // (prefill); streaming feeds one token at a time.
    if (n > 1 && (t0 + n > this.capacity || first + n > this.capacity)) {
      throw new Error(`SinkCache takes ${n} tokens at once only before it is full; feed tokens one by one`);
    }
    for (let i = 0; i < n; i++) this.slotTime[first + i] = t0 + i;
    const last = t0 + n - 1;
    const recentKept = Math.max(0, Math.min(last + 1 - this.sinks, this.window));
    const oldestRecent = last - recentKept + 1;
    const cap = this.capacity;
    const keyPositions = new Int32Array(cap);
    const bias = new Float32Array(n * cap);
    for (let j = 0; j < cap; j++) {
      const tau = this.slotTime[j]!;
      keyPositions[j] = tau < 0 ? 0 : tau < this.sinks ? tau : this.sinks + (tau - oldestRecent);
      for (let i = 0; i < n; i++) if (tau < 0 || tau > t0 + i) bias[i * cap + j] = NEG_INF;
    }
    const queryPositions = Int32Array.from({ length: n }, (_, i) => keyPositions[first + i]!);
    this.pendingSlot = first;
    this.pendingN = n;
    return { queryPositions, keyPositions, bias };
  }

  update(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { k: tf.Tensor4D; v: tf.Tensor4D } {
    if (!this.k[layer]) {
      const { heads, headDim } = this.shape;
      this.k[layer] = tf.keep(tf.zeros([1, heads, this.capacity, headDim]));
      this.v[layer] = tf.keep(tf.zeros([1, heads, this.capacity, headDim]));
    }
    const nk = tf.keep(this.write(this.k[layer]!, k));
    const nv = tf.keep(this.write(this.v[layer]!, v));
    this.k[layer]!.dispose();
    this.v[layer]!.dispose();
    this.k[layer] = nk;
    this.v[layer] = nv;
    return { k: nk, v: nv };
  }

  /** buf with rows [slot, slot + n) replaced by rows. */
  private write(buf: tf.Tensor4D, rows: tf.Tensor4D): tf.Tensor4D {
    const s = this.pendingSlot;
    const n = this.pendingN;
    const parts: tf.Tensor4D[] = [];
    if (s > 0) parts.push(tf.slice(buf, [0, 0, 0, 0], [-1, -1, s, -1]));
    parts.push(rows);
    if (s + n < this.capacity) parts.push(tf.slice(buf, [0, 0, s + n, 0], [-1, -1, -1, -1]));
    return parts.length === 1 ? rows.clone() : tf.concat(parts, 2);
  }

  commit(): void {
    this.seen += this.pendingN;
    this.pendingN = 0;
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
    this.k = [];
    this.v = [];
  }
}
