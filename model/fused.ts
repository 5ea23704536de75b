/**
 * Fused forms of the pieces whose autodiff graphs cost most per training step: the
 * LayerNorm normalisation, exact GELU, the linear layer and the next-token cross entropy.
 * Each is one operation with a hand-written gradient (the closed forms PyTorch's fused
 * kernels use), so backprop runs a handful of kernels instead of the dozens tfjs's chain
 * rule expands them to; on the native backend the linear layer and the cross entropy run
 * TensorFlow's own kernels (native.ts). The model calls these (ops.ts, neox.ts). Each
 * returns what its formula returns, to float round-off: test/fused.test.ts checks values
 * and gradients against the formulas differentiated by tfjs.
 *
 * Where sinklm's own TensorFlow ops are loaded (kernels.ts), LayerNorm with its affines,
 * bias + GELU and the causal attention run as one fused kernel each, forward and backward;
 * test/kernels.test.ts checks them against the formulas here.
 */
import * as tf from '@tensorflow/tfjs-core';
import { attentionKernel, biasGeluKernel, hasKernel, layerNorm2Kernel, layerNormKernel, type AttentionKernelArgs } from './kernels.js';
import { biasAdd, biasGrad, matMul2d, native, sparseSoftmaxXent } from './native.js';

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/**
 * (x - mean) / sqrt(var + eps) over the last axis. Backward, with y the output and
 * r = 1/sqrt(var + eps): dx = r * (dy - mean(dy) - y * mean(dy * y)).
 */
export function normalize(x: tf.Tensor, eps: number): tf.Tensor {
  return withGrad((xi, save) => {
    const { mean, variance } = tf.moments(xi, -1, true);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const y = tf.mul(tf.sub(xi, mean), rstd);
    save([y, rstd]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [ys, r] = saved as [tf.Tensor, tf.Tensor];
        const centred = tf.sub(dy, tf.mean(dy, -1, true));
        return tf.mul(tf.sub(centred, tf.mul(ys, tf.mean(tf.mul(dy, ys), -1, true))), r);
      },
    };
  }, x);
}

/** LayerNorm over the last axis: normalize(x) * gamma + beta. */
export function layerNormAffine(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, eps: number): tf.Tensor {
  if (x.rank === 2 && gamma.rank === 1 && hasKernel('SinklmLayerNorm')) return layerNormKernel(x as tf.Tensor2D, gamma as tf.Tensor1D, beta as tf.Tensor1D, eps);
  return tf.add(tf.mul(normalize(x, eps), gamma), beta);
}

/**
 * The parallel residual's two LayerNorms of the same x [N, D]: the statistics once, two
 * affines.
 */
export function layerNormPair(x: tf.Tensor2D, g1: tf.Tensor1D, b1: tf.Tensor1D, g2: tf.Tensor1D, b2: tf.Tensor1D, eps: number): [tf.Tensor2D, tf.Tensor2D] {
  if (hasKernel('SinklmLayerNorm2')) return layerNorm2Kernel(x, g1, b1, g2, b2, eps);
  const xhat = normalize(x, eps);
  return [tf.add(tf.mul(xhat, g1), b1) as tf.Tensor2D, tf.add(tf.mul(xhat, g2), b2) as tf.Tensor2D];
}

/** gelu(x W^T + b), exact GELU, W [out, in]: the MLP's first half. */
export function linearGelu(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D): tf.Tensor2D {
  if (hasKernel('SinklmBiasGelu')) return biasGeluKernel(linear(x, weight), bias);
  return geluExact(linear(x, weight, bias)) as tf.Tensor2D;
}

/** Causal self-attention of one layer from the fused qkv projection, by sinklm's kernel. */
export function causalAttention(a: AttentionKernelArgs): tf.Tensor2D {
  return attentionKernel(a);
}

export { hasKernel };

/**
 * Exact GELU, x * Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2. Backward:
 * dx = dy * (Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi)).
 */
export function geluExact(x: tf.Tensor): tf.Tensor {
  return withGrad((xi, save) => {
    const cdf = tf.mul(tf.add(tf.erf(tf.mul(xi, Math.SQRT1_2)), 1), 0.5);
    save([xi, cdf]);
    return {
      value: tf.mul(xi, cdf),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, phi] = saved as [tf.Tensor, tf.Tensor];
        const pdf = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), INV_SQRT_2PI);
        return tf.mul(dy, tf.add(phi, tf.mul(xs, pdf)));
      },
    };
  }, x);
}

type OneInput = (x: tf.Tensor, save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor };

/** tf.customGrad for a function of one tensor (its typing takes variadic tensors). */
function withGrad(f: OneInput, x: tf.Tensor): tf.Tensor {
  return tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0])(x);
}

/**
 * y = x W^T + b with W stored as PyTorch does ([out, in]); without `bias`, x W^T. Backward:
 * dx = dy W, dW = dy^T x, db = column sums of dy. On the native backend TensorFlow's 2-D
 * MatMul and BiasAdd (tfjs-node would run a batched matmul and a broadcast add).
 */
export function linear(x: tf.Tensor2D, weight: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  const nat = native();
  const f = tf.customGrad(((xi: tf.Tensor2D, w: tf.Tensor2D, ...rest: unknown[]) => {
    const b = bias ? (rest[0] as tf.Tensor1D) : undefined;
    const save = rest.at(-1) as tf.GradSaveFunc;
    save([xi, w]);
    const xw: tf.Tensor2D = nat ? matMul2d(xi, w, false, true) : tf.matMul(xi, w, false, true);
    const value = !b ? xw : nat ? biasAdd(xw, b) : tf.add(xw, b);
    return {
      value,
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
        const [xs, ws] = saved as [tf.Tensor2D, tf.Tensor2D];
        const grads = [
          nat ? matMul2d(dy, ws) : tf.matMul(dy, ws),
          // dy^T x: tfjs's batched matmul is the faster of the two with a transposed left side.
          tf.matMul(dy, xs, true, false),
        ];
        if (b) grads.push(nat ? biasGrad(dy) : tf.sum(dy, 0));
        return grads;
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return (bias ? f(x, weight, bias) : f(x, weight)) as tf.Tensor2D;
}

/**
 * Per-row next-token NLL, logsumexp(logits) - logits[target]: logits [N, V], targets [N]
 * int32 in [0, V). On the native backend TensorFlow's fused softmax cross entropy, whose
 * one pass also yields the gradient softmax - onehot; elsewhere the formula, with the
 * picked logit read by `pick` (a gather, or a one-hot product where gather has no gradient).
 */
export function tokenNll(logits: tf.Tensor2D, targets: tf.Tensor1D, pick: (logits: tf.Tensor2D, targets: tf.Tensor1D) => tf.Tensor1D): tf.Tensor1D {
  if (!native()) return tf.sub(tf.logSumExp(logits, -1), pick(logits, targets));
  return withGrad((l, save) => {
    const [nll, backprop] = sparseSoftmaxXent(l as tf.Tensor2D, targets);
    save([backprop]);
    return { value: nll, gradFunc: (dy, saved) => tf.mul(saved[0]!, tf.expandDims(dy, 1)) };
  }, logits) as tf.Tensor1D;
}
