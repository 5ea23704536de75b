/**
 * The incremental step of GPTNeoX computed on the host: typed arrays and small SIMD
 * WebAssembly kernels (model/kernels.wat) instead of TensorFlow kernels.
 *
 * Streaming feeds one token at a time. For a small model that step is a few hundred tiny
 * kernels (matrix-vector products of 128-wide vectors, a softmax over a few hundred keys),
 * and through TensorFlow each costs ~40-125 us of dispatch whatever its size: measured
 * here, ~480 kernels and 17-35 ms per token for the 4 x 128 ablation model, of which well
 * under 1 ms is arithmetic.
 *
 * It is the same model, not an approximation: the same weights (copied once from the
 * GPTNeoX), the same cache layouts (positions within the cache, the additive mask), the
 * same four sink modes, float32 storage. Only how positions are applied differs: each key
 * is stored rotated once, at its time in the stream, and the query is rotated once per
 * offset between the layout's positions and times (model/cache.ts), so a token costs no
 * rotary work per cached key; the angles are float64, so times in the millions lose
 * nothing. test/hoststep.test.ts checks it against GPTNeoX.step to 2e-5 in every mode,
 * and a 300k-token stream against fresh forwards at the cache's positions. Training,
 * scoring and recompute (full forwards over many tokens, where TensorFlow's batched
 * kernels win) stay on the tensor path; on a GPU the step stays there too
 * (infer/policy.ts decodePath; SINKLM_DECODE=host|tensor overrides).
 */
import { checkPositions, type CacheLayout } from './cache.js';
import { headDim, rotaryDims, type NeoXConfig } from './config.js';
import { hostMemory } from './hostmem.js';
import type { KernelCalls } from './hostpool.js';
import type { GPTNeoX } from './neox.js';
import { rotaryFrequencies } from './ops.js';

/** A cache that keeps keys and values on the host, in hostMemory() (see infer/cache/). */
export interface HostKVCache {
  readonly batch?: number;
  begin(n: number): CacheLayout;
  /**
   * Stores one layer's new keys/values ([B, H, n, hd] float32, keys rotated at the layout's
   * queryTimes: model/cache.ts) and returns the
   * byte offsets in hostMemory() of the blocks attention reads: [B, H, stride, hd], of
   * which the first L slots (L = the layout's keys per stream) are live.
   */
  updateHost(layer: number, k: Float32Array, v: Float32Array): { k: number; v: number; stride: number };
  commit(): void;
  dispose(): void;
}

/** A [rows, cols] matrix (PyTorch's [out, in]) and its bias in host memory, by byte offset (bias 0: none). */
interface HostLinear {
  w: number;
  b: number;
  rows: number;
  cols: number;
}

interface LayerWeights {
  ln1w: Float32Array;
  ln1b: Float32Array;
  ln2w: Float32Array;
  ln2b: Float32Array;
  qkv: HostLinear;
  dense: HostLinear;
  up: HostLinear;
  down: HostLinear;
  sinks: Float32Array | null;
}

/** LayerNorm without its affine part, row by row: (x - mean) / sqrt(var + eps). */
function normalizeRows(x: Float32Array, rows: number, D: number, eps: number, out: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let mean = 0;
    for (let i = 0; i < D; i++) mean += x[o + i]!;
    mean /= D;
    let v = 0;
    for (let i = 0; i < D; i++) {
      const d = x[o + i]! - mean;
      v += d * d;
    }
    const inv = 1 / Math.sqrt(v / D + eps);
    for (let i = 0; i < D; i++) out[o + i] = (x[o + i]! - mean) * inv;
  }
}

function affine(xhat: Float32Array, w: Float32Array, b: Float32Array, D: number, out: Float32Array): void {
  for (let i = 0; i < xhat.length; i++) out[i] = xhat[i]! * w[i % D]! + b[i % D]!;
}

export class HostStep {
  readonly config: NeoXConfig;
  /** The model's weightsVersion these weights were copied at. */
  readonly version: number;
  private readonly mem = hostMemory();
  private readonly layers: LayerWeights[];
  private readonly embedIn: Float32Array;
  private readonly lnFw: Float32Array;
  private readonly lnFb: Float32Array;
  private readonly embedOut: HostLinear;
  /** Rotary's angular frequencies (float32 values, as HF's inv_freq). */
  private readonly freq: Float64Array;
  /** Blocks of host memory holding this step's weights. */
  private readonly blocks: number[] = [];
  /** Activation blocks, kept while big enough for the step's rows, keys and runs of keys. */
  private scratch: { rows: number; L: number; R: number; at: Scratch } | null = null;

  /** Copies the model's weights out of TensorFlow once; later changes to them are not seen. */
  constructor(model: GPTNeoX) {
    const c = model.config;
    this.config = c;
    this.version = model.weightsVersion;
    const w = (name: string) => model.params.get(name)!.dataSync() as Float32Array;
    const put = (data: Float32Array) => {
      const at = this.mem.alloc(data.length);
      this.blocks.push(at);
      this.mem.f32(at, data.length).set(data);
      return at;
    };
    const lin = (name: string, rows: number, cols: number, bias = true): HostLinear => ({
      w: put(w(`${name}.weight`)),
      b: bias ? put(w(`${name}.bias`)) : 0,
      rows,
      cols,
    });
    const D = c.hidden_size;
    const F = c.intermediate_size;
    this.embedIn = w('gpt_neox.embed_in.weight');
    this.lnFw = w('gpt_neox.final_layer_norm.weight');
    this.lnFb = w('gpt_neox.final_layer_norm.bias');
    this.embedOut = lin('embed_out', c.vocab_size, D, false);
    this.layers = Array.from({ length: c.num_hidden_layers }, (_, i) => {
      const p = `gpt_neox.layers.${i}`;
      return {
        ln1w: w(`${p}.input_layernorm.weight`),
        ln1b: w(`${p}.input_layernorm.bias`),
        ln2w: w(`${p}.post_attention_layernorm.weight`),
        ln2b: w(`${p}.post_attention_layernorm.bias`),
        qkv: lin(`${p}.attention.query_key_value`, 3 * D, D),
        dense: lin(`${p}.attention.dense`, D, D),
        up: lin(`${p}.mlp.dense_h_to_4h`, F, D),
        down: lin(`${p}.mlp.dense_4h_to_h`, D, F),
        sinks: c.sink_mode === 'logit' ? w(`${p}.attention.sinks`) : null,
      };
    });
    this.freq = rotaryFrequencies(rotaryDims(c), c.rotary_emb_base);
  }

  private scratchFor(rows: number, L: number, R: number): Scratch {
    if (this.scratch && this.scratch.rows >= rows && this.scratch.L >= L && this.scratch.R >= R) return this.scratch.at;
    if (this.scratch) for (const at of Object.values(this.scratch.at)) this.mem.release(at);
    const c = this.config;
    const D = c.hidden_size;
    const a = (n: number) => this.mem.alloc(n);
    const at: Scratch = {
      a: a(rows * D),
      qkv: a(rows * 3 * D),
      ctx: a(rows * D),
      attn: a(rows * D),
      up: a(rows * c.intermediate_size),
      mlp: a(rows * D),
      logits: a(rows * c.vocab_size),
      q: a(rows * c.num_attention_heads * R * headDim(c)),
      p: a(L),
      p2: a(L),
      bias: a(rows * L),
    };
    this.scratch = { rows, L, R, at };
    return at;
  }

  /**
   * y = x W^T + b for `rows` rows, all in host memory; the weights are read once for all
   * rows. One row's matrix, when large enough to pay for it, is split between the threads.
   */
  private linear(l: HostLinear, x: number, y: number, rows: number): void {
    if (rows > 1) this.mem.matrows(x, rows, l.w, l.b, y, l.cols, l.rows);
    else if (l.rows * l.cols >= SPLIT_MATRIX) this.mem.matvecSplit(x, l.w, l.cols, l.b, y, l.cols, l.rows);
    else this.mem.matvec(x, l.w, l.cols, l.b, y, l.cols, l.rows);
  }

  /**
   * n new tokens of each of the cache's B streams (ids stream-major, [B * n]) -> logits
   * [B * n, V]; the cache has taken the new keys and values.
   */
  step(ids: ArrayLike<number>, cache: HostKVCache): Float32Array {
    const c = this.config;
    const mem = this.mem;
    const B = cache.batch ?? 1;
    const layout = cache.begin(ids.length / B);
    const n = ids.length / B;
    const L = layout.keyPositions.length / B;
    const rows = B * n;
    const D = c.hidden_size;
    const H = c.num_attention_heads;
    const hd = headDim(c);
    const F = c.intermediate_size;
    const V = c.vocab_size;
    checkPositions(layout, c.max_position_embeddings);
    const x = new Float32Array(rows * D);
    for (let r = 0; r < rows; r++) {
      const id = ids[r]!;
      if (!(id >= 0 && id < V)) throw new Error(`token id ${id} outside the vocabulary of ${V}`);
      x.set(this.embedIn.subarray(id * D, (id + 1) * D), r * D);
    }
    const keyAngles = Array.from({ length: rows }, (_, r) => this.angles(layout.queryTimes[r]!));
    const runs = this.runsOf(layout, B, n, L);
    const at = this.scratchFor(rows, L, Math.max(...runs.map((rr) => rr.length)));
    mem.f32(at.bias, rows * L).set(layout.bias);
    // A row whose mask is all zeros (every key visible: a one-token step) needs none.
    const masks = Array.from({ length: rows }, (_, r) => (layout.bias.subarray(r * L, (r + 1) * L).some((v) => v !== 0) ? at.bias + r * L * 4 : 0));
    const xhat = new Float32Array(rows * D);
    const q = new Float32Array(rows * D);
    const kNew = new Float32Array(rows * D);
    const vNew = new Float32Array(rows * D);
    const scale = 1 / Math.sqrt(hd);

    for (let li = 0; li < c.num_hidden_layers; li++) {
      const lw = this.layers[li]!;
      normalizeRows(x, rows, D, c.layer_norm_eps, xhat);
      affine(xhat, lw.ln1w, lw.ln1b, D, mem.f32(at.a, rows * D));
      this.linear(lw.qkv, at.a, at.qkv, rows);
      // Split the per-head [q|k|v] blocks into q [rows, H, hd] and k/v [B, H, n, hd].
      const qkv = mem.f32(at.qkv, rows * 3 * D);
      for (let b = 0; b < B; b++) {
        for (let i = 0; i < n; i++) {
          const r = b * n + i;
          for (let h = 0; h < H; h++) {
            const src = r * 3 * D + h * 3 * hd;
            const dst = ((b * H + h) * n + i) * hd;
            for (let d = 0; d < hd; d++) {
              q[(r * H + h) * hd + d] = qkv[src + d]! * scale;
              kNew[dst + d] = qkv[src + hd + d]!;
              vNew[dst + d] = qkv[src + 2 * hd + d]!;
            }
          }
        }
      }
      // Each new key is rotated once, at its time; the cache keeps it so.
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          for (let i = 0; i < n; i++) {
            const o = ((b * H + h) * n + i) * hd;
            rotate(kNew, o, kNew, o, keyAngles[b * n + i]!, hd);
          }
        }
      }
      // The cache may grow host memory here: views are taken again after it.
      const kv = cache.updateHost(li, kNew, vNew);
      this.attend(q, kv, runs, masks, lw.sinks, B, n, L, at);
      this.linear(lw.dense, at.ctx, at.attn, rows);
      affine(xhat, lw.ln2w, lw.ln2b, D, mem.f32(at.a, rows * D));
      this.linear(lw.up, at.a, at.up, rows);
      mem.gelu(at.up, rows * F, c.hidden_act === 'gelu_new');
      this.linear(lw.down, at.up, at.mlp, rows);
      const attn = mem.f32(at.attn, rows * D);
      const mlp = mem.f32(at.mlp, rows * D);
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + attn[i]! + mlp[i]!;
    }
    normalizeRows(x, rows, D, c.layer_norm_eps, xhat);
    affine(xhat, this.lnFw, this.lnFb, D, mem.f32(at.a, rows * D));
    this.linear(this.embedOut, at.a, at.logits, rows);
    const logits = mem.f32(at.logits, rows * V).slice();
    cache.commit();
    return logits;
  }

  /** cos then sin of each rotary frequency at position p (float64 angles: any p is exact to ~1e-16 relative). */
  private angles(p: number): Float64Array {
    const half = this.freq.length;
    const cs = new Float64Array(2 * half);
    for (let f = 0; f < half; f++) {
      cs[f] = Math.cos(p * this.freq[f]!);
      cs[half + f] = Math.sin(p * this.freq[f]!);
    }
    return cs;
  }

  /**
   * For each query row, its key slots cut into runs of one offset (a key's time minus its
   * position, model/cache.ts), each with the angles to rotate the query at: its position
   * plus that offset. StreamingLLM gives two runs (sinks, then the window), dense one.
   */
  private runsOf(layout: CacheLayout, B: number, n: number, L: number): KeyRun[][] {
    return Array.from({ length: B * n }, (_, r) => {
      const b = Math.floor(r / n);
      const out: KeyRun[] = [];
      let offset = NaN;
      for (let j = 0; j < L; j++) {
        const o = layout.keyTimes[b * L + j]! - layout.keyPositions[b * L + j]!;
        if (o !== offset) {
          out.push({ from: j, to: j + 1, angles: this.angles(layout.queryPositions[r]! + o) });
          offset = o;
        } else out[out.length - 1]!.to = j + 1;
      }
      return out;
    });
  }

  /**
   * Each query's attention over the cache's keys (stored rotated at their times), into
   * at.ctx: per run of keys, the query rotated at its angles and one SIMD matvec of the
   * whole head over the run's keys; then the SIMD softmax with the mask and the implicit
   * sink, and the SIMD weighted sum of the values. The (row, head) units are split between
   * the threads when there are keys enough to pay for it; each unit is the same calls on
   * either, so the same bits.
   */
  private attend(
    q: Float32Array,
    kv: { k: number; v: number; stride: number },
    runs: KeyRun[][],
    masks: number[],
    sinkLogits: Float32Array | null,
    B: number,
    n: number,
    L: number,
    at: Scratch,
  ): void {
    const c = this.config;
    const mem = this.mem;
    const H = c.num_attention_heads;
    const hd = headDim(c);
    const mode = c.sink_mode;
    const units = B * n * H;
    const R = Math.max(...runs.map((rr) => rr.length));
    // Every unit's query, rotated at each of its runs' angles: [units, R, hd].
    const qr = mem.f32(at.q, units * R * hd);
    for (let u = 0; u < units; u++) {
      const r = Math.floor(u / H);
      runs[r]!.forEach((run, j) => rotate(q, u * hd, qr, (u * R + j) * hd, run.angles, hd));
    }
    const unit = (k: KernelCalls, u: number, p: number) => {
      const r = Math.floor(u / H);
      const h = u % H;
      const block = (Math.floor(r / n) * H + h) * kv.stride * hd;
      runs[r]!.forEach((run, j) =>
        k.matvec(at.q + (u * R + j) * hd * 4, kv.k + (block + run.from * hd) * 4, hd, 0, p + run.from * 4, hd, run.to - run.from),
      );
      const extra = mode === 'softmax1' ? 0 : mode === 'logit' ? sinkLogits![h]! : -Infinity;
      k.softmax(p, masks[r]!, L, extra);
      k.wsum(p, kv.v + block * 4, hd, at.ctx + u * hd * 4, hd, L);
    };
    if (units > 1 && L >= SPLIT_KEYS && mem.threads > 1) {
      const split = Math.ceil(units / 2);
      mem.both(
        (k) => {
          for (let u = split; u < units; u++) unit(k, u, at.p2);
        },
        (k) => {
          for (let u = 0; u < split; u++) unit(k, u, at.p);
        },
      );
    } else for (let u = 0; u < units; u++) unit(mem, u, at.p);
  }

  /** Gives back the host memory of the weights and activations; the step cannot run afterwards. */
  dispose(): void {
    for (const at of this.blocks) this.mem.release(at);
    if (this.scratch) for (const at of Object.values(this.scratch.at)) this.mem.release(at);
    this.blocks.length = 0;
    this.scratch = null;
  }
}

/** Key slots [from, to) of one offset, and the query's rotary angles for them (HostStep.angles). */
interface KeyRun {
  from: number;
  to: number;
  angles: Float64Array;
}

/**
 * Rotary on one head of hd dims: dst[o2 ..] = x * cos + rotate_half(x) * sin on the first
 * `angles.length` dims (cos, sin: HostStep.angles), x on the rest; x = src[o1 ..], which
 * may be dst. Computed in float64, stored in float32.
 */
function rotate(src: Float32Array, o1: number, dst: Float32Array, o2: number, angles: Float64Array, hd: number): void {
  const half = angles.length / 2;
  for (let f = 0; f < half; f++) {
    const x1 = src[o1 + f]!;
    const x2 = src[o1 + f + half]!;
    const cos = angles[f]!;
    const sin = angles[half + f]!;
    dst[o2 + f] = x1 * cos - x2 * sin;
    dst[o2 + f + half] = x2 * cos + x1 * sin;
  }
  if (src !== dst || o1 !== o2) for (let d = 2 * half; d < hd; d++) dst[o2 + d] = src[o1 + d]!;
}

interface Scratch {
  a: number;
  qkv: number;
  ctx: number;
  attn: number;
  up: number;
  mlp: number;
  logits: number;
  q: number;
  p: number;
  /** The helper thread's scores. */
  p2: number;
  bias: number;
}

/** A one-row matrix product is split between the threads from this many weights (64 KB). */
const SPLIT_MATRIX = 16384;
/**
 * Attention is split between the threads from this many keys per head (64 KB of keys and
 * 64 KB of values at 32 dims: several microseconds a head, against ~2-5 us of hand-over;
 * at 256 keys two threads measured no faster than one).
 */
const SPLIT_KEYS = 512;

/**
 * The model's HostStep (its weights are copied once); inference only. A copy made before
 * the weights last changed (assign, an optimizer step) is dropped and made afresh, so the
 * host step never runs on stale weights.
 */
export function hostStepOf(model: GPTNeoX): HostStep {
  const held = model.derived;
  if (held instanceof HostStep && held.version === model.weightsVersion) return held;
  held?.dispose();
  const s = new HostStep(model);
  model.derived = s;
  return s;
}

/** Whether the model holds a HostStep of its current weights (its copy is in host memory). */
export function hasHostStep(model: GPTNeoX): boolean {
  return model.derived instanceof HostStep && model.derived.version === model.weightsVersion;
}

/** Frees a model's HostStep, if it has one (GPTNeoX.dispose frees it too). */
export function releaseHostStep(model: GPTNeoX): void {
  model.derived?.dispose();
  model.derived = null;
}
