/**
 * TensorFlow ops the native backend has but tfjs does not call (or calls slower), as tfjs
 * kernels of the 'tensorflow' backend. tfjs-node runs a 2-D x W^T as a batched matmul
 * plus a broadcast add; TensorFlow's own MatMul and BiasAdd do it ~1.5x faster, and its
 * SparseSoftmaxCrossEntropyWithLogits gives a loss and its gradient in one pass.
 * Callers check native() first; these kernels exist only there.
 */
import * as tf from '@tensorflow/tfjs-core';

const BACKEND = 'tensorflow';

/** The subset of tfjs-node's backend these kernels use. */
interface NodeBackend {
  binding: { TF_ATTR_TYPE: number; TF_ATTR_BOOL: number; TF_FLOAT: number; TF_INT32: number };
  executeSingleOutput(name: string, attrs: unknown[], inputs: tf.TensorInfo[]): tf.Tensor;
  executeMultipleOutputs(name: string, attrs: unknown[], inputs: tf.TensorInfo[], n: number): tf.Tensor[];
}

/** True where the kernels below run: the native TensorFlow backend (CPU or GPU). */
export function native(): boolean {
  return tf.getBackend() === BACKEND;
}

const floatT = (be: NodeBackend) => ({ name: 'T', type: be.binding.TF_ATTR_TYPE, value: be.binding.TF_FLOAT });

tf.registerKernel({
  kernelName: 'SinklmMatMul',
  backendName: BACKEND,
  kernelFunc: ({ inputs, backend, attrs }) => {
    const be = backend as unknown as NodeBackend;
    const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const bool = (name: string, value: boolean) => ({ name, type: be.binding.TF_ATTR_BOOL, value });
    return be.executeSingleOutput('MatMul', [floatT(be), bool('transpose_a', transposeA), bool('transpose_b', transposeB)], [a, b]);
  },
});

tf.registerKernel({
  kernelName: 'SinklmBiasAdd',
  backendName: BACKEND,
  kernelFunc: ({ inputs, backend }) => {
    const be = backend as unknown as NodeBackend;
    const { x, bias } = inputs as { x: tf.TensorInfo; bias: tf.TensorInfo };
    return be.executeSingleOutput('BiasAdd', [floatT(be)], [x, bias]);
  },
});

tf.registerKernel({
  kernelName: 'SinklmBiasAddGrad',
  backendName: BACKEND,
  kernelFunc: ({ inputs, backend }) => {
    const be = backend as unknown as NodeBackend;
    return be.executeSingleOutput('BiasAddGrad', [floatT(be)], [(inputs as { dy: tf.TensorInfo }).dy]);
  },
});

tf.registerKernel({
  kernelName: 'SinklmSparseSoftmaxXent',
  backendName: BACKEND,
  kernelFunc: ({ inputs, backend }) => {
    const be = backend as unknown as NodeBackend;
    const { logits, labels } = inputs as { logits: tf.TensorInfo; labels: tf.TensorInfo };
    const tlabels = { name: 'Tlabels', type: be.binding.TF_ATTR_TYPE, value: be.binding.TF_INT32 };
    return be.executeMultipleOutputs('SparseSoftmaxCrossEntropyWithLogits', [floatT(be), tlabels], [logits, labels], 2);
  },
});

const run = (name: string, inputs: Record<string, tf.Tensor>, attrs: Record<string, boolean> = {}) =>
  tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap);

/** 2-D a x b with optional transposes (TensorFlow's MatMul, not a batched matmul). */
export function matMul2d(a: tf.Tensor2D, b: tf.Tensor2D, transposeA = false, transposeB = false): tf.Tensor2D {
  return run('SinklmMatMul', { a, b }, { transposeA, transposeB }) as tf.Tensor2D;
}

/** x + bias along the last axis. */
export function biasAdd(x: tf.Tensor2D, bias: tf.Tensor1D): tf.Tensor2D {
  return run('SinklmBiasAdd', { x, bias }) as tf.Tensor2D;
}

/** Column sums of dy [N, C]: the bias gradient. */
export function biasGrad(dy: tf.Tensor2D): tf.Tensor1D {
  return run('SinklmBiasAddGrad', { dy }) as tf.Tensor1D;
}

/** Per-row softmax cross entropy [N] and its gradient softmax(logits) - onehot(labels) [N, V]. */
export function sparseSoftmaxXent(logits: tf.Tensor2D, labels: tf.Tensor1D): [tf.Tensor1D, tf.Tensor2D] {
  return run('SinklmSparseSoftmaxXent', { logits, labels }) as unknown as [tf.Tensor1D, tf.Tensor2D];
}
