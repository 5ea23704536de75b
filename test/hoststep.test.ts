import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { DenseCache } from '../infer/cache/dense.js';
import { SinkCache } from '../infer/cache/sinks.js';
import { decodePath } from '../infer/policy.js';
import { headDim } from '../model/config.js';
import { HostMemory, hostMemory, hostThreads } from '../model/hostmem.js';
import { HostStep, hostStepOf } from '../model/hoststep.js';
import type { GPTNeoX } from '../model/neox.js';
import * as tf from '@tensorflow/tfjs-core';
import { maxAbsDiff, numTensors, testBackend, tinyModel } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

beforeAll(async () => {
  await testBackend();
});

const stream = Array.from({ length: 30 }, (_, i) => (i * 11 + 5) % 50);

function shapeOf(model: GPTNeoX) {
  const c = model.config;
  return { layers: c.num_hidden_layers, heads: c.num_attention_heads, headDim: headDim(c) };
}

/** Logits of every step through GPTNeoX.step (TensorFlow kernels) and through HostStep. */
function both(model: GPTNeoX, make: () => SinkCache | DenseCache, feeds: number[][]): [Float32Array, Float32Array][] {
  const tensorCache = make();
  const hostCache = make();
  const host = new HostStep(model);
  const out = feeds.map((ids): [Float32Array, Float32Array] => {
    const l = model.step(ids, tensorCache);
    const t = l.dataSync() as Float32Array;
    l.dispose();
    return [t, host.step(ids, hostCache)];
  });
  tensorCache.dispose();
  hostCache.dispose();
  return out;
}

describe('HostStep equals GPTNeoX.step', () => {
  for (const mode of ['none', 'token', 'softmax1', 'logit'] as const) {
    // 2e-5 over 40 steps: the two scale the query at different points (before rotary here,
    // in the rotary tables there), a float32 reordering.
    it(`${mode}: sinks cache through eviction, one token at a time, to 2e-5`, () => {
      const model = tinyModel({ sink_mode: mode, sink_token_id: mode === 'token' ? 1 : null, num_hidden_layers: 3, num_attention_heads: 4, hidden_size: 32, intermediate_size: 48 });
      for (const [S, W] of [[2, 6], [0, 5], [4, 30]]) {
        const pairs = both(model, () => new SinkCache(S!, W!, shapeOf(model)), stream.map((t) => [t]));
        for (const [t, h] of pairs) expect(maxAbsDiff(t, h)).toBeLessThan(2e-5);
      }
      model.dispose();
    });
  }

  it('dense cache with a prefill chunk, then token by token (its buffers grow past 64 keys)', () => {
    const model = tinyModel({ sink_mode: 'logit', hidden_act: 'gelu_new', max_position_embeddings: 128 });
    const long = Array.from({ length: 100 }, (_, i) => (i * 13 + 1) % 50);
    const feeds = [long.slice(0, 10), ...long.slice(10).map((t) => [t])];
    const pairs = both(model, () => new DenseCache(shapeOf(model)), feeds);
    for (const [t, h] of pairs) expect(maxAbsDiff(t, h)).toBeLessThan(1e-5);
    model.dispose();
  });

  it('a sinks cache prefilled in one chunk, then evicting', () => {
    const model = tinyModel({ sink_mode: 'softmax1' });
    const feeds = [stream.slice(0, 8), ...stream.slice(8).map((t) => [t])];
    const pairs = both(model, () => new SinkCache(2, 8, shapeOf(model)), feeds);
    for (const [t, h] of pairs) expect(maxAbsDiff(t, h)).toBeLessThan(1e-5);
    model.dispose();
  });

  it('several streams of one capacity stepped as a batch', () => {
    const model = tinyModel({ sink_mode: 'none' });
    const specs = [{ sinks: 0, window: 8 }, { sinks: 1, window: 7 }, { sinks: 4, window: 4 }];
    const pairs = both(model, () => new SinkCache(specs, 0, shapeOf(model)), stream.map((t) => specs.map(() => t)));
    for (const [t, h] of pairs) expect(maxAbsDiff(t, h)).toBeLessThan(1e-5);
    model.dispose();
  });

  it('a model given new weights gets a new host copy of them', async () => {
    const model = tinyModel();
    const other = tinyModel({}, 99);
    const first = hostStepOf(model);
    model.assign(await other.weights());
    const second = hostStepOf(model);
    expect(second).not.toBe(first);
    const tensorCache = new SinkCache(2, 6, shapeOf(model));
    const hostCache = new SinkCache(2, 6, shapeOf(model));
    for (const t of stream.slice(0, 5)) {
      const l = model.step([t], tensorCache);
      expect(maxAbsDiff(l.dataSync() as Float32Array, second.step([t], hostCache))).toBeLessThan(1e-5);
      l.dispose();
    }
    tensorCache.dispose();
    hostCache.dispose();
    model.dispose();
    other.dispose();
  });
});

describe('the host step on two threads', () => {
  it('gives the same bits as on one, matrices and attention split (every mode, sinks and dense caches)', () => {
    const mem = hostMemory();
    try {
      for (const mode of ['none', 'token', 'softmax1', 'logit'] as const) {
        // Matrices of 384 x 128 and more, and caches of 4+516 keys: both past the split sizes.
        const model = tinyModel({ sink_mode: mode, sink_token_id: mode === 'token' ? 1 : null, num_hidden_layers: 2, num_attention_heads: 4, hidden_size: 128, intermediate_size: 512, vocab_size: 200, max_position_embeddings: 640 });
        const ids = Array.from({ length: 600 }, (_, i) => (i * 37 + 11) % 200);
        const run = (threads: 1 | 2, make: () => SinkCache | DenseCache) => {
          mem.setThreads(threads);
          expect(mem.threads).toBe(threads);
          const host = new HostStep(model);
          const cache = make();
          const out = [host.step(ids.slice(0, 16), cache), ...ids.slice(16).map((t) => host.step([t], cache))];
          cache.dispose();
          host.dispose();
          return out;
        };
        for (const make of [() => new SinkCache(4, 516, shapeOf(model)), () => new DenseCache(shapeOf(model))]) {
          const one = run(1, make);
          const two = run(2, make);
          for (let i = 0; i < one.length; i++) expect(Array.from(two[i]!), `${mode} step ${i}`).toEqual(Array.from(one[i]!));
        }
        model.dispose();
      }
    } finally {
      mem.closeHelper();
    }
  });

  it('SINKLM_HOST_THREADS: 1 or 2, anything else one line naming it', () => {
    const saved = process.env.SINKLM_HOST_THREADS;
    try {
      process.env.SINKLM_HOST_THREADS = '3';
      expect(() => hostThreads()).toThrow(/SINKLM_HOST_THREADS|must be 1 or 2/);
      process.env.SINKLM_HOST_THREADS = '1';
      expect(hostThreads()).toBe(1);
    } finally {
      if (saved === undefined) delete process.env.SINKLM_HOST_THREADS;
      else process.env.SINKLM_HOST_THREADS = saved;
    }
  });
});

/**
 * Streams far past the model's positions. With one layer a cached key or value depends on
 * its token alone, so the logits of a sinks cache at any time are exactly those of a fresh
 * full forward over [the first S tokens] + [the last W] at positions 0..S+W-1: an
 * independent check that keys stored rotated at their times (in the millions, say) are
 * scored as the StreamingLLM rule says.
 */
describe('HostStep on streams 100x longer than the position table', () => {
  function check(mode: 'none' | 'token' | 'softmax1' | 'logit', total: number, at: number[]) {
    const S = 2;
    const W = 30;
    const model = tinyModel({ sink_mode: mode, sink_token_id: mode === 'token' ? 1 : null, num_hidden_layers: 1, rotary_pct: 1, max_position_embeddings: S + W });
    const host = new HostStep(model);
    const cache = new SinkCache(S, W, shapeOf(model));
    const id = (t: number) => (t * 7919 + (t >> 5)) % 50;
    const want = new Set(at);
    let worst = 0;
    for (let t = 0; t < total; t++) {
      const got = host.step([id(t)], cache);
      if (!want.has(t)) continue;
      const kept = t < S + W ? Array.from({ length: t + 1 }, (_, i) => i) : [...Array.from({ length: S }, (_, i) => i), ...Array.from({ length: W }, (_, i) => t - W + 1 + i)];
      const ref = tf.tidy(() => {
        const logits = model.forward(tf.tensor2d([kept.map(id)], [1, kept.length], 'int32'));
        return tf.slice(logits, [kept.length - 1, 0], [1, -1]).dataSync() as Float32Array;
      });
      worst = Math.max(worst, maxAbsDiff(got, ref));
      expect(maxAbsDiff(got, ref), `${mode} at token ${t}`).toBeLessThan(1e-5);
    }
    cache.dispose();
    host.dispose();
    model.dispose();
    return worst;
  }

  for (const mode of ['none', 'token', 'softmax1', 'logit'] as const) {
    it(`${mode}: a 2+30 cache over 3,300 tokens (position table of 32) equals fresh forwards to 1e-5`, () => {
      check(mode, 3300, [5, 31, 32, 33, 100, 1000, 3299]);
    });
  }

  it('logit: 300,000 tokens, still exact to 1e-5 (times past 2^16 and float32 angle precision)', () => {
    check('logit', 300_000, [31, 70_000, 299_999]);
  }, 120_000);
});

describe('host helpers', () => {
  it('SINKLM_DECODE picks the path and rejects anything else', () => {
    const saved = process.env.SINKLM_DECODE;
    try {
      process.env.SINKLM_DECODE = 'tensor';
      expect(decodePath()).toBe('tensor');
      process.env.SINKLM_DECODE = 'host';
      expect(decodePath()).toBe('host');
      process.env.SINKLM_DECODE = 'gpu';
      expect(() => decodePath()).toThrow(/must be one of host, tensor/);
    } finally {
      if (saved === undefined) delete process.env.SINKLM_DECODE;
      else process.env.SINKLM_DECODE = saved;
    }
  });
});

describe('host memory and kernels', () => {
  it('the committed kernels are model/kernels.wat assembled (npm run build:kernels)', async () => {
    // @ts-expect-error: a plain .mjs script without types
    const { assembleKernels, kernelsModuleText } = await import('../scripts/build-kernels.mjs');
    const text = fs.readFileSync(path.join(ROOT, 'model', 'kernels.wasm.ts'), 'utf8');
    expect(text).toBe(kernelsModuleText(await assembleKernels()));
  });

  it('matvec and wsum agree with plain loops: four-row blocks, 32-float chunks, tails (lengths not a multiple of 4) included', () => {
    const mem = new HostMemory();
    let seed = 1;
    const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
    for (const [n, m, stride] of [[16, 5, 16], [13, 7, 13], [3, 4, 9], [6, 3, 8], [32, 11, 32], [72, 9, 80], [36, 6, 40]] as const) {
      const xs = Float32Array.from({ length: n }, rnd);
      const ws = Float32Array.from({ length: m * stride }, rnd);
      const bs = Float32Array.from({ length: m }, rnd);
      const [x, w, b, y] = [mem.alloc(n), mem.alloc(m * stride), mem.alloc(m), mem.alloc(m)];
      mem.f32(x, n).set(xs);
      mem.f32(w, m * stride).set(ws);
      mem.f32(b, m).set(bs);
      mem.matvec(x, w, stride, b, y, n, m);
      const got = mem.f32(y, m);
      for (let o = 0; o < m; o++) {
        let s = bs[o]!;
        for (let i = 0; i < n; i++) s += xs[i]! * ws[o * stride + i]!;
        expect(got[o]).toBeCloseTo(s, 5);
      }
      const first = got[0]!;
      mem.matvec(x, w, stride, 0, y, n, m);
      expect(mem.f32(y, m)[0]).toBeCloseTo(first - bs[0]!, 5);
      // wsum: out = sum_j p[j] * w[j * stride .. + n), with a zero weight skipped.
      const ps = Float32Array.from({ length: m }, (_, j) => (j === 1 ? 0 : rnd()));
      const [p, out] = [mem.alloc(m), mem.alloc(n)];
      mem.f32(p, m).set(ps);
      mem.f32(out, n).fill(99);
      mem.wsum(p, w, stride, out, n, m);
      const o2 = mem.f32(out, n);
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let j = 0; j < m; j++) s += ps[j]! * ws[j * stride + i]!;
        expect(o2[i]).toBeCloseTo(s, 5);
      }
    }
  });

  it('softmax (mask, implicit sink, tails) agrees with float64 to 1e-6; masked keys get exactly 0', () => {
    const mem = new HostMemory();
    let seed = 3;
    const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
    for (const m of [1, 3, 4, 7, 64, 4097]) {
      for (const extra of [-Infinity, 0, 1.7]) {
        const ss = Float32Array.from({ length: m }, () => rnd() * 12);
        const bs = Float32Array.from({ length: m }, (_, j) => (j % 5 === 4 ? -1e9 : 0));
        const [sp, bp] = [mem.alloc(m), mem.alloc(m)];
        mem.f32(sp, m).set(ss);
        mem.f32(bp, m).set(bs);
        mem.softmax(sp, bp, m, extra);
        const x = Array.from(ss, (v, j) => v + bs[j]!);
        const mx = Math.max(extra, ...x);
        const den = Math.exp(extra - mx) + x.reduce((a, v) => a + Math.exp(v - mx), 0);
        const got = mem.f32(sp, m);
        for (let j = 0; j < m; j++) {
          const ref = Math.exp(x[j]! - mx) / den;
          expect(Math.abs(got[j]! - ref), `m ${m} extra ${extra} j ${j}`).toBeLessThan(1e-6 * Math.max(ref, 1e-3));
          if (bs[j] !== 0) expect(got[j]).toBe(0);
        }
        mem.release(sp);
        mem.release(bp);
      }
    }
  });

  it('gelu (exact and tanh) agrees with float64 to 2e-6 relative (plus the float32 rounding of the exponent in the negative tail) over [-12, 12] and beyond; a lone float gets the bits it gets in a vector', () => {
    // Reference Phi(x) from erfc(z) = 2/sqrt(pi) * integral of exp(-t^2) over [z, z + 12]
    // by composite Simpson (float64, 20,000 panels): independent of any erf fit.
    const erfc = (z: number) => {
      const n = 20_000;
      const h = 12 / n;
      let acc = Math.exp(-z * z) + Math.exp(-(z + 12) * (z + 12));
      for (let k = 1; k < n; k++) acc += (k % 2 ? 4 : 2) * Math.exp(-((z + k * h) ** 2));
      return ((acc * h) / 3) * (2 / Math.sqrt(Math.PI));
    };
    const exact = (x: number) => (x >= 0 ? x * (1 - 0.5 * erfc(x / Math.SQRT2)) : x * 0.5 * erfc(-x / Math.SQRT2));
    // x/2 (1 + tanh v) in float64, written as x / (1 + exp(-2v)) only where 1 + tanh v cancels.
    const tanhRef = (x: number) => {
      const v = Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3);
      return v > -3 ? 0.5 * x * (1 + Math.tanh(v)) : x / (1 + Math.exp(-2 * v));
    };
    const xs = Float32Array.from([...Array.from({ length: 1203 }, (_, k) => -12 + (24 * k) / 1202), 0, 1e-4, -1e-4, 40, -40, 200, -200]);
    const mem = new HostMemory();
    for (const [tanh, ref] of [[false, exact], [true, tanhRef]] as const) {
      const p = mem.alloc(xs.length);
      mem.f32(p, xs.length).set(xs);
      mem.gelu(p, xs.length, tanh);
      const got = Float32Array.from(mem.f32(p, xs.length));
      for (let k = 0; k < xs.length; k++) {
        const x = xs[k]!;
        const r = ref(x);
        // Below ~1e-30 the reference underflows float32; the kernel gives 0 or a subnormal.
        if (Math.abs(r) < 1e-30) expect(Math.abs(got[k]!), `tanh ${tanh} x ${x}`).toBeLessThan(1e-30);
        // Relative 2e-6, plus, in the negative tail, the float32 rounding of the exponent e
        // (x^2/2 or 2v): |x|/sqrt 2, its square and the sum each round by 2^-24 relative,
        // ~3 * 6e-8 * e of relative error in exp(-e), so 2.5e-7 * e.
        else {
          const e = tanh ? Math.abs(2 * Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)) : (x * x) / 2;
          expect(Math.abs(got[k]! - r), `tanh ${tanh} x ${x}`).toBeLessThanOrEqual((2e-6 + 2.5e-7 * e) * Math.abs(r));
        }
      }
      // The tail path (one float at a time) against the vector path, bit for bit.
      for (const k of [0, 1, 2, 3, 601, 1202]) {
        const q = mem.alloc(1);
        mem.f32(q, 1)[0] = xs[k]!;
        mem.gelu(q, 1, tanh);
        expect(mem.f32(q, 1)[0]).toBe(got[k]);
        mem.release(q);
      }
      mem.release(p);
    }
  });

  it('matrows (several inputs, each weight row read once) equals matvec row by row, bit for bit', () => {
    const mem = new HostMemory();
    let seed = 7;
    const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
    for (const [n, m, rows] of [[16, 5, 3], [13, 7, 4], [3, 4, 2], [768, 9, 5]] as const) {
      const [x, w, b, y, y1] = [mem.alloc(rows * n), mem.alloc(m * n), mem.alloc(m), mem.alloc(rows * m), mem.alloc(m)];
      mem.f32(x, rows * n).set(Float32Array.from({ length: rows * n }, rnd));
      mem.f32(w, m * n).set(Float32Array.from({ length: m * n }, rnd));
      mem.f32(b, m).set(Float32Array.from({ length: m }, rnd));
      for (const bias of [b, 0]) {
        mem.matrows(x, rows, w, bias, y, n, m);
        for (let r = 0; r < rows; r++) {
          mem.matvec(x + r * n * 4, w, n, bias, y1, n, m);
          expect(Array.from(mem.f32(y + r * m * 4, m)), `n ${n} m ${m} row ${r}`).toEqual(Array.from(mem.f32(y1, m)));
        }
      }
    }
  });

  it('blocks are zeroed, reused after release, and memory returns to where it was', () => {
    const mem = new HostMemory();
    const a = mem.alloc(10);
    mem.f32(a, 10).fill(3);
    const b = mem.alloc(100);
    mem.release(a);
    const c = mem.alloc(4);
    expect(c).toBe(a);
    expect(Array.from(mem.f32(c, 4))).toEqual([0, 0, 0, 0]);
    mem.release(b);
    mem.release(c);
    expect(mem.used).toBe(0);
    expect(() => mem.release(b)).toThrow();
    // Growing past the initial pages keeps earlier contents.
    const d = mem.alloc(8);
    mem.f32(d, 8).fill(5);
    const big = mem.alloc(4 << 20);
    expect(mem.f32(d, 8)[7]).toBe(5);
    mem.release(big);
    mem.release(d);
    // Past what wasm32 can address: one clear line, and the memory stays usable.
    expect(() => mem.alloc(2 ** 31)).toThrow(/SINKLM_DECODE=tensor/);
    expect(mem.alloc(4)).toBeGreaterThan(0);
  });

  it('caches and HostSteps give their host memory back', () => {
    const mem = hostMemory();
    const before = mem.used;
    const model = tinyModel({ max_position_embeddings: 256 });
    const host = hostStepOf(model);
    const sinks = new SinkCache(2, 6, shapeOf(model));
    const dense = new DenseCache(shapeOf(model));
    for (const t of Array.from({ length: 150 }, (_, i) => i % 50)) {
      host.step([t], dense);
      host.step([t], sinks);
    }
    expect(mem.used).toBeGreaterThan(before);
    sinks.dispose();
    dense.dispose();
    model.dispose();
    expect(mem.used).toBe(before);
  });
});
