import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { geluExact, linear, normalize, tokenNll } from '../model/fused.js';
import { maxAbsDiff, numTensors, testBackend } from './helpers.js';

beforeAll(async () => {
  await testBackend();
});

/** The unfused formulas, differentiated by tfjs's chain rule: the references. */
const reference = {
  normalize: (x: tf.Tensor, eps: number) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
  },
  gelu: (x: tf.Tensor) => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)),
};

/** Value and input gradient of sum(f(x) * w) (w random, so every output's gradient differs). */
function valueAndGrad(f: (x: tf.Tensor) => tf.Tensor, x: tf.Tensor, w: tf.Tensor): [Float32Array, Float32Array] {
  return tf.tidy(() => {
    const y = f(x);
    const g = tf.grad((xi: tf.Tensor) => tf.sum(tf.mul(f(xi), w)))(x);
    return [y.dataSync() as Float32Array, g.dataSync() as Float32Array];
  });
}

describe('fused ops equal their formulas, values and gradients', () => {
  let x: tf.Tensor;
  let w: tf.Tensor;
  beforeAll(() => {
    x = tf.mul(tf.randomNormal([37, 24], 0, 1, 'float32', 5), 3);
    w = tf.randomNormal([37, 24], 0, 1, 'float32', 6);
  });

  it('normalize (LayerNorm without affine), eps 1e-5', () => {
    const [y, g] = valueAndGrad((t) => normalize(t, 1e-5), x, w);
    const [yr, gr] = valueAndGrad((t) => reference.normalize(t, 1e-5), x, w);
    expect(maxAbsDiff(y, yr)).toBeLessThan(1e-5);
    expect(maxAbsDiff(g, gr)).toBeLessThan(1e-5);
  });

  it('exact GELU', () => {
    const [y, g] = valueAndGrad(geluExact, x, w);
    const [yr, gr] = valueAndGrad(reference.gelu, x, w);
    expect(maxAbsDiff(y, yr)).toBeLessThan(1e-5);
    expect(maxAbsDiff(g, gr)).toBeLessThan(1e-5);
  });

  it('linear: x W^T + b, gradients for x, W and b', () => {
    const W = tf.randomNormal([11, 24], 0, 1, 'float32', 8) as tf.Tensor2D;
    const b = tf.randomNormal([11], 0, 1, 'float32', 9) as tf.Tensor1D;
    const wOut = tf.randomNormal([37, 11], 0, 1, 'float32', 10);
    const ref = (xi: tf.Tensor2D, Wi: tf.Tensor2D, bi: tf.Tensor1D) => tf.add(tf.matMul(xi, Wi, false, true), bi);
    const loss = (f: typeof ref) => (xi: tf.Tensor, Wi: tf.Tensor, bi: tf.Tensor) => tf.sum(tf.mul(f(xi as tf.Tensor2D, Wi as tf.Tensor2D, bi as tf.Tensor1D), wOut));
    const got = tf.grads(loss(linear))([x, W, b]);
    const want = tf.grads(loss(ref))([x, W, b]);
    expect(maxAbsDiff(linear(x as tf.Tensor2D, W, b).dataSync(), ref(x as tf.Tensor2D, W, b).dataSync())).toBeLessThan(1e-4);
    got.forEach((g, i) => expect(maxAbsDiff(g.dataSync(), want[i]!.dataSync())).toBeLessThan(1e-4));
    tf.dispose([W, b, wOut, ...got, ...want]);
  });

  it('token NLL (the native fused kernel where the backend is tensorflow) equals a float64 formula, value and gradient', () => {
    // The reference is computed on the host in float64: lse(x) - x[t], gradient
    // (softmax(x) - onehot(t)) * w. Independent of tfjs on every backend (off native the
    // op's own fallback is tfjs's logSumExp, which must not be checked against itself).
    const targetIds = Array.from({ length: 37 }, (_, i) => (i * 7) % 24);
    const targets = tf.tensor1d(targetIds, 'int32');
    const rowW = tf.randomNormal([37], 0, 1, 'float32', 7);
    const pick = (l: tf.Tensor2D, t: tf.Tensor1D) => tf.sum(tf.mul(l, tf.cast(tf.oneHot(t, 24), 'float32')), -1) as tf.Tensor1D;
    const [y, g] = valueAndGrad((t) => tokenNll(t as tf.Tensor2D, targets, pick), x, rowW);
    const xs = x.dataSync();
    const ws = rowW.dataSync();
    const yr = new Float64Array(37);
    const gr = new Float64Array(37 * 24);
    for (let r = 0; r < 37; r++) {
      const row = Array.from(xs.subarray(r * 24, (r + 1) * 24), Number);
      const m = Math.max(...row);
      const sum = row.reduce((a, v) => a + Math.exp(v - m), 0);
      yr[r] = m + Math.log(sum) - row[targetIds[r]!]!;
      row.forEach((v, j) => (gr[r * 24 + j] = (Math.exp(v - m) / sum - (j === targetIds[r] ? 1 : 0)) * ws[r]!));
    }
    expect(maxAbsDiff(y, yr)).toBeLessThan(1e-5);
    expect(maxAbsDiff(g, gr)).toBeLessThan(1e-6);
    tf.dispose([targets, rowW]);
  });

  it('leave no tensors behind, forward or backward', () => {
    const targets = tf.tensor1d(Array.from({ length: 37 }, (_, i) => i % 24), 'int32');
    const before = numTensors();
    for (let i = 0; i < 3; i++) {
      tf.tidy(() => tf.grad((t: tf.Tensor) => tf.sum(tokenNll(geluExact(normalize(t, 1e-5)) as tf.Tensor2D, targets, (l) => tf.max(l, -1))))(x)).dispose();
      tf.tidy(() => tokenNll(normalize(x, 1e-5) as tf.Tensor2D, targets, (l) => tf.max(l, -1))).dispose();
    }
    expect(numTensors()).toBe(before);
    targets.dispose();
  });
});
