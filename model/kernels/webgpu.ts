/**
 * sinklm's kernels on tfjs's webgpu backend, in WGSL (dispatched by wgsl.ts): each takes the
 * inputs and returns the outputs of the formula of the same name (formula.ts), which stays
 * the reference they are tested against (test/webgpu.test.ts). LayerNorm and its pair, bias
 * + GELU, the cross entropy and AdamW are here; the attention is in webgpu-attention.ts.
 * The matrix product, the bias add and its gradient stay on tfjs's own webgpu kernels (the
 * formula): tfjs's tiled matmul is what this file would otherwise write.
 *
 * Layout: a row kernel runs one workgroup of ROW_THREADS per row and reduces in workgroup
 * memory; an elementwise kernel runs one thread per element; column sums (the gradients of
 * gamma, beta and biases) run in two passes, partial sums over blocks of rows, then their sum.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ATTENTION_KERNELS } from './webgpu-attention.js';
import { dispatch, f32, flatGrid, type WebGPUBackendish } from './wgsl.js';

type Args = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };
export type WebGPUKernel = (a: { inputs: Record<string, tf.TensorInfo>; backend: WebGPUBackendish; attrs: Record<string, unknown> }) => tf.TensorInfo | tf.TensorInfo[];

const ROW_THREADS = 128;
const ELEMENT_THREADS = 256;

/** Workgroup-memory tree sum of `v` over a row's ROW_THREADS threads; every thread gets the total. */
const ROW_SUM = `
var<workgroup> red: array<f32, ${ROW_THREADS}>;
fn rowSum(v: f32, t: u32) -> f32 {
  workgroupBarrier();
  red[t] = v;
  workgroupBarrier();
  for (var s = ${ROW_THREADS / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) { red[t] = red[t] + red[t + s]; }
    workgroupBarrier();
  }
  return red[0];
}
fn rowMax(v: f32, t: u32) -> f32 {
  workgroupBarrier();
  red[t] = v;
  workgroupBarrier();
  for (var s = ${ROW_THREADS / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) { red[t] = max(red[t], red[t + s]); }
    workgroupBarrier();
  }
  return red[0];
}`;

const rowMain = (rows: number) => {
  const g = flatGrid(rows);
  return {
    grid: g.grid,
    head: `@compute @workgroup_size(${ROW_THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let row = ${g.index};
  if (row >= ${rows}u) { return; }`,
  };
};

const elementMain = (n: number) => {
  const g = flatGrid(Math.ceil(n / ELEMENT_THREADS));
  return {
    grid: g.grid,
    head: `@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let i = ${g.index} * ${ELEMENT_THREADS}u + t;
  if (i >= ${n}u) { return; }`,
  };
};

/**
 * LayerNorm of each row of x [N, D], with one or two affines: outputs y1, (y2), xhat, rstd.
 * The second affine is its own elementwise pass over xhat: a shader may bind 8 storage
 * buffers (WebGPU's default), and the pair in one would take 9.
 */
function layerNorm(be: WebGPUBackendish, x: tf.TensorInfo, affines: [tf.TensorInfo, tf.TensorInfo][], eps: number): tf.TensorInfo[] {
  const [N, D] = x.shape as [number, number];
  const m = rowMain(N);
  const body = `${ROW_SUM}
${m.head}
  let o = row * ${D}u;
  var s = 0.0;
  for (var d = t; d < ${D}u; d += ${ROW_THREADS}u) { s += x[o + d]; }
  let mean = rowSum(s, t) / ${f32(D)};
  var q = 0.0;
  for (var d = t; d < ${D}u; d += ${ROW_THREADS}u) { let c = x[o + d] - mean; q += c * c; }
  let r = inverseSqrt(rowSum(q, t) / ${f32(D)} + ${f32(eps)});
  for (var d = t; d < ${D}u; d += ${ROW_THREADS}u) {
    let xh = (x[o + d] - mean) * r;
    xhat[o + d] = xh;
    y[o + d] = xh * gamma[d] + beta[d];
  }
  if (t == 0u) { rstd[row] = r; }
}`;
  const [y, xhat, rstd] = dispatch(be, {
    label: 'SinklmLayerNorm',
    body,
    inputs: [x, ...affines[0]!],
    inputNames: ['x', 'gamma', 'beta'],
    outputs: [{ name: 'y', shape: [N, D] }, { name: 'xhat', shape: [N, D] }, { name: 'rstd', shape: [N] }],
    grid: m.grid,
  });
  if (affines.length === 1) return [y!, xhat!, rstd!];
  const e = elementMain(N * D);
  const [y2] = dispatch(be, {
    label: 'SinklmLayerNormAffine',
    body: `${e.head}
  y[i] = xhat[i] * gamma[i % ${D}u] + beta[i % ${D}u];
}`,
    inputs: [xhat!, ...affines[1]!],
    inputNames: ['xhat', 'gamma', 'beta'],
    outputs: [{ name: 'y', shape: [N, D] }],
    grid: e.grid,
  });
  return [y!, y2!, xhat!, rstd!];
}

/**
 * dx of LayerNorm, rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = sum_k dy_k * gamma_k,
 * then the column sums sum(dy_k * xhat) and sum(dy_k) (dgamma_k, dbeta_k).
 */
function layerNormGrad(be: WebGPUBackendish, xhat: tf.TensorInfo, rstd: tf.TensorInfo, pairs: [tf.TensorInfo, tf.TensorInfo][]): tf.TensorInfo[] {
  const [N, D] = xhat.shape as [number, number];
  const m = rowMain(N);
  const g = pairs.map((_, k) => `dy${k}[o + d] * g${k}[d]`).join(' + ');
  const body = `${ROW_SUM}
${m.head}
  let o = row * ${D}u;
  var a = 0.0;
  var b = 0.0;
  for (var d = t; d < ${D}u; d += ${ROW_THREADS}u) { let gd = ${g}; a += gd; b += gd * xhat[o + d]; }
  let ma = rowSum(a, t) / ${f32(D)};
  let mb = rowSum(b, t) / ${f32(D)};
  let r = rstd[row];
  for (var d = t; d < ${D}u; d += ${ROW_THREADS}u) { dx[o + d] = r * ((${g}) - ma - xhat[o + d] * mb); }
}`;
  const names = pairs.flatMap((_, k) => [`dy${k}`, `g${k}`]);
  const [dx] = dispatch(be, {
    label: 'SinklmLayerNormGrad',
    body,
    inputs: [xhat, rstd, ...pairs.flatMap(([gamma, dy]) => [dy, gamma])],
    inputNames: ['xhat', 'rstd', ...names],
    outputs: [{ name: 'dx', shape: [N, D] }],
    grid: m.grid,
  });
  const sums = columnSums(
    be,
    N,
    D,
    [xhat, ...pairs.map(([, dy]) => dy)],
    pairs.flatMap((_, k) => [`a${k + 1}[i] * a0[i]`, `a${k + 1}[i]`]),
  );
  return [dx!, ...sums];
}

/** Rows summed per workgroup in the first pass of columnSums. */
const COL_ROWS = 256;
const COL_LANES = 4;
const COL_WIDTH = 64;

/**
 * Column sums of several expressions over the rows of [N, D] operands (`a0`, `a1`, ... at
 * flat index `i`): one output [D] per expression. Pass one sums blocks of COL_ROWS rows
 * (64 columns x 4 row lanes a workgroup, reading rows coalesced); pass two sums the blocks.
 */
function columnSums(be: WebGPUBackendish, N: number, D: number, operands: tf.TensorInfo[], exprs: string[]): tf.TensorInfo[] {
  const blocks = Math.ceil(N / COL_ROWS);
  const pass = (rows: number, outRows: number, ins: tf.TensorInfo[], es: string[], per: number) => {
    const colGroups = Math.ceil(D / COL_WIDTH);
    const g = flatGrid(colGroups * outRows);
    const acc = es.map((_, k) => `var s${k} = 0.0;`).join(' ');
    const add = es.map((e, k) => `s${k} += ${e};`).join(' ');
    const store = es
      .map(
        (_, k) => `red[t] = s${k}; workgroupBarrier();
  if (lane == 0u && blk < ${outRows}u && c < ${D}u) { out${k}[blk * ${D}u + c] = red[t] + red[t + ${COL_WIDTH}u] + red[t + ${2 * COL_WIDTH}u] + red[t + ${3 * COL_WIDTH}u]; }
  workgroupBarrier();`,
      )
      .join('\n  ');
    const body = `var<workgroup> red: array<f32, ${COL_WIDTH * COL_LANES}>;
@compute @workgroup_size(${COL_WIDTH * COL_LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let w = ${g.index};
  let blk = w / ${colGroups}u;
  let c = (w % ${colGroups}u) * ${COL_WIDTH}u + t % ${COL_WIDTH}u;
  let lane = t / ${COL_WIDTH}u;
  ${acc}
  if (blk < ${outRows}u && c < ${D}u) {
    let end = min((blk + 1u) * ${per}u, ${rows}u);
    for (var r = blk * ${per}u + lane; r < end; r += ${COL_LANES}u) {
      let i = r * ${D}u + c;
      ${add}
    }
  }
  ${store}
}`;
    return dispatch(be, {
      label: 'SinklmColumnSums',
      body,
      inputs: ins,
      inputNames: ins.map((_, k) => `a${k}`),
      outputs: es.map((_, k) => ({ name: `out${k}`, shape: outRows === 1 ? [D] : [outRows, D] })),
      grid: g.grid,
    });
  };
  // Pass one only reads the operands the expressions name (layout 'auto' drops unused bindings).
  const used = operands.map((_, k) => exprs.some((e) => e.includes(`a${k}[`)));
  const ins = operands.filter((_, k) => used[k]);
  const renumber = new Map(operands.map((_, k) => [k, used.slice(0, k).filter(Boolean).length]));
  const es = exprs.map((e) => e.replace(/a(\d+)\[/g, (_, k: string) => `a${renumber.get(Number(k))}[`));
  const partial = pass(N, blocks, ins, es, COL_ROWS);
  if (blocks === 1) return partial;
  const out = partial.map((p) => pass(blocks, 1, [p], ['a0[i]'], blocks)[0]!);
  for (const p of partial) (be as unknown as tf.KernelBackend).disposeData(p.dataId);
  return out;
}

/** Phi(u) = (1 + erf(u / sqrt 2)) / 2 through erfc's Chebyshev fit (Numerical Recipes' erfcc, 1.2e-7 relative). */
const PHI = `
fn erfcc(z: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * z);
  return t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
}
fn phiCdf(u: f32) -> f32 {
  let e = 0.5 * erfcc(abs(u) * 0.70710678118654752);
  return select(e, 1.0 - e, u >= 0.0);
}`;

function biasGelu(be: WebGPUBackendish, x: tf.TensorInfo, bias: tf.TensorInfo): tf.TensorInfo {
  const n = tf.util.sizeFromShape(x.shape);
  const D = bias.shape[0]!;
  const m = elementMain(n);
  const body = `${PHI}
${m.head}
  let u = x[i] + bias[i % ${D}u];
  y[i] = u * phiCdf(u);
}`;
  return dispatch(be, { label: 'SinklmBiasGelu', body, inputs: [x, bias], inputNames: ['x', 'bias'], outputs: [{ name: 'y', shape: x.shape }], grid: m.grid })[0]!;
}

function biasGeluGrad(be: WebGPUBackendish, dy: tf.TensorInfo, x: tf.TensorInfo, bias: tf.TensorInfo): tf.TensorInfo[] {
  const n = tf.util.sizeFromShape(x.shape);
  const D = bias.shape[0]!;
  const m = elementMain(n);
  const body = `${PHI}
${m.head}
  let u = x[i] + bias[i % ${D}u];
  du[i] = dy[i] * (phiCdf(u) + u * exp(-0.5 * u * u) * 0.39894228040143268);
}`;
  const [du] = dispatch(be, { label: 'SinklmBiasGeluGrad', body, inputs: [dy, x, bias], inputNames: ['dy', 'x', 'bias'], outputs: [{ name: 'du', shape: x.shape }], grid: m.grid });
  const [db] = columnSums(be, n / D, D, [du!], ['a0[i]']);
  return [du!, db!];
}

/** nll = lse - logits[label] and lse = logsumexp of each row of logits [N, V]. */
function xent(be: WebGPUBackendish, logits: tf.TensorInfo, labels: tf.TensorInfo): tf.TensorInfo[] {
  const [N, V] = logits.shape as [number, number];
  const m = rowMain(N);
  const body = `${ROW_SUM}
${m.head}
  let o = row * ${V}u;
  var mx = -3.0e38;
  for (var j = t; j < ${V}u; j += ${ROW_THREADS}u) { mx = max(mx, logits[o + j]); }
  mx = rowMax(mx, t);
  var s = 0.0;
  for (var j = t; j < ${V}u; j += ${ROW_THREADS}u) { s += exp(logits[o + j] - mx); }
  let l = mx + log(rowSum(s, t));
  if (t == 0u) {
    lse[row] = l;
    nll[row] = l - logits[o + u32(labels[row])];
  }
}`;
  return dispatch(be, {
    label: 'SinklmXent',
    body,
    inputs: [logits, labels],
    inputNames: ['logits', 'labels'],
    outputs: [{ name: 'nll', shape: [N] }, { name: 'lse', shape: [N] }],
    grid: m.grid,
  });
}

/** dlogits = dnll * (softmax - onehot), one thread per logit. */
function xentGrad(be: WebGPUBackendish, logits: tf.TensorInfo, labels: tf.TensorInfo, lse: tf.TensorInfo, dnll: tf.TensorInfo): tf.TensorInfo {
  const [N, V] = logits.shape as [number, number];
  const m = elementMain(N * V);
  const body = `${m.head}
  let row = i / ${V}u;
  let hot = select(0.0, 1.0, u32(labels[row]) == i % ${V}u);
  dlogits[i] = dnll[row] * (exp(logits[i] - lse[row]) - hot);
}`;
  return dispatch(be, {
    label: 'SinklmXentGrad',
    body,
    inputs: [logits, labels, lse, dnll],
    inputNames: ['logits', 'labels', 'lse', 'dnll'],
    outputs: [{ name: 'dlogits', shape: [N, V] }],
    grid: m.grid,
  })[0]!;
}

/**
 * AdamW on flat vectors, as the formula: hyper = [lr, beta1, beta2, eps, weight_decay, bc1,
 * bc2, scale]. Two passes, the moments then the parameters: in one it would bind 9 storage
 * buffers, one more than WebGPU's default allows.
 */
function adamW(be: WebGPUBackendish, ins: Record<string, tf.TensorInfo>): tf.TensorInfo[] {
  const n = ins.p!.shape[0]!;
  const m = elementMain(n);
  const hyper = `let lr = hyper[0]; let b1 = hyper[1]; let b2 = hyper[2]; let eps = hyper[3];
  let wd = hyper[4]; let bc1 = hyper[5]; let bc2 = hyper[6]; let scale = hyper[7];`;
  const [m1, v1] = dispatch(be, {
    label: 'SinklmAdamWMoments',
    body: `${m.head}
  ${hyper}
  let gs = g[i] * scale;
  mNext[i] = m[i] * b1 + gs * (1.0 - b1);
  vNext[i] = v[i] * b2 + gs * gs * (1.0 - b2);
}`,
    inputs: [ins.g!, ins.m!, ins.v!, ins.hyper!],
    inputNames: ['g', 'm', 'v', 'hyper'],
    outputs: [{ name: 'mNext', shape: [n] }, { name: 'vNext', shape: [n] }],
    grid: m.grid,
  });
  const [p1] = dispatch(be, {
    label: 'SinklmAdamWStep',
    body: `${m.head}
  ${hyper}
  let denom = sqrt(v1[i]) / sqrt(bc2) + eps;
  pNext[i] = p[i] - (m1[i] / denom) * (lr / bc1) - p[i] * mask[i] * (lr * wd);
}`,
    inputs: [ins.p!, m1!, v1!, ins.mask!, ins.hyper!],
    inputNames: ['p', 'm1', 'v1', 'mask', 'hyper'],
    outputs: [{ name: 'pNext', shape: [n] }],
    grid: m.grid,
  });
  return [p1!, m1!, v1!];
}

/**
 * The embedding's gradient [V, D] from dy [N, D] and ids [N]: one thread per column adds
 * the tokens' rows in token order, so the sums are the same every run (no atomics).
 */
function embeddingGrad(be: WebGPUBackendish, dy: tf.TensorInfo, ids: tf.TensorInfo, V: number): tf.TensorInfo {
  const [N, D] = dy.shape as [number, number];
  const g = flatGrid(Math.ceil(D / 64));
  const body = `@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let d = ${g.index} * 64u + t;
  if (d >= ${D}u) { return; }
  for (var v = 0u; v < ${V}u; v++) { table[v * ${D}u + d] = 0.0; }
  for (var n = 0u; n < ${N}u; n++) {
    let at = u32(ids[n]) * ${D}u + d;
    table[at] = table[at] + dy[n * ${D}u + d];
  }
}`;
  return dispatch(be, { label: 'SinklmEmbeddingGrad', body, inputs: [dy, ids], inputNames: ['dy', 'ids'], outputs: [{ name: 'table', shape: [V, D] }], grid: g.grid })[0]!;
}

/** Kernel name -> its WGSL implementation (the rest run their formula on tfjs's webgpu kernels). */
export const WEBGPU: Record<string, WebGPUKernel> = {
  SinklmLayerNorm: ({ inputs: i, backend, attrs }) => layerNorm(backend, i.x!, [[i.gamma!, i.beta!]], attrs.eps as number),
  SinklmLayerNorm2: ({ inputs: i, backend, attrs }) =>
    layerNorm(
      backend,
      i.x!,
      [
        [i.gamma1!, i.beta1!],
        [i.gamma2!, i.beta2!],
      ],
      attrs.eps as number,
    ),
  SinklmLayerNormGrad: ({ inputs: i, backend }) => layerNormGrad(backend, i.xhat!, i.rstd!, [[i.gamma!, i.dy!]]),
  SinklmLayerNorm2Grad: ({ inputs: i, backend }) =>
    layerNormGrad(backend, i.xhat!, i.rstd!, [
      [i.gamma1!, i.dy1!],
      [i.gamma2!, i.dy2!],
    ]),
  SinklmBiasGelu: ({ inputs: i, backend }) => biasGelu(backend, i.x!, i.bias!),
  SinklmBiasGeluGrad: ({ inputs: i, backend }) => biasGeluGrad(backend, i.dy!, i.x!, i.bias!),
  SinklmXent: ({ inputs: i, backend }) => xent(backend, i.logits!, i.labels!),
  SinklmXentGrad: ({ inputs: i, backend }) => xentGrad(backend, i.logits!, i.labels!, i.lse!, i.dnll!),
  SinklmAdamW: ({ inputs, backend }) => adamW(backend, inputs),
  SinklmEmbeddingGrad: ({ inputs: i, backend, attrs }) => embeddingGrad(backend, i.dy!, i.ids!, attrs.vocab as number),
  ...ATTENTION_KERNELS,
};

/** The tfjs kernel function that runs `name` in WGSL. */
export function webgpuKernelFunc(name: string): tf.KernelFunc {
  const k = WEBGPU[name]!;
  return ((a: Args) => k({ inputs: a.inputs as Record<string, tf.TensorInfo>, backend: a.backend as WebGPUBackendish, attrs: (a.attrs ?? {}) as Record<string, unknown> })) as unknown as tf.KernelFunc;
}
