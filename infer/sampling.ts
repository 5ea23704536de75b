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

/** The m ids with the highest probs (ties keep the lower ids), in id order. */
function keepTop(ids: Int32Array, probs: Float64Array, m: number): Int32Array {
  if (m >= ids.length) return ids;
  const sorted = Float64Array.from(ids, (i) => probs[i]!).sort();
  const cut = sorted[sorted.length - m]!;
  let above = 0;
  for (const i of ids) if (probs[i]! > cut) above++;
  let ties = m - above;
  return ids.filter((i) => probs[i]! > cut || (probs[i] === cut && ties-- > 0));
}

/**
 * The tokens a draw may pick (in id order) and their renormalised probabilities. Greedy is
 * the single argmax. Selection works on thresholds found by a native numeric sort, so a
 * 50k vocabulary costs about a millisecond, not a comparator sort per token.
 */
export function candidates(logits: ArrayLike<number>, o: SamplingOptions): { ids: Int32Array; probs: Float64Array } {
  if (o.temperature === 0) return { ids: Int32Array.of(argmax(logits)), probs: Float64Array.of(1) };
  const V = logits.length;
  // Softmax in float64, relative to the largest logit so nothing overflows.
  const top = logits[argmax(logits)]! / o.temperature;
  const probs = new Float64Array(V);
  for (let i = 0; i < V; i++) probs[i] = Math.exp(logits[i]! / o.temperature - top);
  let ids: Int32Array = Int32Array.from({ length: V }, (_, i) => i);
  const k = o.topK ?? 0;
  if (k > 0) ids = keepTop(ids, probs, k);
  const p = o.topP ?? 1;
  if (p < 1) {
    // The nucleus: the fewest most likely tokens whose (top-k renormalised) mass reaches p.
    const kept = Float64Array.from(ids, (i) => probs[i]!).sort();
    const total = kept.reduce((a, b) => a + b, 0);
    let cum = 0;
    let m = 0;
    while (m < kept.length && cum < p * total) cum += kept[kept.length - 1 - m++]!;
    ids = keepTop(ids, probs, Math.max(1, m));
  }
  const out = Float64Array.from(ids, (i) => probs[i]!);
  const total = out.reduce((a, b) => a + b, 0);
  for (let i = 0; i < out.length; i++) out[i] = out[i]! / total;
  return { ids, probs: out };
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
