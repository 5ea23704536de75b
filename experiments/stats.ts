/**
 * How sure a grid comparison is: the relative perplexity difference between two caches
 * streamed over the same tokens, with a 95% confidence interval from a paired bootstrap
 * over the per-token NLLs.
 *
 * Paired: both caches predicted the very same tokens, so each resample takes the same
 * token positions from both, and what varies between texts (hard passages, easy ones)
 * cancels. Blocks: the per-token differences are not independent (a passage where the
 * evicted context mattered stays that way for a while), so whole blocks of consecutive
 * tokens are resampled (a circular block bootstrap, Politis & Romano 1992); resampling
 * single tokens would make the interval too narrow.
 */
import seedrandom from 'seedrandom';

export interface PairedDiff {
  /** ppl(a) / ppl(b) - 1 = exp(mean nll_a - mean nll_b) - 1. */
  rel: number;
  /** 95% interval of `rel` (2.5% and 97.5% percentiles of the resamples). */
  lo: number;
  hi: number;
  tokens: number;
  resamples: number;
  block: number;
}

/** Resamples per interval: the 2.5% tail holds 50 of them, enough for stable percentiles. */
export const BOOTSTRAP_RESAMPLES = 2000;

export function pairedBootstrap(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  opts: { block: number; resamples?: number; seed?: string },
): PairedDiff {
  if (a.length !== b.length) throw new Error(`pairedBootstrap: ${a.length} vs ${b.length} tokens; the runs must cover the same tokens`);
  const n = a.length;
  if (n === 0) throw new Error('pairedBootstrap: no tokens');
  // Prefix sums of the differences make each block's sum O(1) (a wrapped block is two pieces).
  const prefix = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) prefix[i + 1] = prefix[i]! + (a[i]! - b[i]!);
  const sumFrom = (start: number, len: number) =>
    start + len <= n ? prefix[start + len]! - prefix[start]! : prefix[n]! - prefix[start]! + prefix[start + len - n]!;
  const block = Math.max(1, Math.min(n, Math.round(opts.block)));
  const blocks = Math.ceil(n / block);
  const resamples = opts.resamples ?? BOOTSTRAP_RESAMPLES;
  const rng = seedrandom(opts.seed ?? 'sinklm-bootstrap');
  const means = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let sum = 0;
    let count = 0;
    for (let k = 0; k < blocks; k++) {
      const len = Math.min(block, n - count);
      sum += sumFrom(Math.floor(rng() * n), len);
      count += len;
    }
    means[r] = sum / n;
  }
  means.sort();
  const pick = (q: number) => means[Math.min(resamples - 1, Math.max(0, Math.round(q * (resamples - 1))))]!;
  return { rel: Math.expm1(prefix[n]! / n), lo: Math.expm1(pick(0.025)), hi: Math.expm1(pick(0.975)), tokens: n, resamples, block };
}

export type Outcome = 'holds' | 'does not hold' | 'inconclusive';

/**
 * "a is worse than b by more than `margin`": holds when the whole interval is above the
 * margin, does not hold when the whole interval is below it.
 */
export function worseBy(diff: PairedDiff, margin: number): Outcome {
  if (diff.lo > margin) return 'holds';
  if (diff.hi < margin) return 'does not hold';
  return 'inconclusive';
}

/** "a is no worse than b by more than `margin`" (non-inferiority): the mirror of worseBy. */
export function noWorseThan(diff: PairedDiff, margin: number): Outcome {
  const w = worseBy(diff, margin);
  return w === 'holds' ? 'does not hold' : w === 'does not hold' ? 'holds' : 'inconclusive';
}

export function formatDiff(d: PairedDiff): string {
  const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(2)}%`;
  return `${pct(d.rel)} [95% CI ${pct(d.lo)}, ${pct(d.hi)}]`;
}
