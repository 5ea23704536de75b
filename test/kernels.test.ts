/**
 * sinklm's fused operations (model/fused.ts) against the formulas they stand for, on every
 * backend the suite can reach: the test backend (native TensorFlow runs sinklm's own ops,
 * native/*.cc, unless SINKLM_NO_KERNELS=1 hides them) and tfjs's cpu backend (the formula
 * kernels, model/kernels/formula.ts, whose hand-written backward is checked here against
 * tfjs's chain rule). Values and gradients to 1e-5 relative, on odd shapes (T not a multiple
 * of any tile, one head, head_dim 8, 24 and 64) and in all four sink modes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SinkMode } from '../core/config.js';
import { causalAttention, geluExact, layerNormAffine, layerNormPair, linear, linearGelu, matMul2d, tokenNll } from '../model/fused.js';
import { retainFreedMemory } from '../core/backend.js';
import { kernelSource } from '../model/kernels/index.js';
import { matMulTakesOwn, NATIVE } from '../model/kernels/native.js';
import { applyRotary, attentionWeights, NEG_INF, rotaryTables } from '../model/ops.js';
import type { ParamSpec } from '../model/params.js';
import { AdamW } from '../train/optimizer.js';
import { numTensors, relErr, testBackend } from './helpers.js';

const info = await testBackend();

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

/**
 * A [M, K] x [K, N] product through `product` (given op(A), op(B) and the transpose flags),
 * for each operand as given or transposed, against float64: max error over the largest
 * |entry| (at least 1) below 1e-5.
 */
function checkProduct(M: number, K: number, N: number, seed: number, product: (a: tf.Tensor2D, b: tf.Tensor2D, ta: boolean, tb: boolean) => tf.Tensor): void {
  const a = normal([M, K], seed + M) as tf.Tensor2D;
  const b = normal([K, N], seed + 1 + N) as tf.Tensor2D;
  const av = a.dataSync();
  const bv = b.dataSync();
  const want = new Float64Array(M * N);
  for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) for (let j = 0; j < N; j++) want[i * N + j]! += av[i * K + k]! * bv[k * N + j]!;
  const scale = Math.max(1, ...Array.from(want, Math.abs));
  for (const [ta, tb] of [
    [false, false],
    [false, true],
    [true, false],
    [true, true],
  ] as const) {
    const got = tf.tidy(() => product((ta ? tf.transpose(a) : a) as tf.Tensor2D, (tb ? tf.transpose(b) : b) as tf.Tensor2D, ta, tb).dataSync());
    expect(got.length).toBe(M * N);
    expect(Math.max(0, ...Array.from(got, (g, i) => Math.abs(g - want[i]!))) / scale, `[${M}, ${K}, ${N}] transpose_a=${ta} transpose_b=${tb}`).toBeLessThan(1e-5);
  }
  tf.dispose([a, b]);
}

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

  it('its ops become the kernels of the tensorflow backend, and the formulas those of every other', () => {
    const want = info.kernels.in_use ? 'sinklm' : 'formula';
    for (const op of ['SinklmLayerNorm', 'SinklmLayerNorm2', 'SinklmBiasGelu', 'SinklmAttention']) expect(kernelSource(op), op).toBe(want);
    expect(kernelSource('SinklmXent')).toBe(info.kernels.in_use ? 'sinklm' : info.backend === 'tensorflow' ? 'tensorflow' : 'formula');
    if (info.backend === 'tensorflow') expect(kernelSource('SinklmMatMul')).toBe(info.kernels.in_use ? 'sinklm' : 'tensorflow');
  });

  it('SinklmMatMul: sinklm takes x W^T up to 32 rows, TensorFlow every other product; the op itself is right on every shape', () => {
    expect([[1, false, true], [32, false, true], [33, false, true], [1, false, false], [1, true, true], [4096, false, true]].map(([m, a, b]) => matMulTakesOwn(m as number, a as boolean, b as boolean))).toEqual([
      true, true, false, false, false, false,
    ]);
    if (!info.kernels.in_use) return;
    // The op's general path (the micro-kernel, B copied to [K][N] when transposed), called
    // directly: the kernel no longer routes these shapes to it.
    const be = tf.backend() as unknown as { binding: never; executeMultipleOutputs(op: string, attrs: unknown[], ins: tf.Tensor[], n: number): tf.Tensor[] };
    for (const [M, K, N] of [[37, 24, 11], [50, 600, 300], [5, 131, 70], [64, 128, 200]] as const) {
      checkProduct(M, K, N, 60, (a, b, ta, tb) => {
        const [y] = be.executeMultipleOutputs('SinklmMatMul', NATIVE.SinklmMatMul!.own!.attrs(be.binding, { transposeA: ta, transposeB: tb }), [a, b], 1);
        return y!;
      });
    }
  });

  it('lets a training process keep freed memory for reuse (glibc), where it loaded', () => {
    const glibc = process.platform === 'linux' && !!(process.report?.getReport() as { header?: { glibcVersionRuntime?: string } })?.header?.glibcVersionRuntime;
    expect(retainFreedMemory()).toBe(info.kernels.in_use && glibc);
  });
});

const BACKENDS = [...new Set([info.backend, 'cpu'])];

describe.each(BACKENDS)('on the %s backend, each fused operation equals its formula (values and gradients, 1e-5 relative)', (backend) => {
  beforeAll(async () => {
    await tf.setBackend(backend);
  });
  afterAll(async () => {
    await tf.setBackend(info.backend);
  });

  it('runs the kernels this backend should have', () => {
    const want = backend === 'tensorflow' && info.kernels.in_use ? 'sinklm' : 'formula';
    expect(kernelSource('SinklmAttention')).toBe(want);
    expect(kernelSource('SinklmXent')).toBe(backend === 'tensorflow' && !info.kernels.in_use ? 'tensorflow' : want);
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
    [1, 70, 2, 24, 8],
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
  // [M, K, N]: remainders of every tile (6 rows, 16 columns, 24 x 128 blocks, K slices of 256);
  // and x W^T with up to 32 rows, which runs as dot products over W's rows (4 rows at a
  // time, 64 columns per thread's unit, 8-float lanes over k and a tail).
  for (const [M, K, N] of [
    [37, 24, 11],
    [1, 1, 1],
    [50, 600, 300],
    [7, 0, 5],
    [5, 131, 70],
    [32, 64, 129],
    [33, 17, 9],
    [1, 128, 4096],
  ] as const) {
    it(`matrix product of [${M}, ${K}] and [${K}, ${N}], each operand as given or transposed, against float64`, () => {
      checkProduct(M, K, N, 40, (a, b, ta, tb) => matMul2d(a, b, ta, tb));
    });
  }

  it('linear: x W^T + b, gradients for x, W and b; and x W^T without a bias', () => {
    const x = normal([37, 24], 5, 3) as tf.Tensor2D;
    const W = normal([11, 24], 8) as tf.Tensor2D;
    const b = normal([11], 9) as tf.Tensor1D;
    const w = normal([37, 11], 10);
    expectClose(
      valueAndGrads((xi, Wi, bi) => linear(xi as tf.Tensor2D, Wi as tf.Tensor2D, bi as tf.Tensor1D), [x, W, b], w),
      valueAndGrads((xi, Wi, bi) => tf.add(tf.matMul(xi!, Wi!, false, true), bi!), [x, W, b], w),
    );
    expectClose(
      valueAndGrads((xi, Wi) => linear(xi as tf.Tensor2D, Wi as tf.Tensor2D), [x, W], w),
      valueAndGrads((xi, Wi) => tf.matMul(xi!, Wi!, false, true), [x, W], w),
    );
  });

  it('exact GELU on any rank', () => {
    const x = normal([3, 5, 7], 12, 3);
    const w = normal([3, 5, 7], 13);
    expectClose(
      valueAndGrads((t) => geluExact(t!), [x], w),
      valueAndGrads((t) => tf.mul(tf.mul(t!, 0.5), tf.add(tf.erf(tf.mul(t!, Math.SQRT1_2)), 1)), [x], w),
    );
  });

  it('token NLL equals a float64 formula on the host, value and gradient', () => {
    // Independent of tfjs: lse(x) - x[t], gradient (softmax(x) - onehot(t)) * w, in float64.
    const [N, V] = [37, 24];
    const x = normal([N, V], 5, 3);
    const targetIds = Array.from({ length: N }, (_, i) => (i * 7) % V);
    const targets = tf.tensor1d(targetIds, 'int32');
    const rowW = normal([N], 7);
    const [y, g] = valueAndGrads((t) => tokenNll(t as tf.Tensor2D, targets), [x], rowW);
    const xs = x.dataSync();
    const ws = rowW.dataSync();
    let dy = 0;
    let dg = 0;
    for (let r = 0; r < N; r++) {
      const row = Array.from(xs.subarray(r * V, (r + 1) * V), Number);
      const m = Math.max(...row);
      const sum = row.reduce((a, v) => a + Math.exp(v - m), 0);
      dy = Math.max(dy, Math.abs(y![r]! - (m + Math.log(sum) - row[targetIds[r]!]!)));
      row.forEach((v, j) => (dg = Math.max(dg, Math.abs(g![r * V + j]! - (Math.exp(v - m) / sum - (j === targetIds[r] ? 1 : 0)) * ws[r]!))));
    }
    expect(dy).toBeLessThan(1e-5);
    expect(dg).toBeLessThan(1e-6);
    tf.dispose([x, targets, rowW]);
  });

  it("AdamW (one flat update) equals PyTorch's AdamW computed in float64: clipping, bias correction, decay on matrices only", () => {
    const specs: ParamSpec[] = [
      { name: 'w', shape: [7, 5], kind: 'weight' },
      { name: 'b', shape: [5], kind: 'bias' },
    ];
    const init = specs.map((sp, i) => Array.from(normal(sp.shape, 50 + i).dataSync(), Number));
    const params = new Map(specs.map((sp, i) => [sp.name, tf.variable(tf.tensor(init[i]!, sp.shape))]));
    const o = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.5, gradClip: 1 };
    const opt = new AdamW({ params, specs, weightsChanged: () => {} }, o);
    const p64 = init.map((a) => Float64Array.from(a));
    const m64 = init.map((a) => new Float64Array(a.length));
    const v64 = init.map((a) => new Float64Array(a.length));
    for (let t = 1; t <= 3; t++) {
      const lr = 0.01 * t;
      const g = specs.map((sp, i) => Array.from(normal(sp.shape, 60 + 10 * t + i, t === 2 ? 5 : 0.1).dataSync(), Number));
      tf.tidy(() => opt.apply(new Map(specs.map((sp, i) => [sp.name, tf.tensor(g[i]!, sp.shape)])), lr));
      // torch.nn.utils.clip_grad_norm_(max_norm=1) then torch.optim.AdamW, in float64.
      const norm = Math.sqrt(g.flat().reduce((a, x) => a + x * x, 0));
      const scale = Math.min(1, o.gradClip / (norm + 1e-6));
      const [bc1, bc2] = [1 - o.beta1 ** t, 1 - o.beta2 ** t];
      specs.forEach((sp, i) => {
        const decay = sp.kind === 'weight' ? o.weightDecay : 0;
        for (let j = 0; j < p64[i]!.length; j++) {
          const gj = g[i]![j]! * scale;
          p64[i]![j]! *= 1 - lr * decay;
          m64[i]![j] = o.beta1 * m64[i]![j]! + (1 - o.beta1) * gj;
          v64[i]![j] = o.beta2 * v64[i]![j]! + (1 - o.beta2) * gj * gj;
          p64[i]![j]! -= ((lr / bc1) * m64[i]![j]!) / (Math.sqrt(v64[i]![j]! / bc2) + o.eps);
        }
      });
    }
    specs.forEach((sp, i) => expect(relErr(params.get(sp.name)!.dataSync(), p64[i]!), sp.name).toBeLessThan(1e-5));
    opt.dispose();
    params.forEach((v) => v.dispose());
  });

  it('leave no tensors behind, forward or backward', () => {
    const [B, T, H, hd] = [2, 7, 2, 8];
    const t = rotaryTables(T, hd, 4, 10000);
    const x = normal([B * T, H * 3 * hd], 3);
    const targets = tf.tensor1d(Array.from({ length: B * T }, (_, i) => i % 16), 'int32');
    const g = tf.ones([H * 3 * hd]) as tf.Tensor1D;
    const b = tf.zeros([H * 3 * hd]) as tf.Tensor1D;
    const W = normal([16, H * hd], 4) as tf.Tensor2D;
    const f = (xi: tf.Tensor) => {
      const [a] = layerNormPair(xi as tf.Tensor2D, g, b, g, b, 1e-5);
      const ctx = causalAttention({ qkv: geluExact(a) as tf.Tensor2D, qCos: t.cos, qSin: t.sin, kCos: t.cos, kSin: t.sin, sink: tf.tensor1d([0.5, -0.5]), batch: B, heads: H, rotaryDims: 4, mode: 'logit' });
      return tf.sum(tokenNll(linear(ctx, W), targets));
    };
    const before = numTensors();
    for (let i = 0; i < 3; i++) {
      tf.tidy(() => tf.grad(f)(x)).dispose();
      tf.tidy(() => f(x)).dispose();
    }
    expect(numTensors()).toBe(before);
    tf.dispose([t.cos, t.sin, t.rot, x, targets, g, b, W]);
  });
});
