/**
 * StreamingLLM's cache: S sink slots that are never evicted plus a ring buffer of W recent
 * slots. A token is written into its slot (the oldest recent one once the ring is full);
 * nothing else moves. Positions are assigned within the cache on every step: sinks keep
 * 0..S-1, the recent tokens get S.. in the order they arrived, whatever slot they sit in
 * (attention does not care about slot order, only about positions). The tensor store
 * keeps keys before the rotary transform, so re-positioning them costs nothing but the
 * rotation; the host store keeps them rotated at their times (model/cache.ts): a sink's
 * position is its time, and every recent token's position is its time minus the same
 * offset, so the host step rotates the query twice per token and no key ever again.
 * With S = 0 this is plain window attention.
 *
 * One cache can hold several streams of the same capacity S+W (e.g. 0+64, 1+63, 4+60 of
 * the same text): they step together as one batch, each with its own slots and positions.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CacheLayout, KVCache } from '../../model/cache.js';
import { hostMemory } from '../../model/hostmem.js';
import { NEG_INF } from '../../model/ops.js';

export interface SinkWindow {
  sinks: number;
  window: number;
}

export class SinkCache implements KVCache {
  readonly sinks: number;
  readonly window: number;
  readonly capacity: number;
  readonly streams: SinkWindow[];
  private k: tf.Tensor4D[] = [];
  private v: tf.Tensor4D[] = [];
  /** Stream index of the token in each slot, -1 while empty; [stream][slot]. */
  private readonly slotTime: Int32Array[];
  /** Tokens seen so far (every stream sees the same number). */
  private seen = 0;
  /** Slot of each stream's first new token this step, and how many new tokens. */
  private pendingSlots: number[] = [];
  private pendingN = 0;
  /** One-hot of the slot each stream writes this step, [B, 1, cap, 1] (batched writes). */
  private writeMask: tf.Tensor | null = null;
  /** Host storage for HostStep: per layer a [B, H, cap, hd] block of hostMemory(), by byte offset. */
  private hk: number[] = [];
  private hv: number[] = [];

  constructor(
    sinks: number | SinkWindow[],
    window: number,
    private readonly shape: { layers: number; heads: number; headDim: number },
  ) {
    this.streams = typeof sinks === 'number' ? [{ sinks, window }] : sinks;
    for (const s of this.streams) {
      if (!Number.isInteger(s.sinks) || s.sinks < 0) throw new Error(`sinks must be an integer >= 0 (got ${s.sinks})`);
      if (!Number.isInteger(s.window) || s.window < 1) throw new Error(`window must be an integer >= 1 (got ${s.window})`);
    }
    this.capacity = this.streams[0]!.sinks + this.streams[0]!.window;
    if (this.streams.some((s) => s.sinks + s.window !== this.capacity)) throw new Error('batched streams must share one capacity S+W');
    this.sinks = this.streams[0]!.sinks;
    this.window = this.streams[0]!.window;
    this.slotTime = this.streams.map(() => new Int32Array(this.capacity).fill(-1));
  }

  get batch(): number {
    return this.streams.length;
  }

  /** Keys the next token will attend to, itself included. */
  get size(): number {
    return Math.min(this.seen + 1, this.capacity);
  }

  private slotOf(s: SinkWindow, t: number): number {
    return t < s.sinks ? t : s.sinks + ((t - s.sinks) % s.window);
  }

  begin(n: number): CacheLayout {
    const B = this.streams.length;
    const t0 = this.seen;
    const cap = this.capacity;
    // Several tokens at once only for one stream, while nothing is evicted and the slots
    // are contiguous (prefill); streaming feeds one token at a time.
    if (n > 1 && (B > 1 || t0 + n > cap)) {
      throw new Error(`SinkCache takes ${n} tokens at once only for one stream before it is full; feed tokens one by one`);
    }
    const queryPositions = new Int32Array(B * n);
    const keyPositions = new Int32Array(B * cap);
    const bias = new Float32Array(B * n * cap);
    const queryTimes = new Float64Array(B * n);
    const keyTimes = new Float64Array(B * cap);
    const slots: number[] = [];
    this.streams.forEach((s, b) => {
      const times = this.slotTime[b]!;
      const first = this.slotOf(s, t0);
      slots.push(first);
      for (let i = 0; i < n; i++) times[first + i] = t0 + i;
      const last = t0 + n - 1;
      const recentKept = Math.max(0, Math.min(last + 1 - s.sinks, s.window));
      const oldestRecent = last - recentKept + 1;
      for (let j = 0; j < cap; j++) {
        const tau = times[j]!;
        keyPositions[b * cap + j] = tau < 0 ? 0 : tau < s.sinks ? tau : s.sinks + (tau - oldestRecent);
        keyTimes[b * cap + j] = tau < 0 ? 0 : tau;
        for (let i = 0; i < n; i++) if (tau < 0 || tau > t0 + i) bias[(b * n + i) * cap + j] = NEG_INF;
      }
      for (let i = 0; i < n; i++) {
        queryPositions[b * n + i] = keyPositions[b * cap + first + i]!;
        queryTimes[b * n + i] = t0 + i;
      }
    });
    this.pendingSlots = slots;
    this.pendingN = n;
    this.writeMask?.dispose();
    this.writeMask = null;
    return { queryPositions, keyPositions, bias, batch: B, queryTimes, keyTimes };
  }

  update(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { k: tf.Tensor4D; v: tf.Tensor4D } {
    if (!this.k[layer]) {
      const { heads, headDim } = this.shape;
      this.k[layer] = tf.keep(tf.zeros([this.streams.length, heads, this.capacity, headDim]));
      this.v[layer] = tf.keep(tf.zeros([this.streams.length, heads, this.capacity, headDim]));
    }
    const nk = tf.keep(this.write(this.k[layer]!, k));
    const nv = tf.keep(this.write(this.v[layer]!, v));
    this.k[layer]!.dispose();
    this.v[layer]!.dispose();
    this.k[layer] = nk;
    this.v[layer] = nv;
    return { k: nk, v: nv };
  }

  /** Host-side update (HostStep): the new rows are copied into their slots in place. */
  updateHost(layer: number, k: Float32Array, v: Float32Array): { k: number; v: number; stride: number } {
    const { heads, headDim } = this.shape;
    const B = this.streams.length;
    const cap = this.capacity;
    const n = this.pendingN;
    const mem = hostMemory();
    const size = B * heads * cap * headDim;
    if (this.hk[layer] === undefined) {
      this.hk[layer] = mem.alloc(size);
      this.hv[layer] = mem.alloc(size);
    }
    const hk = mem.f32(this.hk[layer]!, size);
    const hv = mem.f32(this.hv[layer]!, size);
    for (let b = 0; b < B; b++) {
      const slot = this.pendingSlots[b]!;
      for (let h = 0; h < heads; h++) {
        const from = (b * heads + h) * n * headDim;
        const to = ((b * heads + h) * cap + slot) * headDim;
        hk.set(k.subarray(from, from + n * headDim), to);
        hv.set(v.subarray(from, from + n * headDim), to);
      }
    }
    return { k: this.hk[layer]!, v: this.hv[layer]!, stride: cap };
  }

  /** buf with each stream's pending slot(s) replaced by rows (an exact select, no arithmetic). */
  private write(buf: tf.Tensor4D, rows: tf.Tensor4D): tf.Tensor4D {
    if (this.pendingN === 1) {
      if (!this.writeMask) {
        const B = this.streams.length;
        const mask = new Uint8Array(B * this.capacity);
        this.pendingSlots.forEach((slot, b) => (mask[b * this.capacity + slot] = 1));
        this.writeMask = tf.keep(tf.tensor4d(mask, [B, 1, this.capacity, 1], 'bool'));
      }
      return tf.where(this.writeMask, rows, buf) as tf.Tensor4D;
    }
    const s = this.pendingSlots[0]!;
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
    this.writeMask?.dispose();
    this.writeMask = null;
    this.k = [];
    this.v = [];
    for (const at of [...this.hk, ...this.hv]) if (at !== undefined) hostMemory().release(at);
    this.hk = [];
    this.hv = [];
  }
}
