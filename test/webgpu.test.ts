/**
 * sinklm on tfjs's webgpu backend, on a real adapter (a GPU, or SwiftShader's software
 * Vulkan where there is none; CI installs it): the adapter is really there (never a silent
 * fallback), each WGSL kernel (model/kernels/webgpu.ts) equals its formula run on tfjs's cpu
 * backend to 1e-4 relative in values and gradients, and nothing on the training path needs
 * a synchronous read. The CLI parity runs (train, score, stream-eval against the tensorflow
 * backend) are in webgpu-cli.test.ts.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import { checkDevice, type BackendInfo } from '../core/backend.js';
import { embedding, layerNormAffine, layerNormPair, linearGelu, tokenNll } from '../model/fused.js';
import { kernelSource } from '../model/kernels/index.js';
import type { ParamSpec } from '../model/params.js';
import { AdamW } from '../train/optimizer.js';
import { relErr, webgpuBackend } from './helpers.js';

const info = await webgpuBackend('test/webgpu.test.ts');
const suite = info ? describe : describe.skip;

/** Seeded normal host arrays: the same inputs on either backend. */
function normal(n: number, seed: number, scale = 1, shift = 0): Float32Array {
  const rng = seedrandom(String(seed));
  return Float32Array.from({ length: n }, () => shift + scale * Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng()));
}

/** Runs `f` on `backend` and reads its tensors back asynchronously. */
async function on(backend: string, f: () => tf.Tensor[]): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const outs = tf.tidy(f);
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  if (backend === 'webgpu') checkDevice('the test'); // a validation error is a failure, not a wrong number
  return values;
}

/** The value of g(xs) and the gradients of sum(g(xs) * w), as tensors (inside a tidy). */
function valueAndGrads(g: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], w: tf.Tensor): tf.Tensor[] {
  const y = g(...xs);
  return [y, ...tf.grads((...ts: tf.Tensor[]) => tf.sum(tf.mul(g(...ts), w)))(xs)];
}

/** The same computation on webgpu (sinklm's WGSL) and on cpu (the formulas): every output to 1e-4 relative. */
async function expectSameOnBoth(f: () => tf.Tensor[], tol = 1e-4): Promise<number[]> {
  const got = await on('webgpu', f);
  const want = await on('cpu', f);
  await tf.setBackend('webgpu');
  expect(got.length).toBe(want.length);
  const errs = got.map((g, i) => relErr(g, want[i]!));
  if (process.env.DEBUG_WGSL) console.log(got.map((g) => g.slice(0, 3)), want.map((g) => g.slice(0, 3)));
  errs.forEach((e, i) => expect(e, `output ${i} (0 = value, then the gradients)`).toBeLessThan(tol));
  return errs;
}

suite('the webgpu backend', () => {
  it('runs on a real WebGPU adapter (a GPU or SwiftShader), with sinklm\'s WGSL kernels', () => {
    const i = info as BackendInfo;
    expect(i.backend).toBe('webgpu');
    expect(tf.getBackend()).toBe('webgpu');
    expect(i.webgpu.adapter).toBeDefined();
    expect(i.webgpu.adapter!.architecture || i.webgpu.adapter!.vendor).not.toBe('');
    for (const k of ['SinklmLayerNorm2', 'SinklmLayerNorm2Grad', 'SinklmBiasGelu', 'SinklmXent', 'SinklmXentGrad', 'SinklmAdamW']) expect(kernelSource(k), k).toBe('wgsl');
  });

  it('has no synchronous reads in Node (why every read on its paths is async)', () => {
    // Small tensors run on the CPU (tfjs's WEBGPU_CPU_FORWARD); a product of 100 x 100 does not.
    const t = tf.ones([100, 100]);
    const y = tf.matMul(t, t);
    expect(() => y.dataSync()).toThrow();
    tf.dispose([t, y]);
  });

  for (const [N, D] of [
    [37, 24],
    [5, 200],
    [1, 8],
    [130, 64],
  ] as const) {
    it(`LayerNorm and its pair, [${N}, ${D}]`, async () => {
      const lnInputs = () => [tf.tensor2d(normal(N * D, 1, 3, 1.5), [N, D]), ...[2, 3, 4, 5].map((s) => tf.tensor1d(normal(D, s)))];
      await expectSameOnBoth(() => {
        const [x, g, b] = lnInputs();
        return valueAndGrads((x, g, b) => layerNormAffine(x!, g!, b!, 1e-5), [x!, g!, b!], tf.tensor2d(normal(N * D, 6), [N, D]));
      });
      await expectSameOnBoth(() => {
        const xs = lnInputs();
        const w1 = tf.tensor2d(normal(N * D, 7), [N, D]);
        const w2 = tf.tensor2d(normal(N * D, 8), [N, D]);
        const pair = (x: tf.Tensor, g1: tf.Tensor, b1: tf.Tensor, g2: tf.Tensor, b2: tf.Tensor) => {
          const [a, b] = layerNormPair(x as tf.Tensor2D, g1 as tf.Tensor1D, b1 as tf.Tensor1D, g2 as tf.Tensor1D, b2 as tf.Tensor1D, 1e-5);
          return tf.add(tf.mul(a, w1), tf.mul(b, w2));
        };
        return valueAndGrads((...t) => pair(t[0]!, t[1]!, t[2]!, t[3]!, t[4]!), xs, tf.onesLike(w1));
      });
    });

    it(`bias + exact GELU after a linear layer, [${N}, ${D}] -> ${2 * D + 3}`, async () => {
      const F = 2 * D + 3;
      await expectSameOnBoth(() => {
        const xs = [tf.tensor2d(normal(N * D, 12), [N, D]), tf.tensor2d(normal(F * D, 13, 0.5), [F, D]), tf.tensor1d(normal(F, 14))];
        return valueAndGrads((x, W, b) => linearGelu(x as tf.Tensor2D, W as tf.Tensor2D, b as tf.Tensor1D), xs, tf.tensor2d(normal(N * F, 15), [N, F]));
      });
    });
  }

  for (const [N, V] of [
    [7, 50],
    [33, 1000],
    [2, 4099],
  ] as const) {
    it(`cross entropy, [${N}, ${V}] (values to 1e-4, the gradient through it too)`, async () => {
      const labels = Int32Array.from(normal(N, 21), (u, i) => Math.abs(Math.floor(u * 7919 + i * 31)) % V);
      await expectSameOnBoth(() => {
        const logits = tf.tensor2d(normal(N * V, 22, 4), [N, V]);
        const t = tf.tensor1d(labels, 'int32');
        return valueAndGrads((l) => tokenNll(l as tf.Tensor2D, t), [logits], tf.tensor1d(normal(N, 23)));
      });
    });
  }

  it('the embedding lookup and its gradient (repeated ids summed in token order, the same bits every run)', async () => {
    const [V, D, N] = [37, 20, 300];
    const ids = Int32Array.from({ length: N }, (_, i) => (i * 7 + (i >> 3)) % 11);
    const f = () => {
      const table = tf.tensor2d(normal(V * D, 50), [V, D]);
      const t = tf.tensor1d(ids, 'int32');
      return valueAndGrads((x) => embedding(x as tf.Tensor2D, t), [table], tf.tensor2d(normal(N * D, 51), [N, D]));
    };
    await expectSameOnBoth(f);
    const [a, b] = [await on('webgpu', f), await on('webgpu', f)];
    expect(Array.from(a[1]!)).toEqual(Array.from(b[1]!));
    expect(kernelSource('SinklmEmbeddingGrad')).toBe('wgsl');
  });

  it('AdamW over a flat vector (two steps, decay on the matrix only, clipping on)', async () => {
    const specs: ParamSpec[] = [
      { name: 'w', shape: [70, 13], kind: 'weight' },
      { name: 'b', shape: [301], kind: 'bias' },
    ];
    await expectSameOnBoth(() => {
      const params = new Map(specs.map((s, i) => [s.name, tf.variable(tf.tensor(normal(s.shape.reduce((a, b) => a * b, 1), 30 + i), s.shape))]));
      const opt = new AdamW({ params, specs, weightsChanged: () => {} }, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1 });
      const norms: tf.Tensor[] = [];
      for (const step of [1, 2]) {
        const grads = new Map(specs.map((s, i) => [s.name, tf.tensor(normal(s.shape.reduce((a, b) => a * b, 1), 40 + 2 * i + step, 3), s.shape)]));
        norms.push(opt.apply(grads, 1e-2 * step));
      }
      const out = [...specs.map((s) => tf.clone(params.get(s.name)!)), ...norms];
      opt.dispose();
      for (const v of params.values()) v.dispose();
      return out;
    });
  });
});
