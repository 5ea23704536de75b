/**
 * sinklm's kernels written as tfjs formulas: what runs on every backend that has no faster
 * kernel of the same name (wasm, cpu, and native TensorFlow when sinklm's op library is not
 * built or is hidden). Each takes and returns exactly what its native kernel does
 * (native/*.cc), including what the backward needs, so one gradient (gradients.ts) serves
 * both. The backward kernels are the closed forms, not autodiff: test/kernels.test.ts checks
 * each against tfjs's chain rule through the forward formula, on every backend it can reach.
 */
import * as tf from '@tensorflow/tfjs-core';
import { NEG_INF } from '../cache.js';

export type Inputs = Record<string, tf.Tensor>;
export type KernelAttrs = Record<string, unknown>;
export type FormulaKernel = (inputs: Inputs, attrs: KernelAttrs) => tf.Tensor | tf.Tensor[];

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** xhat = (x - mean) * rstd over the last axis of x [N, D]; rstd [N]. */
function normalized(x: tf.Tensor, eps: number): { xhat: tf.Tensor; rstd: tf.Tensor } {
  const { mean, variance } = tf.moments(x, -1, true);
  const rstd = tf.rsqrt(tf.add(variance, eps));
  return { xhat: tf.mul(tf.sub(x, mean), rstd), rstd: tf.reshape(rstd, [x.shape[0]!]) };
}

/** dx of LayerNorm from g = sum_k dy_k * gamma_k: rstd * (g - mean(g) - xhat * mean(g * xhat)). */
function normalizeGrad(xhat: tf.Tensor, rstd: tf.Tensor, g: tf.Tensor): tf.Tensor {
  const centred = tf.sub(g, tf.mean(g, -1, true));
  return tf.mul(tf.sub(centred, tf.mul(xhat, tf.mean(tf.mul(g, xhat), -1, true))), tf.expandDims(rstd, 1));
}

/** logits[i, labels[i]] of logits [N, V]: one gather on the flat logits. */
export function pickedLogits(logits: tf.Tensor, labels: tf.Tensor): tf.Tensor {
  const [N, V] = logits.shape as [number, number];
  const flat = tf.add(tf.mul(tf.range(0, N, 1, 'int32'), tf.scalar(V, 'int32')), labels);
  return tf.gather(tf.reshape(logits, [N * V]), flat);
}

const cdf = (u: tf.Tensor) => tf.mul(tf.add(tf.erf(tf.mul(u, Math.SQRT1_2)), 1), 0.5);

/** The two halves of the rotary dims and the pass-through rest (absent when rd = hd). */
function halves(x: tf.Tensor, rd: number, hd: number): [tf.Tensor, tf.Tensor, tf.Tensor | undefined] {
  const parts = tf.split(x, rd === hd ? [rd / 2, rd / 2] : [rd / 2, rd / 2, hd - rd], -1);
  return [parts[0]!, parts[1]!, parts[2]];
}

/** rotate_half on the first `rd` dims of the last axis ([-x2, x1] there, 0 on the rest). */
function rotateHalf(x: tf.Tensor, rd: number): tf.Tensor {
  const hd = x.shape[x.rank - 1]!;
  if (rd === 0) return tf.zerosLike(x);
  const [x1, x2, rest] = halves(x, rd, hd);
  return tf.concat([tf.neg(x2), x1, ...(rest ? [tf.zerosLike(rest)] : [])], -1);
}

/** The transpose of rotateHalf: [y2, -y1] on the rotary dims, 0 on the rest. */
function rotateHalfT(y: tf.Tensor, rd: number): tf.Tensor {
  const hd = y.shape[y.rank - 1]!;
  if (rd === 0) return tf.zerosLike(y);
  const [y1, y2, rest] = halves(y, rd, hd);
  return tf.concat([y2, tf.neg(y1), ...(rest ? [tf.zerosLike(rest)] : [])], -1);
}

interface AttnOperands {
  B: number;
  T: number;
  H: number;
  hd: number;
  rd: number;
  qr: tf.Tensor4D;
  kr: tf.Tensor4D;
  v: tf.Tensor4D;
  tables: tf.Tensor[];
  /** Scores [B, H, T, T], causal mask added. */
  s: tf.Tensor4D;
  /** The sink term's logit, broadcastable to [B, H, T, 1] (modes 1 and 2). */
  sinkLogit?: tf.Tensor;
}

/** Splits the fused projection per head, rotates q and k, and scores every query against every key. */
function attnOperands(ins: Inputs, a: KernelAttrs): AttnOperands {
  const B = a.batch as number;
  const H = a.heads as number;
  const rd = a.rotary_dims as number;
  const mode = a.mode as number;
  const [BT, C] = ins.qkv!.shape as [number, number];
  const T = BT / B;
  const hd = C / (3 * H);
  const heads = tf.transpose(tf.reshape(ins.qkv!, [B, T, H, 3 * hd]), [0, 2, 1, 3]);
  const [q, k, v] = tf.split(heads, 3, -1) as tf.Tensor4D[];
  const tables = ['qcos', 'qsin', 'kcos', 'ksin'].map((n) => tf.slice(ins[n]!, [0, 0], [T, hd]));
  const [qc, qs, kc, ks] = tables as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
  const qr = tf.add(tf.mul(q!, qc), tf.mul(rotateHalf(q!, rd), qs)) as tf.Tensor4D;
  const kr = tf.add(tf.mul(k!, kc), tf.mul(rotateHalf(k!, rd), ks)) as tf.Tensor4D;
  const future = tf.sub(1, tf.linalg.bandPart(tf.ones([T, T]), -1, 0));
  const s = tf.add(tf.matMul(qr, kr, false, true), tf.mul(future, NEG_INF)) as tf.Tensor4D;
  const sinkLogit = mode === 1 ? tf.zeros([1, 1, 1, 1]) : mode === 2 ? tf.reshape(ins.sink!, [1, H, 1, 1]) : undefined;
  return { B, T, H, hd, rd, qr, kr, v: v!, tables, s, sinkLogit };
}

const headsToRows = (x: tf.Tensor, B: number, T: number, width: number) => tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [B * T, width]);
const rowsToHeads = (x: tf.Tensor, B: number, T: number, H: number) => tf.transpose(tf.reshape(x, [B, T, H, -1]), [0, 2, 1, 3]);

export const FORMULAS: Record<string, FormulaKernel> = {
  SinklmMatMul: ({ a, b }, k) => tf.matMul(a!, b!, k.transposeA as boolean, k.transposeB as boolean),
  SinklmBiasAdd: ({ x, bias }) => tf.add(x!, bias!),
  SinklmBiasAddGrad: ({ dy }) => tf.sum(dy!, 0),
  // The embedding's gradient: each token's row of dy added into its id's row of [vocab, D].
  SinklmEmbeddingGrad: ({ dy, ids }, k) => tf.unsortedSegmentSum(dy!, ids as tf.Tensor1D, k.vocab as number),

  SinklmLayerNorm: ({ x, gamma, beta }, k) => {
    const { xhat, rstd } = normalized(x!, k.eps as number);
    return [tf.add(tf.mul(xhat, gamma!), beta!), xhat, rstd];
  },
  SinklmLayerNorm2: ({ x, gamma1, beta1, gamma2, beta2 }, k) => {
    const { xhat, rstd } = normalized(x!, k.eps as number);
    return [tf.add(tf.mul(xhat, gamma1!), beta1!), tf.add(tf.mul(xhat, gamma2!), beta2!), xhat, rstd];
  },
  SinklmLayerNormGrad: ({ xhat, rstd, gamma, dy }) => [normalizeGrad(xhat!, rstd!, tf.mul(dy!, gamma!)), tf.sum(tf.mul(dy!, xhat!), 0), tf.sum(dy!, 0)],
  SinklmLayerNorm2Grad: ({ xhat, rstd, gamma1, dy1, gamma2, dy2 }) => [
    normalizeGrad(xhat!, rstd!, tf.add(tf.mul(dy1!, gamma1!), tf.mul(dy2!, gamma2!))),
    tf.sum(tf.mul(dy1!, xhat!), 0),
    tf.sum(dy1!, 0),
    tf.sum(tf.mul(dy2!, xhat!), 0),
    tf.sum(dy2!, 0),
  ],

  // y = u * Phi(u), u = x + b; du = dy * (Phi(u) + u * phi(u)).
  SinklmBiasGelu: ({ x, bias }) => {
    const u = tf.add(x!, bias!);
    return tf.mul(u, cdf(u));
  },
  SinklmBiasGeluGrad: ({ dy, x, bias }) => {
    const u = tf.add(x!, bias!);
    const pdf = tf.mul(tf.exp(tf.mul(tf.square(u), -0.5)), INV_SQRT_2PI);
    const du = tf.mul(dy!, tf.add(cdf(u), tf.mul(u, pdf)));
    return [du, tf.sum(tf.reshape(du, [-1, bias!.size]), 0)];
  },

  // Outputs ctx [B*T, H*hd] and lse [B, H, T] (the log of each row's softmax denominator).
  SinklmAttention: (ins, k) => {
    const o = attnOperands(ins, k);
    let m = tf.max(o.s, -1, true);
    if (o.sinkLogit) m = tf.maximum(m, o.sinkLogit);
    const e = tf.exp(tf.sub(o.s, m));
    let sum = tf.sum(e, -1, true);
    if (o.sinkLogit) sum = tf.add(sum, tf.exp(tf.sub(o.sinkLogit, m)));
    const ctx = tf.matMul(tf.div(e, sum), o.v);
    return [headsToRows(ctx, o.B, o.T, o.H * o.hd), tf.reshape(tf.add(m, tf.log(sum)), [o.B, o.H, o.T])];
  },
  // With p = exp(s - lse) and D_i = dctx_i . ctx_i: dv = p^T dO, ds = p (dO v^T - D),
  // dq = ds k, dk = ds^T q, each back through its rotary; d sink_h = -sum exp(sink_h - lse) D.
  SinklmAttentionGrad: (ins, k) => {
    const o = attnOperands(ins, k);
    const lse = tf.expandDims(ins.lse!, -1);
    const p = tf.exp(tf.sub(o.s, lse));
    const dO = rowsToHeads(ins.dctx!, o.B, o.T, o.H);
    const D = tf.sum(tf.mul(dO, rowsToHeads(ins.ctx!, o.B, o.T, o.H)), -1, true);
    const ds = tf.mul(p, tf.sub(tf.matMul(dO, o.v, false, true), D));
    const [qc, qs, kc, ks] = o.tables as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const unrotate = (g: tf.Tensor, c: tf.Tensor, s: tf.Tensor) => tf.add(tf.mul(g, c), rotateHalfT(tf.mul(g, s), o.rd));
    const dq = unrotate(tf.matMul(ds, o.kr), qc, qs);
    const dk = unrotate(tf.matMul(ds, o.qr, true, false), kc, ks);
    const dv = tf.matMul(p, dO, true, false);
    const dqkv = headsToRows(tf.concat([dq, dk, dv], -1), o.B, o.T, 3 * o.H * o.hd);
    const dsink = (k.mode as number) === 2 ? tf.neg(tf.sum(tf.mul(tf.exp(tf.sub(o.sinkLogit!, lse)), D), [0, 2, 3])) : tf.zerosLike(ins.sink!);
    return [dqkv, dsink];
  },

  // nll = lse - logits[label], lse = logsumexp over the row; dlogits = dnll * (softmax - onehot).
  SinklmXent: ({ logits, labels }) => {
    const lse = tf.logSumExp(logits!, -1);
    return [tf.sub(lse, pickedLogits(logits!, labels!)), lse];
  },
  SinklmXentGrad: ({ logits, labels, lse, dnll }) => {
    const V = logits!.shape[1]!;
    const softmax = tf.exp(tf.sub(logits!, tf.expandDims(lse!, 1)));
    return tf.mul(tf.sub(softmax, tf.oneHot(labels!, V, 1, 0, 'float32')), tf.expandDims(dnll!, 1));
  },

  // AdamW on flat vectors; hyper = [lr, beta1, beta2, eps, weight_decay, bc1, bc2, scale].
  SinklmAdamW: ({ p, g, m, v, mask, hyper }) => {
    const [lr, b1, b2, eps, wd, bc1, bc2, scale] = tf.split(hyper!, 8) as tf.Scalar[];
    const gs = tf.mul(g!, scale!);
    const m1 = tf.add(tf.mul(m!, b1!), tf.mul(gs, tf.sub(1, b1!)));
    const v1 = tf.add(tf.mul(v!, b2!), tf.mul(tf.square(gs), tf.sub(1, b2!)));
    const denom = tf.add(tf.div(tf.sqrt(v1), tf.sqrt(bc2!)), eps!);
    const update = tf.mul(tf.div(m1, denom), tf.div(lr!, bc1!));
    return [tf.sub(tf.sub(p!, update), tf.mul(tf.mul(p!, mask!), tf.mul(lr!, wd!))), m1, v1];
  },
};
