/**
 * The gradients of sinklm's kernels, registered apart from them as tfjs registers its own:
 * each runs the backward kernel of the same backend (native or formula, index.ts), on what
 * the forward saved.
 */
import * as tf from '@tensorflow/tfjs-core';
import { run } from './index.js';

const outs = (x: tf.Tensor | tf.Tensor[]) => x as tf.Tensor[];

tf.registerGradient({
  kernelName: 'SinklmLayerNorm',
  inputsToSave: ['gamma'],
  outputsToSave: [false, true, true],
  gradFunc: (dys, saved) => {
    const [gamma, xhat, rstd] = saved as tf.Tensor[];
    const [dx, dgamma, dbeta] = outs(run('SinklmLayerNormGrad', { xhat: xhat!, rstd: rstd!, gamma: gamma!, dy: outs(dys)[0]! }));
    return { x: () => dx!, gamma: () => dgamma!, beta: () => dbeta! };
  },
});

tf.registerGradient({
  kernelName: 'SinklmLayerNorm2',
  inputsToSave: ['gamma1', 'gamma2'],
  outputsToSave: [false, false, true, true],
  gradFunc: (dys, saved) => {
    const [gamma1, gamma2, xhat, rstd] = saved as tf.Tensor[];
    const [dy1, dy2] = outs(dys);
    const [dx, dg1, db1, dg2, db2] = outs(run('SinklmLayerNorm2Grad', { xhat: xhat!, rstd: rstd!, gamma1: gamma1!, dy1: dy1!, gamma2: gamma2!, dy2: dy2! }));
    return { x: () => dx!, gamma1: () => dg1!, beta1: () => db1!, gamma2: () => dg2!, beta2: () => db2! };
  },
});

tf.registerGradient({
  kernelName: 'SinklmBiasGelu',
  inputsToSave: ['x', 'bias'],
  gradFunc: (dy, saved) => {
    const [x, bias] = saved as tf.Tensor[];
    const [dx, db] = outs(run('SinklmBiasGeluGrad', { dy: dy as tf.Tensor, x: x!, bias: bias! }));
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
    const ins = { qkv: qkv!, qcos: qcos!, qsin: qsin!, kcos: kcos!, ksin: ksin!, sink: sink!, ctx: ctx!, lse: lse!, dctx: outs(dys)[0]! };
    const [dqkv, dsink] = outs(run('SinklmAttentionGrad', ins, attrs as Record<string, unknown>));
    // The rotary tables are constants of the model: no gradient flows to them.
    const zero = (t: tf.Tensor) => () => tf.zerosLike(t);
    return { qkv: () => dqkv!, sink: () => dsink!, qcos: zero(qcos!), qsin: zero(qsin!), kcos: zero(kcos!), ksin: zero(ksin!) };
  },
});

tf.registerGradient({
  kernelName: 'SinklmXent',
  inputsToSave: ['logits', 'labels'],
  outputsToSave: [false, true],
  gradFunc: (dys, saved) => {
    const [logits, labels, lse] = saved as tf.Tensor[];
    const dlogits = run('SinklmXentGrad', { logits: logits!, labels: labels!, lse: lse!, dnll: outs(dys)[0]! }) as tf.Tensor;
    return { logits: () => dlogits, labels: () => tf.zeros(labels!.shape) };
  },
});
