/**
 * The bench library on a tiny model: every figure is there, positive and consistent, and
 * the benches leave no tensors behind. Not a timing test: the numbers are not judged.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { benchDecode, benchLong, longDrift, type LongRow } from '../bench/decode.js';
import { measureMatmulPeak } from '../bench/peak.js';
import { benchTrain, modelFlopsPerToken } from '../bench/train.js';
import type { NeoXConfig } from '../model/config.js';
import { GPTNeoX } from '../model/neox.js';
import { initParams } from '../model/params.js';
import { AdamW } from '../train/optimizer.js';
import { numTensors, testBackend, tinyConfig } from './helpers.js';

beforeAll(async () => {
  await testBackend();
});

const adamw = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1 };

/**
 * Tensors that building and disposing a model (and its optimizer) leave counted on their
 * own: the benches must add none to these.
 */
function constructionResidue(c: NeoXConfig, withOptimizer: boolean): number {
  const before = numTensors();
  const model = new GPTNeoX(c, initParams(c, 1));
  if (withOptimizer) new AdamW(model, adamw).dispose();
  model.dispose();
  return numTensors() - before;
}

describe('bench', () => {
  it('matmul peak is a positive GFLOP/s figure', async () => {
    const p = await measureMatmulPeak({ n: 64, reps: 2 });
    expect(p.gflops).toBeGreaterThan(0);
    expect(p.ms_per_matmul).toBeGreaterThan(0);
  });

  it('model FLOPs follow 6N + 12LTD', () => {
    const c = tinyConfig();
    const N = 2 * (4 * 16 * 16 + 2 * 16 * 32) + 50 * 16;
    expect(modelFlopsPerToken(c, 8)).toBe(6 * N + 12 * 2 * 8 * 16);
  });

  it('train: tokens/s, the split, MFU and the HF config', async () => {
    const residue = constructionResidue(tinyConfig(), true);
    const before = numTensors();
    const r = await benchTrain({ model: tinyConfig(), batch: 2, seq: 8, steps: 2, warmup: 1, adamw, lr: 1e-3, peakN: 64, topKernels: 5 });
    expect(numTensors() - before).toBe(residue);
    for (const k of ['tokens_per_s', 'ms_per_step', 'ms_forward', 'ms_optimizer', 'mfu', 'peak_gflops', 'model_gflops_per_step', 'params', 'threads', 'cpu_utilization'] as const) {
      expect(r[k], k).toBeGreaterThan(0);
    }
    expect(Number.isFinite(r.ms_backward)).toBe(true);
    expect(r.loadavg).toBeGreaterThanOrEqual(0);
    expect(typeof r.backend).toBe('string');
    expect([r.batch, r.seq]).toEqual([2, 8]);
    expect(r.tokens_per_s).toBeCloseTo((2 * 8 * 1000) / r.ms_per_step, 6);
    expect(r.config).toMatchObject({ model_type: 'gpt_neox', hidden_size: 16, num_hidden_layers: 2, vocab_size: 50 });
    expect(r.profile.kernels).toBeGreaterThan(0);
    expect(r.profile.top.length).toBeGreaterThan(0);
    expect(r.profile.top.length).toBeLessThanOrEqual(5);
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  });

  it('decode: a row per policy and cache, recompute/sinks ratios, a flat long stream', async () => {
    const c = tinyConfig({ max_position_embeddings: 17 });
    const residue = constructionResidue(c, false);
    const base = numTensors();
    const model = new GPTNeoX(c, initParams(c, 1));
    const { rows, ratios } = await benchDecode(model, {
      caches: [8, 16],
      policies: ['sinks', 'window', 'dense', 'recompute'],
      sinks: 4,
      tokens: 3,
      recomputeTokens: 2,
      warmup: 1,
    });
    expect(rows.map((r) => `${r.policy}@${r.cache}`)).toEqual([
      'sinks@8', 'window@8', 'dense@8', 'recompute@8',
      'sinks@16', 'window@16', 'dense@16', 'recompute@16',
    ]);
    for (const r of rows) {
      expect(r.ms_per_token).toBeGreaterThan(0);
      expect(r.ms_median).toBeGreaterThan(0);
      expect(r.rss_mb).toBeGreaterThan(0);
      // The host step runs no backend kernels; recompute's forward (and a tensor step) does.
      if (r.decode === 'host') expect(r.ops_per_token).toBe(0);
      else expect(r.ops_per_token).toBeGreaterThan(0);
      expect(r.decode).toBe(r.policy === 'recompute' ? 'tensor' : 'host');
      // Every policy attends to exactly the cache size on its last timed token.
      expect(r.kv_tokens).toBe(r.cache);
      // The read bound counts every weight matrix the step multiplies by (embed_in is only
      // looked up) and every layer's keys and values; each row carries its ratio to it.
      const D = c.hidden_size;
      const F = c.intermediate_size;
      const weights = c.num_hidden_layers * (4 * D * D + 4 * D + 2 * F * D + F + D) + c.vocab_size * D;
      expect(r.bytes_per_token).toBe(4 * (weights + 2 * c.num_hidden_layers * r.cache * D));
      expect(r.read_bound_ms).toBeGreaterThan(0);
      expect(r.over_bound).toBeCloseTo(r.ms_median / r.read_bound_ms, 10);
    }
    expect(rows.find((r) => r.policy === 'sinks' && r.cache === 8)!.cache_spec).toBe('4+4');
    expect(ratios.map((q) => q.cache)).toEqual([8, 16]);
    for (const q of ratios) expect(q.recompute_over_sinks).toBeGreaterThan(0);

    const long = await benchLong(model, { cache: 8, sinks: 4, milestones: [40, 20], window: 5, progress: false });
    expect(long.map((l) => l.tokens)).toEqual([20, 40]);
    for (const l of long) {
      expect(l.ms_per_token).toBeGreaterThan(0);
      expect(l.ms_median).toBeGreaterThan(0);
      expect(l.window_tokens).toBe(5);
      expect(l.rss_mb).toBeGreaterThan(0);
    }
    // The policy's cache is alive at both milestones: same count, nothing growing.
    expect(long[1]!.num_tensors).toBe(long[0]!.num_tensors);
    expect(long[1]!.host_mb).toBe(long[0]!.host_mb);
    // Stopped (Ctrl-C on a run of hours): what was measured comes back, marked where it stopped.
    const stop = new AbortController();
    stop.abort();
    const cut = await benchLong(model, { cache: 8, sinks: 4, milestones: [100, 100_000], window: 5, progress: false, signal: stop.signal });
    expect(cut.map((l) => [l.tokens, l.interrupted])).toEqual([[100, undefined], [256, true]]);
    model.dispose();
    // Caches, batches and profiles all freed (the model's own causal masks go with it).
    expect(numTensors() - base).toBe(residue);
  });
});

describe('longDrift', () => {
  const row = (tokens: number, ms_median: number, ms_per_token: number, rss_mb: number, extra: Partial<LongRow> = {}): LongRow => ({
    tokens, ms_median, ms_per_token, rss_mb, window_tokens: 10, num_tensors: 81, tensor_mb: 8, host_mb: 8, decode: 'host', ...extra,
  });

  it('is the (max - min) / min spread of each figure over the milestones, stopped rows left out', () => {
    const d = longDrift([row(10, 0.4, 0.5, 500), row(100, 0.44, 0.45, 520), row(1000, 0.42, 0.6, 510), row(1500, 9, 9, 900, { interrupted: true })])!;
    expect(d.from_tokens).toBe(10);
    expect(d.to_tokens).toBe(1000);
    expect(d.ms_median).toBeCloseTo(0.04 / 0.4, 12);
    expect(d.ms_mean).toBeCloseTo(0.15 / 0.45, 12);
    expect(d.rss).toBeCloseTo(20 / 500, 12);
    expect(d.tensors_flat).toBe(true);
    expect(d.host_flat).toBe(true);
  });

  it('says when the tensor count or host memory moved, and needs two milestones', () => {
    const d = longDrift([row(10, 1, 1, 1), row(20, 1, 1, 1, { num_tensors: 82, host_mb: 9 })])!;
    expect([d.tensors_flat, d.host_flat]).toEqual([false, false]);
    expect(longDrift([row(10, 1, 1, 1)])).toBeNull();
  });
});
