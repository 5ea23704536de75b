/**
 * sinklm's own TensorFlow ops (native/sinklm_ops.cc via model/kernels.ts) against the
 * formulas they replace: values and gradients to 1e-5 relative, on odd shapes (T not a
 * multiple of anything, one head, head_dim 8 and 64) and in all four sink modes. They run
 * only where the library is built and loaded on the tensorflow backend; the suite passes
 * without it (SINKLM_NO_KERNELS=1 hides it), and then these tests are skipped.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import type { SinkMode } from '../core/config.js';
import { causalAttention, geluExact, hasKernel, layerNormAffine, layerNormPair, linear, linearGelu } from '../model/fused.js';
import { applyRotary, attentionWeights, NEG_INF, rotaryTables } from '../model/ops.js';
import { testBackend } from './helpers.js';

const info = await testBackend();
const on = info.kernels.in_use;

/** max |a - b| over max |b|: the relative error of a whole tensor. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / Math.max(m, 1e-30);
}

/** Values of f and the gradients of sum(f(...) * w) for each input. */
function valueAndGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], w: tf.Tensor): Float32Array[] {
  return tf.tidy(() => {
    const y = f(...xs);
    const gs = tf.grads((...ts: tf.Tensor[]) => tf.sum(tf.mul(f(...ts), w)))(xs);
    return [y, ...gs].map((t) => t.dataSync() as Float32Array);
  });
}

function expectClose(got: Float32Array[], want: Float32Array[], tol = 1e-5): void {
  expect(got.length).toBe(want.length);
  got.forEach((g, i) => {
    expect(g.length).toBe(want[i]!.length);
    expect(relErr(g, want[i]!), `output ${i} (0 = value, then the gradients)`).toBeLessThan(tol);
  });
}

const normal = (shape: number[], seed: number, scale = 1) => tf.mul(tf.randomNormal(shape, 0, 1, 'float32', seed), scale);

describe('the op library loads where it was built', () => {
  it('is in use on native TensorFlow whenever sinklm_ops.node sits beside the addon (unless hidden)', () => {
    const hidden = !!process.env.SINKLM_NO_KERNELS && process.env.SINKLM_NO_KERNELS !== '0';
    let built = false;
    try {
      const lib = path.join(path.dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-node/package.json')), 'lib');
      built = fs.readdirSync(lib).some((d) => fs.existsSync(path.join(lib, d, 'sinklm_ops.node')));
    } catch {
      /* no tfjs-node */
    }
    if (info.backend === 'tensorflow' && built && !hidden) expect(info.kernels, info.kernels.reason).toMatchObject({ in_use: true });
    if (!info.kernels.in_use) expect(info.kernels.reason).toBeTruthy();
    if (hidden) expect(info.kernels.reason).toMatch(/SINKLM_NO_KERNELS/);
  });
});

describe.skipIf(!on)('sinklm kernels equal their formulas (values and gradients, 1e-5 relative)', () => {
  beforeAll(() => {
    for (const op of ['SinklmLayerNorm', 'SinklmLayerNorm2', 'SinklmBiasGelu', 'SinklmAttention']) expect(hasKernel(op), op).toBe(true);
  });

  const lnRef = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, eps: number) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), g), b);
  };

  for (const [N, D] of [
    [37, 24],
    [5, 64],
    [1, 8],
  ] as const) {
    it(`LayerNorm, one affine, [${N}, ${D}]`, () => {
      const xs = [tf.add(normal([N, D], 1, 3), 1.5), normal([D], 2), normal([D], 3)];
      const w = normal([N, D], 4);
      expectClose(
        valueAndGrads((x, g, b) => layerNormAffine(x!, g!, b!, 1e-5), xs, w),
        valueAndGrads((x, g, b) => lnRef(x!, g!, b!, 1e-5), xs, w),
      );
    });

    it(`LayerNorm pair (shared statistics, two affines), [${N}, ${D}]`, () => {
      const xs = [normal([N, D], 5, 2), normal([D], 6), normal([D], 7), normal([D], 8), normal([D], 9)];
      const w1 = normal([N, D], 10);
      const w2 = normal([N, D], 11);
      // Both outputs feed the loss, with different weights: both backward paths count.
      const both = (f: (...t: tf.Tensor[]) => [tf.Tensor, tf.Tensor]) => (...t: tf.Tensor[]) => {
        const [a, b] = f(...t);
        return tf.add(tf.mul(a, w1), tf.mul(b, w2));
      };
      const ones = tf.onesLike(w1);
      expectClose(
        valueAndGrads(both((x, g1, b1, g2, b2) => layerNormPair(x as tf.Tensor2D, g1 as tf.Tensor1D, b1 as tf.Tensor1D, g2 as tf.Tensor1D, b2 as tf.Tensor1D, 1e-5)), xs, ones),
        valueAndGrads(both((x, g1, b1, g2, b2) => [lnRef(x!, g1!, b1!, 1e-5), lnRef(x!, g2!, b2!, 1e-5)]), xs, ones),
      );
    });

    it(`bias + exact GELU after a linear layer, [${N}, ${D}] -> ${2 * D + 3}`, () => {
      const F = 2 * D + 3;
      const xs = [normal([N, D], 12), normal([F, D], 13, 0.5), normal([F], 14)];
      const w = normal([N, F], 15);
      const gelu = (u: tf.Tensor) => tf.mul(tf.mul(u, 0.5), tf.add(tf.erf(tf.mul(u, Math.SQRT1_2)), 1));
      expectClose(
        valueAndGrads((x, W, b) => linearGelu(x as tf.Tensor2D, W as tf.Tensor2D, b as tf.Tensor1D), xs, w),
        valueAndGrads((x, W, b) => gelu(tf.add(tf.matMul(x!, W!, false, true), b!)), xs, w),
      );
      // The kernel path and the fused formula (geluExact after linear) agree as well.
      expectClose(
        valueAndGrads((x, W, b) => linearGelu(x as tf.Tensor2D, W as tf.Tensor2D, b as tf.Tensor1D), xs, w),
        valueAndGrads((x, W, b) => geluExact(linear(x as tf.Tensor2D, W as tf.Tensor2D, b as tf.Tensor1D)), xs, w),
      );
    });
  }

  const MODES: SinkMode[] = ['none', 'token', 'softmax1', 'logit'];
  // [B, T, H, head_dim, rotary dims]
  const SHAPES = [
    [2, 37, 3, 8, 4],
    [1, 19, 1, 64, 16],
    [2, 5, 2, 64, 64],
    [1, 1, 2, 8, 0],
  ] as const;

  for (const mode of MODES) {
    for (const [B, T, H, hd, rd] of SHAPES) {
      it(`causal attention, ${mode}, B=${B} T=${T} H=${H} head_dim=${hd} rotary=${rd}`, () => {
        const maxPos = T + 5;
        const t = rotaryTables(maxPos, hd, rd, 10000);
        const scale = 1 / Math.sqrt(hd);
        const qCos = tf.mul(t.cos, scale) as tf.Tensor2D;
        const qSin = tf.mul(t.sin, scale) as tf.Tensor2D;
        const qkv = normal([B * T, H * 3 * hd], 20 + T, 2);
        const sink = tf.tensor1d(Array.from({ length: H }, (_, h) => [0.7, -1.3, 2.1][h % 3]!));
        const w = normal([B * T, H * hd], 21);
        const mask = new Float32Array(T * T);
        for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = NEG_INF;
        const bias = tf.tensor2d(mask, [T, T]);
        const first = (x: tf.Tensor) => tf.slice(x, [0, 0], [T, hd]);

        const kernel = (q: tf.Tensor, s?: tf.Tensor) =>
          causalAttention({ qkv: q as tf.Tensor2D, qCos, qSin, kCos: t.cos, kSin: t.sin, sink: (s ?? tf.zeros([1])) as tf.Tensor1D, batch: B, heads: H, rotaryDims: rd, mode });
        const formula = (q: tf.Tensor, s?: tf.Tensor) => {
          const heads = tf.transpose(tf.reshape(q, [B, T, H, 3 * hd]), [0, 2, 1, 3]);
          const [qh, kh, vh] = tf.split(heads, 3, -1) as tf.Tensor4D[];
          const qr = applyRotary(qh!, first(qCos), first(qSin), t.rot);
          const kr = applyRotary(kh!, first(t.cos), first(t.sin), t.rot);
          const scores = tf.add(tf.matMul(qr, kr, false, true), bias);
          const p = attentionWeights(scores, mode, s ? tf.reshape(s, [1, H, 1, 1]) : undefined);
          return tf.reshape(tf.transpose(tf.matMul(p, vh!), [0, 2, 1, 3]), [B * T, H * hd]);
        };
        const inputs = mode === 'logit' ? [qkv, sink] : [qkv];
        expectClose(valueAndGrads(kernel, inputs, w), valueAndGrads(formula, inputs, w));
        tf.dispose([t.cos, t.sin, t.rot, qCos, qSin, qkv, sink, w, bias]);
      });
    }
  }

  it('attention with large scores and sink logits stays finite and exact (max subtraction includes the sink)', () => {
    const [B, T, H, hd] = [1, 9, 2, 8];
    const t = rotaryTables(T, hd, 0, 10000);
    const qkv = normal([B * T, H * 3 * hd], 31, 30);
    const sink = tf.tensor1d([90, -90]);
    const y = causalAttention({ qkv: qkv as tf.Tensor2D, qCos: t.cos, qSin: t.sin, kCos: t.cos, kSin: t.sin, sink, batch: B, heads: H, rotaryDims: 0, mode: 'logit' });
    const g = tf.grads((q: tf.Tensor, s: tf.Tensor) =>
      tf.sum(causalAttention({ qkv: q as tf.Tensor2D, qCos: t.cos, qSin: t.sin, kCos: t.cos, kSin: t.sin, sink: s as tf.Tensor1D, batch: B, heads: H, rotaryDims: 0, mode: 'logit' })),
    )([qkv, sink]);
    for (const a of [y, ...g]) expect(Array.from(a.dataSync()).every(Number.isFinite)).toBe(true);
    tf.dispose([y, ...g, qkv, sink, t.cos, t.sin, t.rot]);
  });
});
