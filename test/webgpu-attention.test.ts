/**
 * The causal attention's WGSL kernels (model/kernels/webgpu-attention.ts) against its
 * formulas (model/kernels/formula.ts, on tfjs's cpu backend): the value of causalAttention
 * and the gradients of sum(causalAttention(...) * w) with respect to qkv and the sink
 * logits, in all four sink modes, on odd shapes (T not a multiple of the tile, one head,
 * T = 1, no rotary), and with large logits. Both sides start from the same host arrays
 * (webgpu tensors cannot be read synchronously, nor moved to the cpu backend). Runs on any
 * WebGPU adapter, SwiftShader's included; skipped without one, except under CI.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, describe, expect, it } from 'vitest';
import { checkDevice } from '../core/backend.js';
import type { SinkMode } from '../core/config.js';
import { causalAttention, SINK_MODE_CODE } from '../model/fused.js';
import { kernelSource } from '../model/kernels/index.js';
import { rotaryTables } from '../model/ops.js';
import { relErr, webgpuBackend } from './helpers.js';

const info = await webgpuBackend('test/webgpu-attention.test.ts');

/** Seeded standard normals (mulberry32 + Box-Muller), times `scale`. */
function normals(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()) * scale;
  return out;
}

interface Case {
  B: number;
  T: number;
  H: number;
  hd: number;
  rd: number;
  mode: SinkMode;
  qkv: Float32Array;
  sink: Float32Array;
  w: Float32Array;
  qScale: number;
}

/** [value, dqkv, dsink] of causalAttention on `backend`, from the case's host arrays. */
async function attention(backend: string, c: Case): Promise<Float32Array[]> {
  expect(await tf.setBackend(backend)).toBe(true);
  const maxPos = c.T + 3;
  const host = rotaryTables(maxPos, c.hd, c.rd, 10000);
  tf.dispose([host.cos, host.sin, host.rot]);
  const qc = host.host.cos.map((x) => x * c.qScale);
  const qs = host.host.sin.map((x) => x * c.qScale);
  const outs = tf.tidy(() => {
    const [qCos, qSin, kCos, kSin] = [qc, qs, host.host.cos, host.host.sin].map((a) => tf.tensor2d(a, [maxPos, c.hd]));
    const qkv = tf.tensor2d(c.qkv, [c.B * c.T, c.H * 3 * c.hd]);
    const sink = tf.tensor1d(c.sink);
    const w = tf.tensor2d(c.w, [c.B * c.T, c.H * c.hd]);
    const f = (q: tf.Tensor, s: tf.Tensor) =>
      causalAttention({ qkv: q as tf.Tensor2D, qCos: qCos!, qSin: qSin!, kCos: kCos!, kSin: kSin!, sink: s as tf.Tensor1D, batch: c.B, heads: c.H, rotaryDims: c.rd, mode: c.mode });
    const y = f(qkv, sink);
    const [dq, ds] = tf.grads((q: tf.Tensor, s: tf.Tensor) => tf.sum(tf.mul(f(q, s), w)))([qkv, sink]);
    return [y, dq!, ds!];
  });
  const data = (await Promise.all(outs.map((t) => t.data()))) as Float32Array[];
  tf.dispose(outs);
  if (backend === 'webgpu') checkDevice('the attention test');
  return data;
}

const MODES: SinkMode[] = ['none', 'token', 'softmax1', 'logit'];
// [B, T, H, head_dim, rotary dims]
const SHAPES = [
  [2, 37, 3, 8, 4],
  [1, 19, 1, 64, 16],
  [1, 1, 2, 8, 0],
  [1, 70, 2, 24, 8],
] as const;
const OUTPUTS = ['ctx', 'dqkv', 'dsink'];
const TOL = 1e-4;
const measured: string[] = [];

async function check(name: string, c: Case): Promise<void> {
  const got = await attention('webgpu', c);
  const want = await attention('cpu', c);
  await tf.setBackend('webgpu');
  const errs = got.map((g, k) => {
    expect(g.length, OUTPUTS[k]).toBe(want[k]!.length);
    expect(Array.from(g).every(Number.isFinite), `${OUTPUTS[k]} finite`).toBe(true);
    if (k < 2) expect(Math.max(...Array.from(want[k]!, Math.abs)), `${OUTPUTS[k]} not all zeros`).toBeGreaterThan(0);
    return relErr(g, want[k]!);
  });
  measured.push(`${name}: ${errs.map((e, k) => `${OUTPUTS[k]} ${e.toExponential(2)}`).join(', ')}`);
  errs.forEach((e, k) => expect(e, `${OUTPUTS[k]} relative error`).toBeLessThan(TOL));
  // Only logit mode has a sink gradient; the others must write zeros.
  if (c.mode !== 'logit') expect(Array.from(got[2]!).every((x) => x === 0)).toBe(true);
}

describe.skipIf(!info)('webgpu: the causal attention WGSL kernels equal their formulas (values and gradients, 1e-4 relative)', () => {
  afterAll(() => {
    if (measured.length) console.log(`max relative errors (webgpu vs cpu formula):\n  ${measured.join('\n  ')}`);
  });

  it('runs on a real WebGPU adapter, with the WGSL attention kernels', () => {
    expect(info!.webgpu.adapter).toBeDefined();
    expect(tf.getBackend()).toBe('webgpu');
    expect(kernelSource('SinklmAttention')).toBe('wgsl');
    expect(kernelSource('SinklmAttentionGrad')).toBe('wgsl');
  });

  for (const mode of MODES) {
    for (const [B, T, H, hd, rd] of SHAPES) {
      const name = `${mode} (code ${SINK_MODE_CODE[mode]}), B=${B} T=${T} H=${H} head_dim=${hd} rotary=${rd}`;
      it(name, async () => {
        await check(name, {
          B,
          T,
          H,
          hd,
          rd,
          mode,
          qkv: normals(B * T * H * 3 * hd, 20 + T + hd, 2),
          sink: mode === 'logit' ? Float32Array.from({ length: H }, (_, h) => [0.7, -1.3, 2.1][h % 3]!) : Float32Array.from([0]),
          w: normals(B * T * H * hd, 21 + T),
          qScale: 1 / Math.sqrt(hd),
        });
      });
    }
  }

  it('large logits and sink logits (+-90) stay finite and match (the max includes the sink)', async () => {
    const [B, T, H, hd] = [1, 9, 2, 8];
    await check('large logits, logit, B=1 T=9 H=2 head_dim=8 rotary=0', {
      B,
      T,
      H,
      hd,
      rd: 0,
      mode: 'logit',
      qkv: normals(B * T * H * 3 * hd, 31, 30),
      sink: Float32Array.from([90, -90]),
      w: Float32Array.from({ length: B * T * H * hd }, () => 1),
      qScale: 1,
    });
  });
});
