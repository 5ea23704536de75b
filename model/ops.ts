/**
 * The small numerical pieces of GPT-NeoX, each one function: LayerNorm, GELU, the linear
 * layer in PyTorch's [out, in] orientation, rotary embedding, and the attention weights
 * of the four sink modes.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { SinkMode } from '../core/config.js';
import { NEG_INF } from './cache.js';
import { geluExact, layerNormAffine, linear } from './fused.js';

export { linear, NEG_INF };

export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  return layerNormAffine(x, weight, bias, eps);
}

/** Exact GELU (`gelu`) or the tanh approximation (`gelu_new`), as HF's ACT2FN has them. */
export function gelu(x: tf.Tensor, kind: 'gelu' | 'gelu_new'): tf.Tensor {
  if (kind === 'gelu') return geluExact(x);
  const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
}

/** Rotary's rotaryDims/2 angular frequencies, base^(-2i/rotaryDims), as HF has them (float32 values). */
export function rotaryFrequencies(rotaryDims: number, base: number): Float64Array {
  return Float64Array.from({ length: rotaryDims / 2 }, (_, i) => Math.fround(1 / Math.pow(base, (2 * i) / rotaryDims)));
}

/**
 * Rotary tables for positions 0..maxPos-1, widened to the whole head: on the rotary dims
 * cos/sin of pos * inv_freq (HF's "rotate half" layout: the frequencies repeat twice),
 * on the pass-through dims cos = 1 and sin = 0. With `rot`, the [hd, hd] matrix that
 * does rotate_half, rotary becomes x * cos + (x @ rot) * sin on the whole head: no
 * slicing or concatenation, for the full forward and the cached step alike.
 */
export function rotaryTables(maxPos: number, headDim: number, rotaryDims: number, base: number) {
  const half = rotaryDims / 2;
  const cos = new Float32Array(maxPos * headDim);
  const sin = new Float32Array(maxPos * headDim);
  const invFreq = rotaryFrequencies(rotaryDims, base);
  for (let p = 0; p < maxPos; p++) {
    for (let j = 0; j < headDim; j++) {
      // Math.fround: HF computes the angle in float32 before taking cos/sin.
      const angle = j < rotaryDims ? Math.fround(Math.fround(p) * invFreq[j % half]!) : 0;
      cos[p * headDim + j] = j < rotaryDims ? Math.cos(angle) : 1;
      sin[p * headDim + j] = j < rotaryDims ? Math.sin(angle) : 0;
    }
  }
  const rot = new Float32Array(headDim * headDim);
  for (let j = 0; j < half; j++) {
    rot[(j + half) * headDim + j] = -1; // out[j] = -x[j + half]
    rot[j * headDim + (j + half)] = 1; // out[j + half] = x[j]
  }
  return {
    cos: tf.tensor2d(cos, [maxPos, headDim]),
    sin: tf.tensor2d(sin, [maxPos, headDim]),
    rot: tf.tensor2d(rot, [headDim, headDim]),
    /** The same cos/sin on the host (a backend such as WebGPU has no synchronous reads). */
    host: { cos, sin },
  };
}

/** Applies rotary to x [..., n, hd] with cos/sin [n, hd] (broadcast over the leading dims). */
export function applyRotary(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, rot: tf.Tensor2D): tf.Tensor {
  const hd = x.shape[x.rank - 1]!;
  const rotated = tf.reshape(tf.matMul(tf.reshape(x, [-1, hd]), rot), x.shape);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}

/**
 * Attention weights from scores [..., n, L] (mask already added).
 * - none / token: plain softmax (the token mode's sink is an ordinary key).
 * - softmax1: exp(s_i) / (1 + sum_j exp(s_j)): a sink logit fixed at 0.
 * - logit: exp(s_i) / (exp(b_h) + sum_j exp(s_j)): one learned logit per head.
 * The sink logit joins the max subtraction, so large scores or sink logits cannot overflow.
 */
export function attentionWeights(scores: tf.Tensor, mode: SinkMode, sinkLogit?: tf.Tensor): tf.Tensor {
  if (mode === 'none' || mode === 'token') return tf.softmax(scores);
  const rowMax = tf.max(scores, -1, true);
  const sink = mode === 'softmax1' ? tf.zerosLike(rowMax) : tf.add(tf.zerosLike(rowMax), sinkLogit!);
  const m = tf.maximum(rowMax, sink);
  const e = tf.exp(tf.sub(scores, m));
  const denom = tf.add(tf.sum(e, -1, true), tf.exp(tf.sub(sink, m)));
  return tf.div(e, denom);
}
