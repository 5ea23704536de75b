/**
 * sinklm's own TensorFlow ops (native/sinklm_ops.cc, built by scripts/setup-native.mjs and
 * loaded by core/backend.ts) as tfjs kernels of the 'tensorflow' backend, with their
 * gradients registered apart, as tfjs registers its own. They run through tfjs-node's
 * binding exactly as native.ts runs TensorFlow's MatMul. fused.ts calls them where
 * `hasKernel` says the running backend has them and otherwise runs the formulas they
 * replace; test/kernels.test.ts checks each against its formula.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { SinkMode } from '../core/config.js';
import { sinklmOps } from '../core/backend.js';

const BACKEND = 'tensorflow';

type Attr = { name: string; type: number; value: number | boolean };
interface NodeBackend {
  binding: { TF_ATTR_INT: number; TF_ATTR_FLOAT: number };
  executeMultipleOutputs(name: string, attrs: Attr[], inputs: tf.TensorInfo[], n: number): tf.Tensor[];
}

/** True when the running backend has sinklm's op `op` (the library is loaded and the backend is native). */
export function hasKernel(op: string): boolean {
  return tf.getBackend() === BACKEND && sinklmOps().includes(op);
}

/** Registers kernel `op` (same name as the TensorFlow op) over the named inputs, in the op's order. */
function register(op: string, inputs: string[], outputs: number, attrs: (b: NodeBackend['binding'], k: Record<string, unknown>) => Attr[] = () => []): void {
  tf.registerKernel({
    kernelName: op,
    backendName: BACKEND,
    kernelFunc: ({ inputs: given, backend, attrs: kernelAttrs }) => {
      const be = backend as unknown as NodeBackend;
      const ins = inputs.map((n) => (given as Record<string, tf.TensorInfo>)[n]!);
      const outs = be.executeMultipleOutputs(op, attrs(be.binding, kernelAttrs as Record<string, unknown>), ins, outputs);
      return outputs === 1 ? outs[0]! : outs;
    },
  });
}

const epsAttr = (b: NodeBackend['binding'], k: Record<string, unknown>) => [{ name: 'eps', type: b.TF_ATTR_FLOAT, value: k.eps as number }];
const attnAttrs = (b: NodeBackend['binding'], k: Record<string, unknown>) =>
  (['batch', 'heads', 'rotary_dims', 'mode'] as const).map((name) => ({ name, type: b.TF_ATTR_INT, value: k[name] as number }));

register('SinklmLayerNorm', ['x', 'gamma', 'beta'], 3, epsAttr);
register('SinklmLayerNorm2', ['x', 'gamma1', 'beta1', 'gamma2', 'beta2'], 4, epsAttr);
register('SinklmLayerNormGrad', ['xhat', 'rstd', 'gamma', 'dy'], 3);
register('SinklmLayerNorm2Grad', ['xhat', 'rstd', 'gamma1', 'dy1', 'gamma2', 'dy2'], 5);
register('SinklmBiasGelu', ['x', 'bias'], 1);
register('SinklmBiasGeluGrad', ['dy', 'x', 'bias'], 2);
register('SinklmAttention', ['qkv', 'qcos', 'qsin', 'kcos', 'ksin', 'sink'], 2, attnAttrs);
register('SinklmAttentionGrad', ['qkv', 'qcos', 'qsin', 'kcos', 'ksin', 'sink', 'ctx', 'lse', 'dctx'], 2, attnAttrs);

const run = (op: string, inputs: Record<string, tf.Tensor>, attrs: Record<string, number> = {}) =>
  tf.engine().runKernel(op, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap) as tf.Tensor | tf.Tensor[];

tf.registerGradient({
  kernelName: 'SinklmLayerNorm',
  inputsToSave: ['gamma'],
  outputsToSave: [false, true, true],
  gradFunc: (dys, saved) => {
    const [gamma, xhat, rstd] = saved as tf.Tensor[];
    const [dx, dgamma, dbeta] = run('SinklmLayerNormGrad', { xhat: xhat!, rstd: rstd!, gamma: gamma!, dy: (dys as tf.Tensor[])[0]! }) as tf.Tensor[];
    return { x: () => dx!, gamma: () => dgamma!, beta: () => dbeta! };
  },
});

tf.registerGradient({
  kernelName: 'SinklmLayerNorm2',
  inputsToSave: ['gamma1', 'gamma2'],
  outputsToSave: [false, false, true, true],
  gradFunc: (dys, saved) => {
    const [gamma1, gamma2, xhat, rstd] = saved as tf.Tensor[];
    const [dy1, dy2] = dys as tf.Tensor[];
    const [dx, dg1, db1, dg2, db2] = run('SinklmLayerNorm2Grad', { xhat: xhat!, rstd: rstd!, gamma1: gamma1!, dy1: dy1!, gamma2: gamma2!, dy2: dy2! }) as tf.Tensor[];
    return { x: () => dx!, gamma1: () => dg1!, beta1: () => db1!, gamma2: () => dg2!, beta2: () => db2! };
  },
});

tf.registerGradient({
  kernelName: 'SinklmBiasGelu',
  inputsToSave: ['x', 'bias'],
  gradFunc: (dy, saved) => {
    const [x, bias] = saved as tf.Tensor[];
    const [dx, db] = run('SinklmBiasGeluGrad', { dy: dy as tf.Tensor, x: x!, bias: bias! }) as tf.Tensor[];
    return { x: () => dx!, bias: () => db! };
  },
});

const ATTN_INPUTS = ['qkv', 'qcos', 'qsin', 'kcos', 'ksin', 'sink'] as const;
tf.registerGradient({
  kernelName: 'SinklmAttention',
  inputsToSave: [...ATTN_INPUTS],
  outputsToSave: [true, true],
  gradFunc: (dys, saved, attrs) => {
    const [qkv, qcos, qsin, kcos, ksin, sink, ctx, lse] = saved as tf.Tensor[];
    const ins = { qkv: qkv!, qcos: qcos!, qsin: qsin!, kcos: kcos!, ksin: ksin!, sink: sink!, ctx: ctx!, lse: lse!, dctx: (dys as tf.Tensor[])[0]! };
    const [dqkv, dsink] = run('SinklmAttentionGrad', ins, attrs as unknown as Record<string, number>) as tf.Tensor[];
    // The rotary tables are constants of the model: no gradient flows to them.
    const none = (t: tf.Tensor) => () => tf.zerosLike(t);
    return { qkv: () => dqkv!, sink: () => dsink!, qcos: none(qcos!), qsin: none(qsin!), kcos: none(kcos!), ksin: none(ksin!) };
  },
});

/**
 * The first output; the rest (what the backward needs) are freed here: the tape keeps its
 * own copies of what it saves.
 */
function first(outs: tf.Tensor[]): tf.Tensor {
  tf.dispose(outs.slice(1));
  return outs[0]!;
}

/** LayerNorm with one affine. */
export function layerNormKernel(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor2D {
  return first(run('SinklmLayerNorm', { x, gamma, beta }, { eps }) as tf.Tensor[]) as tf.Tensor2D;
}

/** The two LayerNorms of one x (statistics computed once): [y1, y2]. */
export function layerNorm2Kernel(x: tf.Tensor2D, g1: tf.Tensor1D, b1: tf.Tensor1D, g2: tf.Tensor1D, b2: tf.Tensor1D, eps: number): [tf.Tensor2D, tf.Tensor2D] {
  const out = run('SinklmLayerNorm2', { x, gamma1: g1, beta1: b1, gamma2: g2, beta2: b2 }, { eps }) as tf.Tensor2D[];
  tf.dispose(out.slice(2));
  return [out[0]!, out[1]!];
}

/** gelu(x + bias), exact GELU. */
export function biasGeluKernel(x: tf.Tensor2D, bias: tf.Tensor1D): tf.Tensor2D {
  return run('SinklmBiasGelu', { x, bias }) as tf.Tensor2D;
}

export const SINK_MODE_CODE: Record<SinkMode, number> = { none: 0, token: 0, softmax1: 1, logit: 2 };

export interface AttentionKernelArgs {
  /** The fused projection [B*T, H*3*hd] in HF's per-head [q|k|v] layout. */
  qkv: tf.Tensor2D;
  /** Rotary tables [>= T, hd]; the query ones carry 1/sqrt(hd). */
  qCos: tf.Tensor2D;
  qSin: tf.Tensor2D;
  kCos: tf.Tensor2D;
  kSin: tf.Tensor2D;
  /** Per-head sink logits [H] (logit mode); any tensor otherwise. */
  sink: tf.Tensor1D;
  batch: number;
  heads: number;
  rotaryDims: number;
  mode: SinkMode;
}

/** Causal self-attention of one layer, all heads: the context [B*T, H*hd]. */
export function attentionKernel(a: AttentionKernelArgs): tf.Tensor2D {
  const out = run(
    'SinklmAttention',
    { qkv: a.qkv, qcos: a.qCos, qsin: a.qSin, kcos: a.kCos, ksin: a.kSin, sink: a.sink },
    { batch: a.batch, heads: a.heads, rotary_dims: a.rotaryDims, mode: SINK_MODE_CODE[a.mode] },
  ) as tf.Tensor[];
  return first(out) as tf.Tensor2D;
}
