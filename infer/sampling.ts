/**
 * Picking the next token from a row of logits: greedy at temperature 0, otherwise a draw
 * from the softmax at that temperature, cut to the top-k tokens and then to the nucleus
 * (the fewest top tokens holding top-p of the probability), in HF's order. Draws come from
 * a seeded generator, so a run with the same seed, model and prompts reproduces exactly.
 */
import seedrandom from 'seedrandom';
import { UserError } from '../core/errors.js';

export interface SamplingOptions {
  /** 0 means greedy (argmax); otherwise logits are divided by it. */
  temperature: number;
  /** Keep only the k most likely tokens (unset or 0: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (unset or 1: all). */
  topP?: number;
  seed?: number | string;
}

export const DEFAULT_SAMPLING: Required<SamplingOptions> = { temperature: 1, topK: 0, topP: 1, seed: 0 };

/** The one place sampling options are checked; errors name the CLI option. */
export function checkSampling(o: SamplingOptions): void {
  if (!Number.isFinite(o.temperature) || o.temperature < 0) throw new UserError('must be a number >= 0 (0 = greedy)', { field: '--temperature' });
  if (o.topK !== undefined && (!Number.isInteger(o.topK) || o.topK < 0)) throw new UserError('must be a whole number >= 0 (0 = no cut)', { field: '--top-k' });
  if (o.topP !== undefined && (!Number.isFinite(o.topP) || o.topP <= 0 || o.topP > 1)) throw new UserError('must be in (0, 1]', { field: '--top-p' });
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

function gather(probs: Float64Array, ids: Int32Array): Float64Array {
  const out = new Float64Array(ids.length);
  for (let j = 0; j < ids.length; j++) out[j] = probs[ids[j]!]!;
  return out;
}

/** The m ids with the highest probs (ties keep the lower ids), in id order. */
function keepTop(ids: Int32Array, probs: Float64Array, m: number): Int32Array {
  if (m >= ids.length) return ids;
  const cut = gather(probs, ids).sort()[ids.length - m]!;
  let ties = m;
  for (const i of ids) if (probs[i]! > cut) ties--;
  const out = new Int32Array(m);
  let n = 0;
  for (const i of ids) if (probs[i]! > cut || (probs[i] === cut && ties-- > 0)) out[n++] = i;
  return out;
}

/**
 * The ids whose probability (relative to the largest, 1) is at least some threshold, the
 * threshold as high as still keeps `enough(count, mass)` true. A top-k or nucleus set lies
 * inside any top set that already holds k tokens or mass p, so only these few need sorting.
 */
function above(probs: Float64Array, enough: (count: number, mass: number) => boolean): Int32Array {
  // Lowered a factor 4 at a time, so the set stays close to the smallest one that suffices.
  let tau = 0.25;
  for (; tau > 1e-300; tau *= 0.25) {
    let count = 0;
    let mass = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i]! >= tau) {
        count++;
        mass += probs[i]!;
      }
    }
    if (enough(count, mass)) break;
  }
  const ids: number[] = [];
  for (let i = 0; i < probs.length; i++) if (probs[i]! >= tau) ids.push(i);
  return Int32Array.from(ids);
}

/**
 * The tokens a draw may pick (in id order) and their renormalised probabilities. Greedy is
 * the single argmax.
 */
export function candidates(logits: ArrayLike<number>, o: SamplingOptions): { ids: Int32Array; probs: Float64Array } {
  if (o.temperature === 0) return { ids: Int32Array.of(argmax(logits)), probs: Float64Array.of(1) };
  const probs = relativeProbs(logits, o.temperature);
  let total = 0;
  for (const q of probs) total += q;
  const k = o.topK ?? 0;
  const p = o.topP ?? 1;
  let ids: Int32Array;
  if (k > 0) ids = keepTop(above(probs, (count) => count >= k), probs, k);
  else if (p < 1) ids = above(probs, (_, mass) => mass >= p * total);
  else ids = Int32Array.from(probs.keys());
  if (p < 1) {
    // The nucleus: the fewest most likely tokens whose (top-k renormalised) mass reaches p.
    const kept = gather(probs, ids).sort();
    const mass = k > 0 ? kept.reduce((a, b) => a + b, 0) : total;
    let cum = 0;
    let m = 0;
    while (m < kept.length && cum < p * mass) cum += kept[kept.length - 1 - m++]!;
    ids = keepTop(ids, probs, Math.max(1, m));
  }
  const out = gather(probs, ids);
  let sum = 0;
  for (const q of out) sum += q;
  for (let j = 0; j < out.length; j++) out[j] = out[j]! / sum;
  return { ids, probs: out };
}

/** exp((logit - max) / temperature) in float64: the softmax up to its normaliser, max = 1. */
function relativeProbs(logits: ArrayLike<number>, temperature: number): Float64Array {
  const top = logits[argmax(logits)]!;
  const probs = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) probs[i] = Math.exp((logits[i]! - top) / temperature);
  return probs;
}

export interface Sampler {
  /** The next token for one row of logits [V]. */
  next(logits: ArrayLike<number>): number;
}

export function makeSampler(opts: Partial<SamplingOptions> = {}): Sampler {
  const o = { ...DEFAULT_SAMPLING, ...opts };
  checkSampling(o);
  const rng = seedrandom(`sinklm-sample-${o.seed}`);
  return {
    next(logits) {
      if (o.temperature === 0) return argmax(logits);
      if (!o.topK && o.topP >= 1) return draw(relativeProbs(logits, o.temperature), rng());
      const { ids, probs } = candidates(logits, o);
      const u = rng();
      let cum = 0;
      for (let i = 0; i < ids.length; i++) {
        cum += probs[i]!;
        if (u < cum) return ids[i]!;
      }
      // Rounding left the sum a hair under 1 and u fell in the gap.
      return ids[ids.length - 1]!;
    },
  };
}

/** Inverse-CDF draw over unnormalised weights, for the uncut case. */
function draw(weights: Float64Array, u: number): number {
  let total = 0;
  for (const w of weights) total += w;
  const target = u * total;
  let cum = 0;
  for (let i = 0; i < weights.length; i++) {
    cum += weights[i]!;
    if (target < cum) return i;
  }
  return weights.length - 1;
}
