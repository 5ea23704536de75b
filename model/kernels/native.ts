/**
 * The kernels of the native TensorFlow backend ('tensorflow'), run through tfjs-node's
 * binding: TensorFlow's own MatMul, BiasAdd and BiasAddGrad (tfjs-node would run a 2-D
 * x W^T as a batched matmul plus a broadcast add; these are ~1.5x faster), and sinklm's own
 * ops (native/*.cc), which exist once the op library has loaded into the same runtime
 * (core/backend.ts); where sinklm has its own op for a built-in (the matrix product), its
 * own runs. Each takes the inputs and returns the outputs of the formula of the same
 * name in formula.ts.
 */
import * as tf from '@tensorflow/tfjs-core';
import { pickedLogits } from './formula.js';

export const NATIVE_BACKEND = 'tensorflow';

/** The subset of tfjs-node's backend these kernels use. */
interface NodeBackend {
  binding: { TF_ATTR_TYPE: number; TF_ATTR_BOOL: number; TF_ATTR_INT: number; TF_ATTR_FLOAT: number; TF_FLOAT: number; TF_INT32: number };
  executeMultipleOutputs(name: string, attrs: Attr[], inputs: tf.TensorInfo[], n: number): tf.Tensor[];
}

/** A TensorFlow op attribute as the tfjs-node binding takes it. */
type Attr = { name: string; type: number; value: number | boolean };
type Binding = NodeBackend['binding'];

export interface NativeKernel {
  /** The TensorFlow op that runs it. */
  op: string;
  /** Kernel input names, in the op's order. */
  inputs: string[];
  outputs: number;
  attrs: (b: Binding, k: Record<string, unknown>) => Attr[];
  /** A TensorFlow built-in (always there), or one of sinklm's own ops (there once the library loaded). */
  builtin: boolean;
  /** sinklm's own op for the same kernel, preferred to the built-in once the library loaded. */
  own?: NativeKernel;
  /**
   * On an `own` op that shares its kernel with a built-in: the calls it takes (the rest go to
   * the built-in). Without it, every call.
   */
  takes?: (inputs: Record<string, tf.TensorInfo>, attrs: Record<string, unknown>) => boolean;
}

const float32 = (b: Binding): Attr => ({ name: 'T', type: b.TF_ATTR_TYPE, value: b.TF_FLOAT });
const eps = (b: Binding, k: Record<string, unknown>): Attr[] => [{ name: 'eps', type: b.TF_ATTR_FLOAT, value: k.eps as number }];
const attention = (b: Binding, k: Record<string, unknown>): Attr[] =>
  (['batch', 'heads', 'rotary_dims', 'mode'] as const).map((name) => ({ name, type: b.TF_ATTR_INT, value: k[name] as number }));
const none = (): Attr[] => [];
const sinklm = (inputs: string[], outputs: number, attrs: NativeKernel['attrs'] = none) => ({ inputs, outputs, attrs, builtin: false });

const transposes = (b: Binding, k: Record<string, unknown>): Attr[] => [
  { name: 'transpose_a', type: b.TF_ATTR_BOOL, value: k.transposeA as boolean },
  { name: 'transpose_b', type: b.TF_ATTR_BOOL, value: k.transposeB as boolean },
];

/**
 * The products sinklm's SinklmMatMul takes from TensorFlow's MatMul: x W^T with at most
 * DOT_MAX_ROWS rows of x (decoding, next-token logits), which it runs as dot products over
 * W's rows in place. Everything larger goes to TensorFlow's MatMul (oneDNN): over a training
 * step of the pythia-14m shape it gave 9,200-11,100 tokens/s against 6,800-7,900 with
 * SinklmMatMul's micro-kernel on every product (three alternating pairs, AMD EPYC, 2026-12-02).
 */
/** Keep equal to kDotMaxRows in native/gemm.cc, where these products take the dot-product path. */
export const DOT_MAX_ROWS = 32;
export function matMulTakesOwn(rows: number, transposeA: boolean, transposeB: boolean): boolean {
  return transposeB && !transposeA && rows <= DOT_MAX_ROWS;
}

/** Kernel name -> how the native backend runs it. sinklm's ops share their kernel's name. */
export const NATIVE: Record<string, NativeKernel> = {
  SinklmMatMul: {
    op: 'MatMul',
    inputs: ['a', 'b'],
    outputs: 1,
    attrs: (b, k) => [float32(b), ...transposes(b, k)],
    builtin: true,
    own: {
      op: 'SinklmMatMul',
      ...sinklm(['a', 'b'], 1, transposes),
      takes: ({ a }, k) => matMulTakesOwn(a!.shape[0]!, k.transposeA as boolean, k.transposeB as boolean),
    },
  },
  SinklmBiasAdd: { op: 'BiasAdd', inputs: ['x', 'bias'], outputs: 1, attrs: (b) => [float32(b)], builtin: true },
  SinklmBiasAddGrad: { op: 'BiasAddGrad', inputs: ['dy'], outputs: 1, attrs: (b) => [float32(b)], builtin: true },
  SinklmLayerNorm: { op: 'SinklmLayerNorm', ...sinklm(['x', 'gamma', 'beta'], 3, eps) },
  SinklmLayerNorm2: { op: 'SinklmLayerNorm2', ...sinklm(['x', 'gamma1', 'beta1', 'gamma2', 'beta2'], 4, eps) },
  SinklmLayerNormGrad: { op: 'SinklmLayerNormGrad', ...sinklm(['xhat', 'rstd', 'gamma', 'dy'], 3) },
  SinklmLayerNorm2Grad: { op: 'SinklmLayerNorm2Grad', ...sinklm(['xhat', 'rstd', 'gamma1', 'dy1', 'gamma2', 'dy2'], 5) },
  SinklmBiasGelu: { op: 'SinklmBiasGelu', ...sinklm(['x', 'bias'], 1) },
  SinklmBiasGeluGrad: { op: 'SinklmBiasGeluGrad', ...sinklm(['dy', 'x', 'bias'], 2) },
  SinklmAttention: { op: 'SinklmAttention', ...sinklm(['qkv', 'qcos', 'qsin', 'kcos', 'ksin', 'sink'], 2, attention) },
  SinklmAttentionGrad: { op: 'SinklmAttentionGrad', ...sinklm(['qkv', 'qcos', 'qsin', 'kcos', 'ksin', 'sink', 'ctx', 'lse', 'dctx'], 2, attention) },
  SinklmXent: { op: 'SinklmXent', ...sinklm(['logits', 'labels'], 2) },
  SinklmXentGrad: { op: 'SinklmXentGrad', ...sinklm(['logits', 'labels', 'lse', 'dnll'], 1) },
  SinklmAdamW: { op: 'SinklmAdamW', ...sinklm(['p', 'g', 'm', 'v', 'mask', 'hyper'], 3) },
};

/**
 * Kernels that TensorFlow's built-ins do better than the formulas when sinklm's library is
 * absent: the cross entropy on SparseSoftmaxCrossEntropyWithLogits, whose one pass gives the
 * loss and softmax - onehot (the formula would make a dozen passes over the [N, V] logits).
 */
export const COMPOSITES: Record<string, (inputs: Record<string, tf.Tensor>, be: NodeBackend) => tf.Tensor | tf.Tensor[]> = {
  SinklmXent: ({ logits, labels }, be) => {
    const [nll, backprop] = sparseXent(be, logits!, labels!);
    backprop!.dispose();
    return [nll!, tf.add(nll!, pickedLogits(logits!, labels!))];
  },
  SinklmXentGrad: ({ logits, labels, dnll }, be) => {
    const [nll, backprop] = sparseXent(be, logits!, labels!);
    nll!.dispose();
    return tf.mul(backprop!, tf.expandDims(dnll!, 1));
  },
};

function sparseXent(be: NodeBackend, logits: tf.Tensor, labels: tf.Tensor): tf.Tensor[] {
  const b = be.binding;
  return be.executeMultipleOutputs('SparseSoftmaxCrossEntropyWithLogits', [float32(b), { name: 'Tlabels', type: b.TF_ATTR_TYPE, value: b.TF_INT32 }], [logits, labels], 2);
}

/** The tfjs kernel function that runs composite `name` on the native backend. */
export function compositeKernelFunc(name: string): tf.KernelFunc {
  return ({ inputs, backend }) => tf.tidy(() => COMPOSITES[name]!(inputs as unknown as Record<string, tf.Tensor>, backend as unknown as NodeBackend));
}

/** The tfjs kernel function that runs `k` on the native backend. */
export function nativeKernelFunc(k: NativeKernel): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const be = backend as unknown as NodeBackend;
    const ins = k.inputs.map((n) => (inputs as Record<string, tf.TensorInfo>)[n]!);
    const outs = be.executeMultipleOutputs(k.op, k.attrs(be.binding, attrs as Record<string, unknown>), ins, k.outputs);
    return k.outputs === 1 ? outs[0]! : outs;
  };
}
