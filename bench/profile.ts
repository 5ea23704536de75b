/**
 * Where the time goes: tf.profile over one unit of work (a training step, a decoded
 * token), summed by kernel name. The kernel count matters as much as the times: on a
 * small model per-kernel dispatch, not arithmetic, is often the cost.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface KernelStat {
  name: string;
  /** Calls of this kernel in the profiled work. */
  count: number;
  /** Summed wall time of those calls (tfjs-node times each synchronous kernel). */
  ms: number;
  /** Share of all kernel time. */
  share: number;
}

export interface KernelProfile {
  /** Kernels run by the profiled work (forward, backward and optimizer for a step). */
  kernels: number;
  /** Sum of the kernels' times; the rest of the wall time is JS and dispatch overhead. */
  kernel_ms: number;
  wall_ms: number;
  top: KernelStat[];
}

export async function profileKernels(work: () => void | Promise<void>, top = 12): Promise<KernelProfile> {
  const t0 = performance.now();
  const info = await tf.profile(async () => {
    await work();
  });
  const wall = performance.now() - t0;
  const byName = new Map<string, { count: number; ms: number }>();
  let total = 0;
  let kernels = 0;
  for (const k of info.kernels) {
    // An op with a custom gradient (tf.customGrad, tf.fused.matMul's "fusedMatMul__op")
    // is recorded as a kernel of its own around the kernels it runs: only registered
    // kernels are real ones, counting the wrappers too would count their time twice.
    if (!tf.getKernel(k.name, tf.getBackend())) continue;
    kernels += 1;
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    const s = byName.get(k.name) ?? { count: 0, ms: 0 };
    s.count += 1;
    s.ms += ms;
    byName.set(k.name, s);
    total += ms;
  }
  const stats = [...byName].map(([name, s]) => ({ name, count: s.count, ms: s.ms, share: total > 0 ? s.ms / total : 0 }));
  stats.sort((a, b) => b.ms - a.ms);
  return { kernels, kernel_ms: total, wall_ms: wall, top: stats.slice(0, top) };
}
