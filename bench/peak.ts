/**
 * The matmul peak of the backend in use: the denominator of model FLOPs utilisation.
 * Measured in the same process and run as the figure it divides, so a busy machine or a
 * slow backend lowers both alike and the ratio stays meaningful.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface PeakResult {
  /** Square matmul size n (n x n times n x n). */
  n: number;
  reps: number;
  ms_per_matmul: number;
  /** 2 n^3 FLOPs per matmul over its wall time. */
  gflops: number;
}

/**
 * Times `reps` float32 n x n x n matmuls, after one untimed to load the kernels. Each
 * product feeds the next so no backend can skip or overlap them,
 * and one read at the end waits for all of them.
 */
export async function measureMatmulPeak(opts: { n?: number; reps?: number } = {}): Promise<PeakResult> {
  const n = opts.n ?? 1024;
  const reps = opts.reps ?? 8;
  const a = tf.randomUniform([n, n], -1, 1, 'float32', 1);
  // Variance 1/n keeps the chained products near unit scale: no overflow, and no
  // denormals (which would slow a CPU matmul many times over).
  const r = Math.sqrt(3 / n);
  const b = tf.randomUniform([n, n], -r, r, 'float32', 2);
  const first = tf.matMul(a, b);
  await first.data();
  first.dispose();
  const t0 = performance.now();
  let x: tf.Tensor = a.clone();
  for (let i = 0; i < reps; i++) {
    const next = tf.matMul(x as tf.Tensor2D, b);
    x.dispose();
    x = next;
  }
  await x.data();
  const ms = performance.now() - t0;
  tf.dispose([a, b, x]);
  const msPer = ms / reps;
  return { n, reps, ms_per_matmul: msPer, gflops: (2 * n ** 3) / (msPer * 1e6) };
}
