/**
 * Dense attention: keep every key (no eviction). Positions are the stream positions (times).
 * The reference the other policies are checked against; memory grows without bound.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CacheLayout, KVCache } from '../../model/cache.js';
import { hostMemory } from '../../model/hostmem.js';
import { NEG_INF } from '../../model/ops.js';

export class DenseCache implements KVCache {
  private k: (tf.Tensor4D | undefined)[] = [];
  private v: (tf.Tensor4D | undefined)[] = [];
  private length = 0;
  private pending = 0;
  /** Host storage for HostStep: per layer an [H, room, hd] block of hostMemory() (byte offset), room doubling as the stream grows. */
  private hk: number[] = [];
  private hv: number[] = [];
  private room = 0;

  constructor(private readonly shape?: { heads: number; headDim: number }) {}

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
    // Nothing moves: a token's position is its time.
    return { queryPositions, keyPositions, bias, queryTimes: Float64Array.from(queryPositions), keyTimes: Float64Array.from(keyPositions) };
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

  /** Host-side update (HostStep): appends the new rows; the blocks' stride is their room. */
  updateHost(layer: number, k: Float32Array, v: Float32Array): { k: number; v: number; stride: number } {
    if (!this.shape) throw new Error('DenseCache: host updates need the shape given to the constructor');
    const { heads, headDim } = this.shape;
    const mem = hostMemory();
    const n = this.pending;
    const need = this.length + n;
    if (need > this.room) {
      // Grow every layer at once (layer 0 sees the step first), keeping each head's rows.
      const room = Math.max(need, 2 * this.room, 64);
      const grow = (old: number) => {
        const at = mem.alloc(heads * room * headDim);
        const from = mem.f32(old, heads * this.room * headDim);
        const to = mem.f32(at, heads * room * headDim);
        for (let h = 0; h < heads; h++) to.set(from.subarray(h * this.room * headDim, (h * this.room + this.length) * headDim), h * room * headDim);
        mem.release(old);
        return at;
      };
      this.hk = this.hk.map(grow);
      this.hv = this.hv.map(grow);
      this.room = room;
    }
    if (this.hk[layer] === undefined) {
      this.hk[layer] = mem.alloc(heads * this.room * headDim);
      this.hv[layer] = mem.alloc(heads * this.room * headDim);
    }
    const hk = mem.f32(this.hk[layer]!, heads * this.room * headDim);
    const hv = mem.f32(this.hv[layer]!, heads * this.room * headDim);
    for (let h = 0; h < heads; h++) {
      const to = (h * this.room + this.length) * headDim;
      hk.set(k.subarray(h * n * headDim, (h + 1) * n * headDim), to);
      hv.set(v.subarray(h * n * headDim, (h + 1) * n * headDim), to);
    }
    return { k: this.hk[layer]!, v: this.hv[layer]!, stride: this.room };
  }

  commit(): void {
    this.length += this.pending;
    this.pending = 0;
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t?.dispose();
    this.k = [];
    this.v = [];
    for (const at of [...this.hk, ...this.hv]) if (at !== undefined) hostMemory().release(at);
    this.hk = [];
    this.hv = [];
    this.room = 0;
    this.length = 0;
  }
}
