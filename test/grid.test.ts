import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import type { GridCell, GridResult } from '../experiments/grid.js';
import { noWorseThan, pairedBootstrap, worseBy } from '../experiments/stats.js';
import { verdicts } from '../experiments/verdicts.js';

const CACHES = ['0+64', '1+63', '2+62', '4+60'];

/** Gaussian noise from a seeded uniform (Box-Muller). */
function normals(n: number, seed: string): Float64Array {
  const rng = seedrandom(seed);
  return Float64Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(Math.max(rng(), 1e-12))) * Math.cos(2 * Math.PI * rng()));
}

/**
 * A grid whose cells have the given perplexities: per-token NLLs share one text-difficulty
 * term (sd 1.5, as real NLLs do) plus a small per-cache term, so the caches are paired.
 */
function result(rows: Record<string, [GridCell['sink_mode'], number[]]>, n = 4000, cacheNoise = 0.05): GridResult {
  const grid: GridCell[] = [];
  const curves: GridResult['curves'] = [];
  const text = normals(n, 'text');
  for (const [model, [mode, ppl]] of Object.entries(rows)) {
    CACHES.forEach((cache, i) => {
      const own = normals(n, `${model}${cache}`);
      const raw = Float64Array.from(text, (t, k) => 1.5 * t + cacheNoise * own[k]!);
      const mean = raw.reduce((a, b) => a + b, 0) / n;
      const nll = raw.map((x) => x - mean + Math.log(ppl[i]!)); // exact mean: ppl is as given
      grid.push({ model, sink_mode: mode, cache, policy: 'sinks', ppl: ppl[i]!, nll_mean: Math.log(ppl[i]!), tokens: n, ms_per_token: 1, backend: 'cpu', decode: 'host', bpb: 1 });
      curves.push({ model, cache, policy: 'sinks', nll });
    });
  }
  return { grid, curves };
}

describe('paired block bootstrap', () => {
  it('the point estimate is exp(mean difference) - 1 and the interval covers it', () => {
    const a = normals(3000, 'a').map((x) => x + 0.02);
    const b = normals(3000, 'a');
    const d = pairedBootstrap(a, b, { block: 1 });
    expect(d.rel).toBeCloseTo(Math.expm1(0.02), 12);
    // Identical noise on both sides cancels in the pairs: the interval has no width.
    expect(d.lo).toBeCloseTo(d.rel, 12);
    expect(d.hi).toBeCloseTo(d.rel, 12);
    const unpaired = pairedBootstrap(a, normals(3000, 'b'), { block: 1 });
    expect(unpaired.lo).toBeLessThan(unpaired.rel);
    expect(unpaired.hi).toBeGreaterThan(unpaired.rel);
  });

  it('iid differences: the 95% interval has the normal-theory width 2 x 1.96 sd / sqrt(n)', () => {
    const n = 4000;
    const a = normals(n, 'x');
    const b = new Float64Array(n);
    const d = pairedBootstrap(a, b, { block: 1, resamples: 4000 });
    const width = Math.log1p(d.hi) - Math.log1p(d.lo);
    expect(width / ((2 * 1.96) / Math.sqrt(n))).toBeGreaterThan(0.9);
    expect(width / ((2 * 1.96) / Math.sqrt(n))).toBeLessThan(1.1);
  });

  it('autocorrelated differences: blocks widen the interval that single-token resampling understates', () => {
    const n = 4000;
    const slow = normals(n / 50, 'slow');
    const a = Float64Array.from({ length: n }, (_, i) => slow[Math.floor(i / 50)]!);
    const b = new Float64Array(n);
    const single = pairedBootstrap(a, b, { block: 1 });
    const blocks = pairedBootstrap(a, b, { block: 64 });
    expect(blocks.hi - blocks.lo).toBeGreaterThan(3 * (single.hi - single.lo));
  });

  it('is reproducible (seeded) and refuses runs over different tokens', () => {
    const a = normals(500, 'r');
    const b = normals(500, 's');
    expect(pairedBootstrap(a, b, { block: 16 })).toEqual(pairedBootstrap(a, b, { block: 16 }));
    expect(() => pairedBootstrap(a, b.subarray(1), { block: 16 })).toThrow(/same tokens/);
  });

  it('outcomes: above the margin holds, below does not, straddling is inconclusive', () => {
    const d = (lo: number, hi: number) => ({ rel: (lo + hi) / 2, lo, hi, tokens: 1, resamples: 1, block: 1 });
    expect(worseBy(d(0.02, 0.05), 0.01)).toBe('holds');
    expect(worseBy(d(-0.01, 0.005), 0.01)).toBe('does not hold');
    expect(worseBy(d(0.005, 0.02), 0.01)).toBe('inconclusive');
    expect(noWorseThan(d(-0.01, 0.005), 0.01)).toBe('holds');
    expect(noWorseThan(d(0.02, 0.05), 0.01)).toBe('does not hold');
  });
});

describe('verdicts on the Table-3 grid', () => {
  it('the paper numbers: vanilla needs its initial tokens, the sink-token model needs its sink and streams with one', () => {
    const v = verdicts(result({ vanilla: ['none', [27.87, 18.49, 18.05, 18.05]], token: ['token', [1235, 18.01, 18.01, 18.02]] }), 64);
    expect(v.map((x) => [x.claim.slice(0, 30), x.outcome])).toEqual([
      ['window attention (0 initial to', 'holds'],
      ['a vanilla model needs more tha', 'holds'],
      ['a sink-token model needs its s', 'holds'],
      ['a sink-token model streams wit', 'holds'],
    ]);
    expect(v[3]!.note).toBeUndefined();
    expect(v[3]!.compare).toMatchObject({ a: '1+63', b: '4+60', tokens: 4000, block: 64 });
  });

  it('no sink anywhere (the 2M-token models): the vanilla claims and "needs its sink" do not hold; "streams with one" holds but is vacuous', () => {
    const v = verdicts(result({ vanilla: ['none', [88.78, 88.78, 88.74, 88.75]], token: ['token', [91.39, 91.33, 91.33, 91.46]] }), 64);
    expect(v.map((x) => x.outcome)).toEqual(['does not hold', 'does not hold', 'does not hold', 'holds']);
    expect(v[3]!.note).toMatch(/vacuous/);
  });

  it('a difference near the margin on few, noisy tokens is inconclusive', () => {
    const v = verdicts(result({ vanilla: ['none', [30.3, 30.3, 30, 30]] }, 400, 0.6), 64);
    expect(v[0]!.outcome).toBe('inconclusive');
  });

  it('softmax1 and the sink logit are asked whether they stream with no initial token', () => {
    const v = verdicts(result({ softmax1: ['softmax1', [29214, 19.9, 18.27, 18.01]], logit: ['logit', [18.0, 18.0, 18.0, 18.0]] }), 64);
    expect(v.map((x) => [x.model, x.outcome])).toEqual([
      ['softmax1', 'does not hold'],
      ['logit', 'holds'],
    ]);
  });
});
