/**
 * sinklm's kernels, one per operation and backend, registered as tfjs registers its own: on
 * native TensorFlow the fastest it has (TensorFlow's built-ins, sinklm's own ops once their
 * library has loaded), on every other backend the formula (formula.ts). The operations that
 * call them (fused.ts) and their gradients (gradients.ts) never ask which runs.
 */
import * as tf from '@tensorflow/tfjs-core';
import { sinklmOps } from '../../core/backend.js';
import { FORMULAS } from './formula.js';
import { compositeKernelFunc, COMPOSITES, NATIVE, NATIVE_BACKEND, nativeKernelFunc } from './native.js';

export type KernelSource = 'tensorflow' | 'sinklm' | 'formula';

const registered = new Map<string, Map<string, KernelSource>>();

/**
 * Which implementation of each kernel `backend` gets: sinklm's own op where the library has
 * it, else TensorFlow's built-ins (one op, or a few: COMPOSITES), else the formula.
 */
function choose(backend: string): Map<string, KernelSource> {
  const library = backend === NATIVE_BACKEND ? sinklmOps() : [];
  const out = new Map<string, KernelSource>();
  for (const name of Object.keys(FORMULAS)) {
    const nat = backend === NATIVE_BACKEND ? NATIVE[name] : undefined;
    const own = nat && (nat.builtin ? nat.own : nat);
    const builtin = nat?.builtin || (backend === NATIVE_BACKEND && name in COMPOSITES);
    out.set(name, own && library.includes(own.op) ? 'sinklm' : builtin ? 'tensorflow' : 'formula');
  }
  return out;
}

/**
 * Registers every sinklm kernel for the active backend, once. On native TensorFlow this must
 * follow the op library's load (initBackend does both); before it, the formulas would stay.
 */
export function ensureKernels(): void {
  const backend = tf.getBackend();
  if (registered.has(backend)) return;
  const chosen = choose(backend);
  for (const [name, source] of chosen) {
    if (tf.getKernel(name, backend)) continue;
    const formula = FORMULAS[name]!;
    const kernelFunc: tf.KernelFunc =
      source === 'formula'
        ? ({ inputs, attrs }) => tf.tidy(() => formula(inputs as unknown as Record<string, tf.Tensor>, attrs as Record<string, unknown>))
        : source === 'tensorflow' && name in COMPOSITES
          ? compositeKernelFunc(name)
          : nativeKernelFunc(source === 'sinklm' && NATIVE[name]!.own ? NATIVE[name]!.own! : NATIVE[name]!);
    tf.registerKernel({ kernelName: name, backendName: backend, kernelFunc });
  }
  registered.set(backend, chosen);
}

/** Which implementation runs kernel `name` on the active backend. */
export function kernelSource(name: string): KernelSource {
  ensureKernels();
  return registered.get(tf.getBackend())!.get(name)!;
}

/** Runs kernel `name` on the active backend (the tape records it for its gradient). */
export function run(name: string, inputs: Record<string, tf.Tensor>, attrs: Record<string, unknown> = {}): tf.Tensor | tf.Tensor[] {
  ensureKernels();
  return tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap) as tf.Tensor | tf.Tensor[];
}
