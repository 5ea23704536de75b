/**
 * Train / validation / test by whole documents, so no text the model trains on is ever
 * scored: a seeded shuffle of document indices, cut by the configured fractions.
 */
import seedrandom from 'seedrandom';
import { UserError } from '../core/errors.js';

export const SPLITS = ['train', 'validation', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];

/** Corpus document indices per split, each list in corpus order. */
export type DocumentSplit = Record<SplitName, number[]>;

export interface SplitOptions {
  validationFrac: number;
  testFrac: number;
  seed: number;
  /** Names the corpus in error lines. */
  corpus?: string;
}

export function splitDocuments(count: number, opts: SplitOptions): DocumentSplit {
  const nVal = Math.max(1, Math.round(count * opts.validationFrac));
  const nTest = Math.max(1, Math.round(count * opts.testFrac));
  if (count - nVal - nTest < 1) {
    throw new UserError(
      `the corpus has ${count} document(s), too few for train/validation/test splits (${nVal} + ${nTest} held out, at least 1 left to train on)`,
      { file: opts.corpus },
    );
  }
  const order = Array.from({ length: count }, (_, i) => i);
  const rng = seedrandom(`split:${opts.seed}`);
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const sorted = (a: number[]) => a.sort((x, y) => x - y);
  return {
    test: sorted(order.slice(0, nTest)),
    validation: sorted(order.slice(nTest, nTest + nVal)),
    train: sorted(order.slice(nTest + nVal)),
  };
}
