/**
 * sinklm's kernels, one per operation and backend, registered as tfjs registers its own: on
 * native TensorFlow the fastest it has (TensorFlow's built-ins, sinklm's own ops once their
 * library has loaded), on webgpu sinklm's WGSL (webgpu.ts), on every other backend the
 * formula (formula.ts). The operations that
 * call them (fused.ts) and their gradients (gradients.ts) never ask which runs.
 */
import * as tf from '@tensorflow/tfjs-core';
import { sinklmOps } from '../../core/backend.js';
import { FORMULAS } from './formula.js';
import { compositeKernelFunc, COMPOSITES, NATIVE, NATIVE_BACKEND, nativeKernelFunc } from './native.js';
import { WEBGPU, webgpuKernelFunc } from './webgpu.js';

export type KernelSource = 'tensorflow' | 'sinklm' | 'wgsl' | 'formula';

const registered = new Map<string, Map<string, KernelSource>>();

/**
 * The implementation kernel `name` gets on `backend`: sinklm's own op where the library has
 * it, else TensorFlow's built-ins (one op, or a few: COMPOSITES), else the formula.
 */
function implementation(name: string, backend: string, library: string[]): { source: KernelSource; kernelFunc: tf.KernelFunc } {
  const nat = backend === NATIVE_BACKEND ? NATIVE[name] : undefined;
  const own = nat?.builtin ? nat.own : nat;
  if (own && library.includes(own.op)) {
    const mine = nativeKernelFunc(own);
    if (!own.takes || !nat?.builtin) return { source: 'sinklm', kernelFunc: mine };
    // Shared with a built-in: each call goes where it runs faster.
    const theirs = nativeKernelFunc(nat);
    const takes = own.takes;
    return { source: 'sinklm', kernelFunc: (args) => (takes(args.inputs as Record<string, tf.TensorInfo>, args.attrs as Record<string, unknown>) ? mine(args) : theirs(args)) };
  }
  if (nat?.builtin) return { source: 'tensorflow', kernelFunc: nativeKernelFunc(nat) };
  if (backend === NATIVE_BACKEND && name in COMPOSITES) return { source: 'tensorflow', kernelFunc: compositeKernelFunc(name) };
  if (backend === 'webgpu' && name in WEBGPU && !['1', 'true'].includes(process.env.SINKLM_NO_KERNELS ?? '')) return { source: 'wgsl', kernelFunc: webgpuKernelFunc(name) };
  const formula = FORMULAS[name]!;
  return { source: 'formula', kernelFunc: ({ inputs, attrs }) => tf.tidy(() => formula(inputs as unknown as Record<string, tf.Tensor>, attrs as Record<string, unknown>)) };
}

/**
 * Registers every sinklm kernel for the active backend, once. On native TensorFlow this must
 * follow the op library's load (initBackend does both); before it, the formulas would stay.
 */
export function ensureKernels(): void {
  const backend = tf.getBackend();
  if (registered.has(backend)) return;
  const library = backend === NATIVE_BACKEND ? sinklmOps() : [];
  const chosen = new Map<string, KernelSource>();
  for (const name of Object.keys(FORMULAS)) {
    const { source, kernelFunc } = implementation(name, backend, library);
    chosen.set(name, source);
    if (!tf.getKernel(name, backend)) tf.registerKernel({ kernelName: name, backendName: backend, kernelFunc });
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
