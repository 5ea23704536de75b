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
  executeSingleOutput(name: string, attrs: Attr[], inputs: tf.TensorInfo[]): tf.Tensor;
  executeMultipleOutputs(name: string, attrs: Attr[], inputs: tf.TensorInfo[], n: number): tf.Tensor[];
}

/** True where the kernels below run: the native TensorFlow backend (CPU or GPU). */
export function native(): boolean {
  return tf.getBackend() === BACKEND;
}

/** A TensorFlow op attribute as the tfjs-node binding takes it. */
type Attr = { name: string; type: number; value: number | boolean };

/**
 * Registers `kernelName` as TensorFlow's `op` (type attribute T = float32) on the kernel
 * inputs named `inputs`, in the op's order, plus the attributes `attrs` builds from the
 * kernel's own.
 */
function registerOp(
  kernelName: string,
  op: string,
  inputs: string[],
  opts: { outputs?: number; attrs?: (b: NodeBackend['binding'], kernelAttrs: Record<string, unknown>) => Attr[] } = {},
): void {
  tf.registerKernel({
    kernelName,
    backendName: BACKEND,
    kernelFunc: ({ inputs: given, backend, attrs }) => {
      const be = backend as unknown as NodeBackend;
      const b = be.binding;
      const opAttrs = [{ name: 'T', type: b.TF_ATTR_TYPE, value: b.TF_FLOAT }, ...(opts.attrs?.(b, attrs as Record<string, unknown>) ?? [])];
      const ins = inputs.map((n) => (given as Record<string, tf.TensorInfo>)[n]!);
      const n = opts.outputs ?? 1;
      return n === 1 ? be.executeSingleOutput(op, opAttrs, ins) : be.executeMultipleOutputs(op, opAttrs, ins, n);
    },
  });
}

registerOp('SinklmMatMul', 'MatMul', ['a', 'b'], {
  attrs: (b, k) => [
    { name: 'transpose_a', type: b.TF_ATTR_BOOL, value: k.transposeA as boolean },
    { name: 'transpose_b', type: b.TF_ATTR_BOOL, value: k.transposeB as boolean },
  ],
});
registerOp('SinklmBiasAdd', 'BiasAdd', ['x', 'bias']);
registerOp('SinklmBiasAddGrad', 'BiasAddGrad', ['dy']);
registerOp('SinklmSparseSoftmaxXent', 'SparseSoftmaxCrossEntropyWithLogits', ['logits', 'labels'], {
  outputs: 2,
  attrs: (b) => [{ name: 'Tlabels', type: b.TF_ATTR_TYPE, value: b.TF_INT32 }],
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
