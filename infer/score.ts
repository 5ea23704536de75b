/** Full-context scoring: per-token NLL of the first tokens of a text, in one forward pass. */
import * as tf from '@tensorflow/tfjs-core';
import type { LoadedCheckpoint } from './text.js';
import { textStream } from './text.js';

export interface ScoreResult {
  /** The stream (sink token first in a sink-token model). */
  tokens: number[];
  /** nll[i]: natural-log loss of predicting tokens[i+1] from tokens[0..i]. */
  nll: number[];
}

export async function score(ck: LoadedCheckpoint, text: string, file?: string): Promise<ScoreResult> {
  const max = ck.model.config.max_position_embeddings;
  const stream = textStream(ck, text, undefined, file);
  const tokens = stream.tokens.slice(0, max);
  const nll = tf.tidy(() => {
    const logits = ck.model.forward(tf.tensor2d(tokens, [1, tokens.length], 'int32'));
    const n = tokens.length - 1;
    return ck.model.tokenNll(tf.slice(logits, [0, 0], [n, -1]), tf.tensor1d(tokens.slice(1), 'int32'));
  });
  const out = Array.from(await nll.data());
  nll.dispose();
  return { tokens, nll: out };
}
