/**
 * The contract between the model's incremental step and a KV-cache policy (infer/cache/).
 * The model never knows which policy runs: it asks the cache where the new tokens sit
 * (positions, mask), hands it each layer's new keys and values, and attends to whatever
 * the cache gives back. The tensor step hands keys over BEFORE the rotary transform, so a
 * policy can re-position them (StreamingLLM assigns positions within the cache, not in
 * the text).
 *
 * The host step (model/hoststep.ts) instead stores each key rotated once, at its token's
 * time (its index in the stream, which never changes while the token is cached), and
 * never rotates it again. Rotary scores depend only on the distance between query and key
 * positions, so a key whose position is its time plus an offset (position - time, the
 * same for every key a policy moves together: StreamingLLM's window, or its sinks) is
 * scored against the query rotated at the query's position minus that offset. Per token
 * that is one query rotation per distinct offset (StreamingLLM has two), not one rotation
 * per cached key; the layout's times say which offset each key has.
 */
import type * as tf from '@tensorflow/tfjs-core';

/** Masked-out attention scores. Finite, so a max over a row never meets -inf - -inf. */
export const NEG_INF = -1e9;

export interface CacheLayout {
  /** Rotary position of each of the n new tokens, per stream: [B * n]. */
  queryPositions: Int32Array;
  /** Rotary position of each of the L keys attention will see (after the update), in slot order: [B * L]. */
  keyPositions: Int32Array;
  /** Additive mask [B, n, L]: 0 where query i may see key j, NEG_INF elsewhere. */
  bias: Float32Array;
  /** Time (index in the stream) of each of the n new tokens, per stream: [B * n]. */
  queryTimes: Float64Array;
  /** Time of the token in each key slot, [B * L]; for an empty (masked) slot, its position. */
  keyTimes: Float64Array;
  /** Streams stepping together (default 1); the step's ids are [B * n], stream-major. */
  batch?: number;
}

/** Throws unless every query and key position of a layout is one the model has. */
export function checkPositions(layout: CacheLayout, maxPositions: number): void {
  for (const pos of [layout.queryPositions, layout.keyPositions]) {
    for (const p of pos) if (p < 0 || p >= maxPositions) throw new Error(`position ${p} outside the model's ${maxPositions} positions`);
  }
}

export interface KVCache {
  /** Streams that step together (default 1). */
  readonly batch?: number;
  /** Makes room for n new tokens and says where they and the kept keys sit. */
  begin(n: number): CacheLayout;
  /**
   * Stores one layer's new keys/values ([B, H, n, hd], pre-rotary) and returns all keys
   * and values attention should see ([B, H, L, hd], pre-rotary, slot order of the layout).
   * The cache owns what it keeps (tf.keep) and disposes what it replaces.
   */
  update(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { k: tf.Tensor4D; v: tf.Tensor4D };
  /** Called once every layer has been updated. */
  commit(): void;
  /** Frees every tensor the cache holds. */
  dispose(): void;
}
