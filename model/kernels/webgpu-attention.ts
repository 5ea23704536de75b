/**
 * The causal attention of the four sink modes in WGSL, forward and backward, FlashAttention-2
 * style: the [B, H, T, T] scores are never stored. Each kernel returns exactly what its
 * formula (formula.ts `SinklmAttention`, `SinklmAttentionGrad`) does, and is tested against
 * it (test/webgpu-attention.test.ts).
 *
 * Layout: a workgroup runs TILE threads on one (batch, head), a thread per row; the rows it
 * pairs with come a tile at a time through workgroup memory (two [TILE, hd] tiles, at most
 * 16 KB: WebGPU's default limit), rotated as they load.
 * - Forward: a thread per query row i, over the key tiles up to the causal bound; an online
 *   softmax (running max m and sum l, starting at the sink's logit with l = 1 in modes 1
 *   and 2, so the max includes it) accumulates the context in private memory.
 * - Backward, from p = exp(s - lse) recomputed: (lse_i, D_i = dctx_i . ctx_i) paired per row,
 *   then a thread per query row for dq (over key tiles j <= i), then a thread per key row
 *   for dk and dv (over query tiles i >= j), writing the other columns of the same dqkv;
 *   then d sink (a per-head sum over D in mode 2, zeros otherwise). Each shader binds at
 *   most 8 storage buffers (WebGPU's default per-stage limit).
 * head_dim, the rotary dims and the sizes are compiled in (one pipeline per shape).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUKernel } from './webgpu.js';
import { dispatch, f32, flatGrid, type WebGPUBackendish } from './wgsl.js';

/** Floats of workgroup memory the two row tiles may take (16 KB, WebGPU's default limit). */
const TILE_FLOATS = 4096;
const MAX_TILE = 64;
const SINK_THREADS = 64;

/** Rows per tile for head_dim hd: a power of two, at most 64, with 2 * TILE * hd floats in budget. */
export function attentionTile(hd: number): number {
  let t = MAX_TILE;
  while (t > 1 && 2 * t * hd > TILE_FLOATS) t /= 2;
  return t;
}

interface Shape {
  B: number;
  T: number;
  H: number;
  hd: number;
  rd: number;
  mode: number;
  tile: number;
  /** Row tiles per (batch, head). */
  tiles: number;
}

function shapeOf(qkv: tf.TensorInfo, attrs: Record<string, unknown>): Shape {
  const B = attrs.batch as number;
  const H = attrs.heads as number;
  const rd = attrs.rotary_dims as number;
  const mode = attrs.mode as number;
  const [BT, C] = qkv.shape as [number, number];
  const T = BT / B;
  const hd = C / (3 * H);
  if (!Number.isInteger(T) || !Number.isInteger(hd) || rd % 2 !== 0 || rd > hd) throw new Error(`SinklmAttention: bad shape qkv [${BT}, ${C}] for batch ${B}, heads ${H}, rotary ${rd}`);
  const tile = attentionTile(hd);
  return { B, T, H, hd, rd, mode, tile, tiles: Math.ceil(T / tile) };
}

/**
 * Constants and helpers every attention shader shares: `at(b, t, h, part, d)` indexes qkv
 * (part 0 q, 1 k, 2 v), `rowAt(b, t, h, d)` a [B*T, H*hd] tensor (ctx, dctx); `rotQ`/`rotK`
 * rotate element d of the q/k at `base` (its qkv index of element 0), position t.
 */
function common(s: Shape, tables: boolean): string {
  const rot = (name: string, cos: string, sin: string) => `
fn ${name}(base: u32, t: u32, d: u32) -> f32 {
  var r = 0.0;
  if (d < HALF) { r = -qkv[base + d + HALF]; } else if (d < RD) { r = qkv[base + d - HALF]; }
  return qkv[base + d] * ${cos}[t * HD + d] + r * ${sin}[t * HD + d];
}`;
  return `
const T = ${s.T}u;
const H = ${s.H}u;
const HD = ${s.hd}u;
const RD = ${s.rd}u;
const HALF = ${s.rd / 2}u;
const TILE = ${s.tile}u;
const NT = ${s.tiles}u;
const QKV_ROW = ${3 * s.H * s.hd}u;
const ROW = ${s.H * s.hd}u;
fn at(b: u32, t: u32, h: u32, part: u32, d: u32) -> u32 { return (b * T + t) * QKV_ROW + h * 3u * HD + part * HD + d; }
fn rowAt(b: u32, t: u32, h: u32, d: u32) -> u32 { return (b * T + t) * ROW + h * HD + d; }
${tables ? rot('rotQ', 'qcos', 'qsin') + rot('rotK', 'kcos', 'ksin') : ''}
var<workgroup> ta: array<f32, ${s.tile * s.hd}>;
var<workgroup> tb: array<f32, ${s.tile * s.hd}>;`;
}

/** The workgroup's (b, h, tile) from its flat index; `row` is this thread's row of the tile. */
function head(s: Shape): { grid: [number, number, number]; code: string } {
  const groups = s.B * s.H * s.tiles;
  const g = flatGrid(groups);
  return {
    grid: g.grid,
    code: `@compute @workgroup_size(${s.tile})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let w = ${g.index};
  if (w >= ${groups}u) { return; }
  let bh = w / NT;
  let tile = w % NT;
  let b = bh / H;
  let h = bh % H;
  let row = tile * TILE + tid;
  let live = row < T;
  let r0 = min(row, T - 1u);`,
  };
}

/**
 * Loads key tile `kt` into workgroup memory: ta = rotated k, tb = v (zeros past T). Runs
 * between two barriers.
 */
const LOAD_KV = `
    workgroupBarrier();
    for (var e = tid; e < TILE * HD; e += TILE) {
      let j = kt * TILE + e / HD;
      let d = e % HD;
      var kv = 0.0;
      var vv = 0.0;
      if (j < T) {
        kv = rotK(at(b, j, h, 1u, 0u), j, d);
        vv = qkv[at(b, j, h, 2u, d)];
      }
      ta[e] = kv;
      tb[e] = vv;
    }
    workgroupBarrier();`;

/** g un-rotated with the tables `cos`/`sin` at position `pos`, element d: g c + rotateHalfT(g s). */
const unrotate = (g: string, cos: string, sin: string, pos: string) => `
    var u = 0.0;
    if (d < HALF) { u = ${g}[d + HALF] * ${sin}[${pos} * HD + d + HALF]; } else if (d < RD) { u = -${g}[d - HALF] * ${sin}[${pos} * HD + d - HALF]; }
    let val = ${g}[d] * ${cos}[${pos} * HD + d] + u;`;

function forward(be: WebGPUBackendish, ins: Record<string, tf.TensorInfo>, attrs: Record<string, unknown>): tf.TensorInfo[] {
  const s = shapeOf(ins.qkv!, attrs);
  const hd = head(s);
  // The sink's logit starts the running max, and its exp(0) = 1 the sum (modes 1, 2).
  const start = s.mode === 2 ? 'var m = sink[h];\n  var l = 1.0;' : s.mode === 1 ? 'var m = 0.0;\n  var l = 1.0;' : `var m = ${f32(-3e38)};\n  var l = 0.0;`;
  const body = `${common(s, true)}
${hd.code}
  var q: array<f32, ${s.hd}>;
  var acc: array<f32, ${s.hd}>;
  let qb = at(b, r0, h, 0u, 0u);
  for (var d = 0u; d < HD; d++) { q[d] = rotQ(qb, r0, d); acc[d] = 0.0; }
  ${start}
  for (var kt = 0u; kt <= tile; kt++) {
    ${LOAD_KV}
    let n = select(TILE, tid + 1u, kt == tile);
    for (var r = 0u; r < n; r++) {
      var sc = 0.0;
      for (var d = 0u; d < HD; d++) { sc += q[d] * ta[r * HD + d]; }
      if (sc > m) {
        let c = exp(m - sc);
        l *= c;
        for (var d = 0u; d < HD; d++) { acc[d] *= c; }
        m = sc;
      }
      let p = exp(sc - m);
      l += p;
      for (var d = 0u; d < HD; d++) { acc[d] += p * tb[r * HD + d]; }
    }
  }
  if (live) {
    for (var d = 0u; d < HD; d++) { ctx[rowAt(b, row, h, d)] = acc[d] / l; }
    lse[bh * T + row] = m + log(l);
  }
}`;
  const names = ['qkv', 'qcos', 'qsin', 'kcos', 'ksin', ...(s.mode === 2 ? ['sink'] : [])];
  return dispatch(be, {
    label: 'SinklmAttention',
    body,
    inputs: names.map((n) => ins[n]!),
    inputNames: names,
    outputs: [
      { name: 'ctx', shape: [s.B * s.T, s.H * s.hd] },
      { name: 'lse', shape: [s.B, s.H, s.T] },
    ],
    grid: hd.grid,
  });
}

function backward(be: WebGPUBackendish, ins: Record<string, tf.TensorInfo>, attrs: Record<string, unknown>): tf.TensorInfo[] {
  const s = shapeOf(ins.qkv!, attrs);
  const hd = head(s);
  const tables = ['qkv', 'qcos', 'qsin', 'kcos', 'ksin'];

  // stats = (lse_i, D_i) per (b, h, i), D_i = dctx_i . ctx_i, a thread each: lse and D in
  // one buffer keeps the next two kernels at 8 storage buffers.
  const rows = s.B * s.H * s.T;
  const dg = flatGrid(Math.ceil(rows / SINK_THREADS));
  const [D] = dispatch(be, {
    label: 'SinklmAttentionGrad.stats',
    body: `@compute @workgroup_size(${SINK_THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let e = ${dg.index} * ${SINK_THREADS}u + tid;
  if (e >= ${rows}u) { return; }
  let i = e % ${s.T}u;
  let bh = e / ${s.T}u;
  let o = ((bh / ${s.H}u) * ${s.T}u + i) * ${s.H * s.hd}u + (bh % ${s.H}u) * ${s.hd}u;
  var acc = 0.0;
  for (var d = 0u; d < ${s.hd}u; d++) { acc += dctx[o + d] * ctx[o + d]; }
  stats[2u * e] = lse[e];
  stats[2u * e + 1u] = acc;
}`,
    inputs: [ins.ctx!, ins.dctx!, ins.lse!],
    inputNames: ['ctx', 'dctx', 'lse'],
    outputs: [{ name: 'stats', shape: [s.B, s.H, s.T, 2] }],
    grid: dg.grid,
  });

  // dq, a thread per query row, over the key tiles j <= i: ta = rotated k, tb = v.
  const dqBody = `${common(s, true)}
${hd.code}
  var q: array<f32, ${s.hd}>;
  var dO: array<f32, ${s.hd}>;
  var g: array<f32, ${s.hd}>;
  let qb = at(b, r0, h, 0u, 0u);
  for (var d = 0u; d < HD; d++) {
    q[d] = rotQ(qb, r0, d);
    dO[d] = dctx[rowAt(b, r0, h, d)];
    g[d] = 0.0;
  }
  let li = stats[2u * (bh * T + r0)];
  let Di = stats[2u * (bh * T + r0) + 1u];
  for (var kt = 0u; kt <= tile; kt++) {
    ${LOAD_KV}
    let n = select(TILE, tid + 1u, kt == tile);
    for (var r = 0u; r < n; r++) {
      var sc = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < HD; d++) { sc += q[d] * ta[r * HD + d]; dp += dO[d] * tb[r * HD + d]; }
      let ds = exp(sc - li) * (dp - Di);
      for (var d = 0u; d < HD; d++) { g[d] += ds * ta[r * HD + d]; }
    }
  }
  if (live) {
    for (var d = 0u; d < HD; d++) {
      ${unrotate('g', 'qcos', 'qsin', 'row')}
      dqkv[at(b, row, h, 0u, d)] = val;
    }
  }
}`;
  const [dqkv] = dispatch(be, {
    label: 'SinklmAttentionGrad.dq',
    body: dqBody,
    inputs: [...tables.map((n) => ins[n]!), ins.dctx!, D!],
    inputNames: [...tables, 'dctx', 'stats'],
    outputs: [{ name: 'dqkv', shape: ins.qkv!.shape }],
    grid: hd.grid,
  });

  // dk and dv, a thread per key row j, over the query tiles i >= j: ta = rotated q, tb = dctx.
  const dkvBody = `${common(s, true)}
${hd.code}
  var k: array<f32, ${s.hd}>;
  var v: array<f32, ${s.hd}>;
  var gk: array<f32, ${s.hd}>;
  var gv: array<f32, ${s.hd}>;
  let kb = at(b, r0, h, 1u, 0u);
  for (var d = 0u; d < HD; d++) {
    k[d] = rotK(kb, r0, d);
    v[d] = qkv[at(b, r0, h, 2u, d)];
    gk[d] = 0.0;
    gv[d] = 0.0;
  }
  for (var qt = tile; qt < NT; qt++) {
    workgroupBarrier();
    for (var e = tid; e < TILE * HD; e += TILE) {
      let i = qt * TILE + e / HD;
      let d = e % HD;
      var qv = 0.0;
      var ov = 0.0;
      if (i < T) {
        qv = rotQ(at(b, i, h, 0u, 0u), i, d);
        ov = dctx[rowAt(b, i, h, d)];
      }
      ta[e] = qv;
      tb[e] = ov;
    }
    workgroupBarrier();
    let r1 = min(TILE, T - qt * TILE);
    for (var r = select(0u, tid, qt == tile); r < r1; r++) {
      let i = bh * T + qt * TILE + r;
      var sc = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < HD; d++) { sc += ta[r * HD + d] * k[d]; dp += tb[r * HD + d] * v[d]; }
      let p = exp(sc - stats[2u * i]);
      let ds = p * (dp - stats[2u * i + 1u]);
      for (var d = 0u; d < HD; d++) {
        gv[d] += p * tb[r * HD + d];
        gk[d] += ds * ta[r * HD + d];
      }
    }
  }
  if (live) {
    for (var d = 0u; d < HD; d++) {
      ${unrotate('gk', 'kcos', 'ksin', 'row')}
      dqkv[at(b, row, h, 1u, d)] = val;
      dqkv[at(b, row, h, 2u, d)] = gv[d];
    }
  }
}`;
  const dkvNames = [...tables, 'dctx', 'stats'];
  dispatch(be, {
    label: 'SinklmAttentionGrad.dkv',
    body: dkvBody,
    inputs: [...tables.map((n) => ins[n]!), ins.dctx!, D!],
    inputNames: dkvNames,
    outputs: [{ name: 'dqkv', shape: ins.qkv!.shape }],
    grid: hd.grid,
    into: [dqkv],
  });

  const dsink = sinkGrad(be, s, ins.sink!, D!);
  (be as unknown as tf.KernelBackend).disposeData(D!.dataId);
  return [dqkv!, dsink];
}

/** d sink_h = -sum_{b,i} exp(sink_h - lse_bhi) D_bhi in mode 2 (a workgroup per head); zeros otherwise. */
function sinkGrad(be: WebGPUBackendish, s: Shape, sink: tf.TensorInfo, stats: tf.TensorInfo): tf.TensorInfo {
  if (s.mode !== 2) {
    const n = tf.util.sizeFromShape(sink.shape);
    const g = flatGrid(Math.ceil(n / SINK_THREADS));
    return dispatch(be, {
      label: 'SinklmAttentionGrad.dsink',
      body: `@compute @workgroup_size(${SINK_THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let i = ${g.index} * ${SINK_THREADS}u + tid;
  if (i < ${n}u) { dsink[i] = 0.0; }
}`,
      inputs: [],
      inputNames: [],
      outputs: [{ name: 'dsink', shape: sink.shape }],
      grid: g.grid,
    })[0]!;
  }
  const g = flatGrid(s.H);
  const body = `var<workgroup> red: array<f32, ${SINK_THREADS}>;
@compute @workgroup_size(${SINK_THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = ${g.index};
  if (h >= ${s.H}u) { return; }
  let z = sink[h];
  var acc = 0.0;
  for (var e = tid; e < ${s.B * s.T}u; e += ${SINK_THREADS}u) {
    let i = ((e / ${s.T}u) * ${s.H}u + h) * ${s.T}u + e % ${s.T}u;
    acc += exp(z - stats[2u * i]) * stats[2u * i + 1u];
  }
  red[tid] = acc;
  workgroupBarrier();
  for (var k = ${SINK_THREADS / 2}u; k > 0u; k = k >> 1u) {
    if (tid < k) { red[tid] += red[tid + k]; }
    workgroupBarrier();
  }
  if (tid == 0u) { dsink[h] = -red[0]; }
}`;
  return dispatch(be, {
    label: 'SinklmAttentionGrad.dsink',
    body,
    inputs: [sink, stats],
    inputNames: ['sink', 'stats'],
    outputs: [{ name: 'dsink', shape: sink.shape }],
    grid: g.grid,
  })[0]!;
}

export const ATTENTION_KERNELS: Record<string, WebGPUKernel> = {
  SinklmAttention: ({ inputs, backend, attrs }) => forward(backend, inputs, attrs),
  SinklmAttentionGrad: ({ inputs, backend, attrs }) => backward(backend, inputs, attrs),
};
