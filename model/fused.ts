/**
 * The fused operations of the training step: LayerNorm (the parallel residual's pair shares
 * its statistics), the linear layer, bias + exact GELU, causal attention with rotary and
 * the four sink modes, and the next-token cross entropy. Each is one operation with one
 * kernel per backend (kernels/: sinklm's own TensorFlow ops or TensorFlow's built-ins on
 * the native backend, the formulas everywhere else) and a hand-written gradient (the closed
 * forms PyTorch's fused kernels use), so backprop runs a handful of kernels instead of the
 * dozens tfjs's chain rule expands them to. The model calls these (ops.ts, neox.ts);
 * test/kernels.test.ts checks each, on each backend, against its formula differentiated
 * by tfjs.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { SinkMode } from '../core/config.js';
import { run } from './kernels/index.js';
import './kernels/gradients.js';

/** Keeps the first output; the rest (what the backward needs) are freed: the tape keeps its own copies. */
function first(outs: tf.Tensor | tf.Tensor[]): tf.Tensor {
  const all = outs as tf.Tensor[];
  tf.dispose(all.slice(1));
  return all[0]!;
}

/** LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta. */
export function layerNormAffine(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, eps: number): tf.Tensor {
  const D = x.shape[x.rank - 1]!;
  const rows = x.rank === 2 ? x : tf.reshape(x, [-1, D]);
  const y = first(run('SinklmLayerNorm', { x: rows, gamma, beta }, { eps }));
  return x.rank === 2 ? y : tf.reshape(y, x.shape);
}

/** The parallel residual's two LayerNorms of the same x [N, D]: the statistics once, two affines. */
export function layerNormPair(x: tf.Tensor2D, g1: tf.Tensor1D, b1: tf.Tensor1D, g2: tf.Tensor1D, b2: tf.Tensor1D, eps: number): [tf.Tensor2D, tf.Tensor2D] {
  const out = run('SinklmLayerNorm2', { x, gamma1: g1, beta1: b1, gamma2: g2, beta2: b2 }, { eps }) as tf.Tensor2D[];
  tf.dispose(out.slice(2));
  return [out[0]!, out[1]!];
}

/** 2-D a x b with optional transposes. */
export function matMul2d(a: tf.Tensor2D, b: tf.Tensor2D, transposeA = false, transposeB = false): tf.Tensor2D {
  return run('SinklmMatMul', { a, b }, { transposeA, transposeB }) as tf.Tensor2D;
}

/**
 * y = x W^T + b with W stored as PyTorch does ([out, in]); without `bias`, x W^T. Backward:
 * dx = dy W, dW = dy^T x, db = column sums of dy.
 */
export function linear(x: tf.Tensor2D, weight: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  const f = tf.customGrad(((xi: tf.Tensor2D, w: tf.Tensor2D, ...rest: unknown[]) => {
    const b = bias ? (rest[0] as tf.Tensor1D) : undefined;
    const save = rest.at(-1) as tf.GradSaveFunc;
    save([xi, w]);
    const xw = matMul2d(xi, w, false, true);
    return {
      value: b ? (run('SinklmBiasAdd', { x: xw, bias: b }) as tf.Tensor2D) : xw,
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
        const [xs, ws] = saved as [tf.Tensor2D, tf.Tensor2D];
        const grads: tf.Tensor[] = [matMul2d(dy, ws), matMul2d(dy, xs, true, false)];
        if (b) grads.push(run('SinklmBiasAddGrad', { dy }) as tf.Tensor1D);
        return grads;
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return (bias ? f(x, weight, bias) : f(x, weight)) as tf.Tensor2D;
}

/**
 * Rows `ids` of table [V, D] (the embedding lookup). Its gradient is its own kernel:
 * tfjs's (UnsortedSegmentSum) sums with atomics on webgpu, in a different order every run,
 * and a resumed run must repeat the losses bit for bit.
 */
export function embedding(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const V = table.shape[0];
  const f = tf.customGrad(((t: tf.Tensor2D, save: tf.GradSaveFunc) => {
    // The ids are kept with the tape: the forward's own tensors are freed before the backward.
    save([ids]);
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => run('SinklmEmbeddingGrad', { dy, ids: saved[0]! }, { vocab: V }) as tf.Tensor2D,
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(table) as tf.Tensor2D;
}

/** Exact GELU of (x + bias), bias along the last axis: u * Phi(u). */
export function biasGelu(x: tf.Tensor, bias: tf.Tensor1D): tf.Tensor {
  return run('SinklmBiasGelu', { x, bias }) as tf.Tensor;
}

/** Exact GELU, x * Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2. */
export function geluExact(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => biasGelu(x, tf.zeros([x.shape[x.rank - 1]!])));
}

/** gelu(x W^T + b), exact GELU, W [out, in]: the MLP's first half. */
export function linearGelu(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D): tf.Tensor2D {
  return biasGelu(linear(x, weight), bias) as tf.Tensor2D;
}

export const SINK_MODE_CODE: Record<SinkMode, number> = { none: 0, token: 0, softmax1: 1, logit: 2 };

export interface AttentionArgs {
  /** The fused projection [B*T, H*3*hd] in HF's per-head [q|k|v] layout. */
  qkv: tf.Tensor2D;
  /** Rotary tables [>= T, hd]; the query ones carry 1/sqrt(hd). */
  qCos: tf.Tensor2D;
  qSin: tf.Tensor2D;
  kCos: tf.Tensor2D;
  kSin: tf.Tensor2D;
  /** Per-head sink logits [H] (logit mode); any tensor otherwise. */
  sink: tf.Tensor1D;
  batch: number;
  heads: number;
  rotaryDims: number;
  mode: SinkMode;
}

/**
 * Causal self-attention of one layer, all heads, from the fused qkv projection: rotary, the
 * scores, the softmax of the sink mode, the weighted sum of values. The context [B*T, H*hd].
 */
export function causalAttention(a: AttentionArgs): tf.Tensor2D {
  const out = run(
    'SinklmAttention',
    { qkv: a.qkv, qcos: a.qCos, qsin: a.qSin, kcos: a.kCos, ksin: a.kSin, sink: a.sink },
    { batch: a.batch, heads: a.heads, rotary_dims: a.rotaryDims, mode: SINK_MODE_CODE[a.mode] },
  );
  return first(out) as tf.Tensor2D;
}

/**
 * Per-row next-token NLL, logsumexp(logits) - logits[target]: logits [N, V], targets [N]
 * int32 in [0, V). Its gradient, dnll * (softmax - onehot), is one pass over the logits.
 */
export function tokenNll(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  return first(run('SinklmXent', { logits, labels: targets })) as tf.Tensor1D;
}
