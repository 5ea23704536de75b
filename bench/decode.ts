/**
 * Decoding latency: per-token time and memory of each streaming policy at each cache size,
 * and a long stream through `sinks` that shows whether time and memory stay flat.
 *
 * A row measures the steady state of its policy at cache size C, not the ramp-up:
 *   sinks / window  the cache is first filled to C (in chunks; SinkCache takes a prefill
 *                   while nothing is evicted), then every timed token evicts one
 *   dense           filled so that the last timed token attends to exactly C keys
 *   recompute       every token re-runs the model over a full window of C tokens
 * A timed token is what streaming does per token: the model's cached step on the decode
 * path streaming uses (CachedPolicy.feed is exactly stepOn(decodePath(), ...)), or for
 * recompute RecomputePolicy.feed's forward over the window, plus reading the logits back
 * (sampling or scoring needs them).
 */
import * as os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import seedrandom from 'seedrandom';
import { backendInfo, deviceCounts } from '../core/backend.js';
import { progressBar } from '../core/progress.js';
import { DenseCache } from '../infer/cache/dense.js';
import { SinkCache } from '../infer/cache/sinks.js';
import { decodePath, makePolicy, parseCache, stepOn, type DecodePath, type PolicyName } from '../infer/policy.js';
import { headDim, type NeoXConfig } from '../model/config.js';
import { hostMemory, hostWeightBytes } from '../model/hostmem.js';
import type { GPTNeoX } from '../model/neox.js';
import { profileKernels, type KernelStat } from './profile.js';
import { median } from './train.js';

export interface DecodeRow {
  policy: PolicyName;
  /** Where the cached step ran (host typed arrays or backend kernels); recompute is always 'tensor'. */
  decode: DecodePath;
  /** Keys per token: S + W for sinks, W for window and recompute, the keys reached for dense. */
  cache: number;
  /** "S+W" as stream-eval writes it. */
  cache_spec: string;
  ms_per_token: number;
  ms_median: number;
  /** Resident set of the whole process after the row (high-water marks of earlier rows stay). */
  rss_mb: number;
  /** Bytes held in tensors (weights + cache) after the row: the part this row owns. */
  tensor_mb: number;
  /** Keys the last timed token attended to. */
  kv_tokens: number;
  tokens: number;
  warmup: number;
  /** Kernels run for one token (tf.profile), and the ones that took longest. */
  ops_per_token: number;
  /** GPU dispatches (webgpu) and device-to-host reads of one profiled token; on cached rows. */
  dispatches_per_token?: number;
  reads_per_token?: number;
  top_kernels: KernelStat[];
  /** Bytes one token must read at least once: the weights the step multiplies by, and the keys and values of every layer. */
  bytes_per_token: number;
  /** The time to read those bytes once, measured in this process and run (readBoundMs). */
  read_bound_ms: number;
  /** ms_median over read_bound_ms: how far the step is from the memory-read bound. */
  over_bound: number;
}

export interface DecodeRatio {
  cache: number;
  /** recompute over sinks, on the medians (robust when other processes share the cores). */
  recompute_over_sinks: number;
  recompute_over_sinks_mean: number;
}

export interface DecodeBenchOptions {
  caches: number[];
  policies: PolicyName[];
  /** Sink tokens S of the sinks policy (the paper's 4). */
  sinks: number;
  /** Timed tokens per row for the cached policies. */
  tokens: number;
  /** Timed tokens per row for recompute (each costs a forward over the whole window). */
  recomputeTokens: number;
  warmup: number;
  seed?: number;
  log?: (line: string) => void;
}

/** The cache spec of a policy at C keys per token. */
export function cacheSpecFor(policy: PolicyName, C: number, sinks: number): { sinks: number; window: number; label: string } {
  const S = policy === 'sinks' ? Math.min(sinks, C - 1) : 0;
  return { sinks: S, window: C - S, label: `${S}+${C - S}` };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** The bytes a one-token step over `keys` cached tokens must touch: weights and the layers' keys and values. */
export function bytesPerToken(c: NeoXConfig, keys: number): number {
  return hostWeightBytes(c) + 4 * 2 * c.num_hidden_layers * keys * c.hidden_size;
}

/**
 * The memory-read bound: the shortest of several timed reads of `bytes`, each one pass of
 * the host step's SIMD matrix-vector kernel over a block that size (rows of 1,024 floats,
 * each read once), on as many threads as the host step runs (its rows split between them
 * as the step splits a matrix), in this process (the shortest: a bound is what the machine
 * can do, and other processes only ever lengthen a read). No one-token step that reads its
 * weights and cache on those threads can beat it; a step's ratio to it says how much of
 * its time is anything else.
 */
export function readBoundMs(bytes: number, reps = 9): number {
  const mem = hostMemory();
  const n = 1024;
  const m = Math.max(1, Math.ceil(bytes / 4 / n));
  const w = mem.alloc(m * n);
  const x = mem.alloc(n);
  const y = mem.alloc(m);
  try {
    mem.f32(x, n).fill(1);
    const ms: number[] = [];
    for (let r = 0; r < reps + 1; r++) {
      const t0 = performance.now();
      mem.matvecSplit(x, w, n, 0, y, n, m);
      if (r > 0) ms.push(performance.now() - t0);
    }
    return Math.min(...ms);
  } finally {
    for (const off of [w, x, y]) mem.release(off);
  }
}

const bound = (c: NeoXConfig, keys: number) => {
  const bytes = bytesPerToken(c, keys);
  return { bytes_per_token: bytes, read_bound_ms: readBoundMs(bytes) };
};
const rssMb = () => process.memoryUsage().rss / 2 ** 20;

/** Feeds n tokens into a cache in prefill chunks (no logits read). */
function prefill(path: DecodePath, model: GPTNeoX, cache: DenseCache | SinkCache, ids: number[], chunk = 128): void {
  for (let at = 0; at < ids.length; at += chunk) stepOn(path, model, ids.slice(at, at + chunk), cache).dispose();
}

async function timeTokens(n: number, one: () => Promise<void>): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await one();
    ms.push(performance.now() - t0);
  }
  return ms;
}

async function cachedRow(model: GPTNeoX, policy: 'sinks' | 'window' | 'dense', C: number, o: DecodeBenchOptions, rand: () => number): Promise<DecodeRow> {
  const c = model.config;
  const spec = cacheSpecFor(policy, C, o.sinks);
  const shape = { layers: c.num_hidden_layers, heads: c.num_attention_heads, headDim: headDim(c) };
  const cache = policy === 'dense' ? new DenseCache(shape) : new SinkCache(spec.sinks, spec.window, shape);
  const path = decodePath();
  // Dense grows by one key per token: fill it so that the last timed token sees C keys.
  const fed = policy === 'dense' ? C - o.warmup - 1 - o.tokens : C;
  if (fed < 0) throw new Error(`dense at ${C} keys cannot time ${o.tokens} tokens after ${o.warmup} warmup (and one profiled); use fewer tokens`);
  try {
    prefill(path, model, cache, Array.from({ length: fed }, rand));
    const one = async () => {
      const logits = stepOn(path, model, [rand()], cache);
      await logits.data();
      logits.dispose();
    };
    await timeTokens(o.warmup, one);
    const before = deviceCounts();
    const prof = await profileKernels(one, 5);
    const after = deviceCounts();
    const ms = await timeTokens(o.tokens, one);
    const kv = cache.size;
    const b = bound(c, kv);
    return {
      ...b,
      over_bound: median(ms) / b.read_bound_ms,
      policy,
      decode: path,
      cache: C,
      cache_spec: spec.label,
      ms_per_token: mean(ms),
      ms_median: median(ms),
      rss_mb: rssMb(),
      tensor_mb: tf.memory().numBytes / 2 ** 20,
      kv_tokens: kv,
      tokens: o.tokens,
      warmup: o.warmup,
      ops_per_token: prof.kernels,
      dispatches_per_token: after.dispatches - before.dispatches,
      reads_per_token: after.reads - before.reads,
      top_kernels: prof.top,
    };
  } finally {
    cache.dispose();
  }
}

async function recomputeRow(model: GPTNeoX, C: number, o: DecodeBenchOptions, rand: () => number): Promise<DecodeRow> {
  const window = Array.from({ length: C }, rand);
  // RecomputePolicy.feed with a full window: forward over it, keep the last row's logits.
  const one = async () => {
    window.shift();
    window.push(rand());
    const logits = tf.tidy(() => model.forwardLast(tf.tensor2d(window, [1, C], 'int32')));
    await logits.data();
    logits.dispose();
  };
  await timeTokens(o.warmup, one);
  const prof = await profileKernels(one, 5);
  const ms = await timeTokens(o.recomputeTokens, one);
  const b = bound(model.config, C);
  return {
    ...b,
    over_bound: median(ms) / b.read_bound_ms,
    policy: 'recompute',
    decode: 'tensor',
    cache: C,
    cache_spec: `0+${C}`,
    ms_per_token: mean(ms),
    ms_median: median(ms),
    rss_mb: rssMb(),
    tensor_mb: tf.memory().numBytes / 2 ** 20,
    kv_tokens: C,
    tokens: o.recomputeTokens,
    warmup: o.warmup,
    ops_per_token: prof.kernels,
    top_kernels: prof.top,
  };
}

export async function benchDecode(model: GPTNeoX, o: DecodeBenchOptions): Promise<{ rows: DecodeRow[]; ratios: DecodeRatio[] }> {
  const log = o.log ?? (() => {});
  const maxPos = model.config.max_position_embeddings;
  const rng = seedrandom(`sinklm-bench-decode-${o.seed ?? 0}`);
  const rand = () => Math.floor(rng() * model.config.vocab_size);
  const rows: DecodeRow[] = [];
  // One untimed row first: the first kernels of a process (and of a shape) are slow to
  // start, and the first real row should not pay for it.
  if (o.caches.length) {
    const C = Math.min(...o.caches);
    if (C > maxPos) throw new Error(`cache ${C} is more than the model's ${maxPos} positions`);
    await cachedRow(model, 'sinks', C, { ...o, tokens: 2 }, rand);
  }
  for (const C of o.caches) {
    if (C > maxPos) throw new Error(`cache ${C} is more than the model's ${maxPos} positions`);
    for (const policy of o.policies) {
      log(`bench decode: ${policy} at ${C} keys`);
      const row = policy === 'recompute' ? await recomputeRow(model, C, o, rand) : await cachedRow(model, policy, C, o, rand);
      log(`bench decode: ${policy} at ${C}: ${row.ms_median.toFixed(2)} ms/token (median of ${row.tokens}), ${row.ops_per_token} kernels/token`);
      rows.push(row);
    }
  }
  const ratios: DecodeRatio[] = [];
  for (const C of o.caches) {
    const s = rows.find((r) => r.cache === C && r.policy === 'sinks');
    const r = rows.find((x) => x.cache === C && x.policy === 'recompute');
    if (s && r) ratios.push({ cache: C, recompute_over_sinks: r.ms_median / s.ms_median, recompute_over_sinks_mean: r.ms_per_token / s.ms_per_token });
  }
  return { rows, ratios };
}

export interface LongRow {
  /** Tokens streamed so far. */
  tokens: number;
  /** Set on a last row taken where the stream was stopped, not at a milestone. */
  interrupted?: true;
  /** Mean ms per token over the last `window_tokens` tokens before this milestone. */
  ms_per_token: number;
  /** Median ms per token over the same window: the typical token, untouched by the odd pause. */
  ms_median: number;
  window_tokens: number;
  rss_mb: number;
  num_tensors: number;
  tensor_mb: number;
  /** Bytes in live blocks of the host decode memory (weights, KV cache, activations). */
  host_mb: number;
  /** Where the step ran. */
  decode: DecodePath;
}

export interface LongOptions {
  /** Keys per token (S + W). */
  cache: number;
  sinks: number;
  /** Milestones, in tokens streamed. */
  milestones: number[];
  /** Tokens averaged before each milestone (default 1000). */
  window?: number;
  seed?: number;
  /** Draw a progress bar (default: when stderr is a terminal). */
  progress?: boolean;
  /** Stops the stream early (Ctrl-C on a run of hours); what was measured is still returned. */
  signal?: AbortSignal;
  log?: (line: string) => void;
}

/**
 * Streams random tokens through the `sinks` policy, as `stream-eval` would, up to the last
 * milestone. Flat time, RSS and tensor count across milestones are what an endless stream
 * needs; anything growing with the stream shows up here.
 */
export async function benchLong(model: GPTNeoX, o: LongOptions): Promise<LongRow[]> {
  const log = o.log ?? (() => {});
  const milestones = [...new Set(o.milestones)].sort((a, b) => a - b);
  const total = milestones.at(-1) ?? 0;
  const win = o.window ?? 1000;
  const rng = seedrandom(`sinklm-bench-long-${o.seed ?? 0}`);
  const V = model.config.vocab_size;
  const spec = parseCache(cacheSpecFor('sinks', o.cache, o.sinks).label);
  const policy = makePolicy(model, 'sinks', spec);
  const recent = new Float64Array(win);
  const out: LongRow[] = [];
  const bar = progressBar({ total, unit: 'tok', label: `sinks ${spec.label}`, enabled: o.progress });
  let next = 0;
  let lastLog = performance.now();
  const row = (t: number): LongRow => {
    const n = Math.min(win, t);
    const last: number[] = [];
    for (let i = 0; i < n; i++) last.push(recent[(t - i) % win]!);
    const r = {
      tokens: t,
      ms_per_token: last.reduce((a, b) => a + b, 0) / n,
      ms_median: median(last),
      window_tokens: n,
      rss_mb: rssMb(),
      num_tensors: tf.memory().numTensors,
      tensor_mb: tf.memory().numBytes / 2 ** 20,
      host_mb: hostMemory().used / 2 ** 20,
      decode: policy.decode,
    };
    log(`bench decode --long: ${t} tokens  ${r.ms_per_token.toFixed(2)} ms/token (median ${r.ms_median.toFixed(2)}, last ${n})  rss ${r.rss_mb.toFixed(0)} MB  tensors ${r.num_tensors}  host ${r.host_mb.toFixed(1)} MB [${r.decode} step]`);
    return r;
  };
  try {
    for (let t = 1; t <= total; t++) {
      const t0 = performance.now();
      const logits = policy.feed(Math.floor(rng() * V));
      await logits.data();
      logits.dispose();
      const now = performance.now();
      recent[t % win] = now - t0;
      if (t === milestones[next]) {
        out.push(row(t));
        next++;
      }
      if ((t & 255) === 0) {
        bar.update(t, {});
        if (!bar.enabled && now - lastLog > 30_000) {
          lastLog = now;
          log(`bench decode --long: ${t}/${total} tokens`);
        }
        // tfjs-node kernels are synchronous: let a signal handler run now and then.
        await new Promise((r) => setImmediate(r));
        if (o.signal?.aborted) {
          if (out.at(-1)?.tokens !== t) out.push({ ...row(t), interrupted: true });
          log(`bench decode --long: stopped at ${t} tokens`);
          break;
        }
      }
    }
  } finally {
    bar.stop();
    policy.dispose();
  }
  return out;
}

/** How much a long stream's figures moved between its milestones. */
export interface LongDrift {
  /** From the first milestone to the last. */
  from_tokens: number;
  to_tokens: number;
  /** (max - min) / min over the milestones of the median ms per token, of the mean, of RSS. */
  ms_median: number;
  ms_mean: number;
  rss: number;
  /** Whether the live tensor count and host memory were the same at every milestone. */
  tensors_flat: boolean;
  host_flat: boolean;
}

/** The spread of a long stream's milestones (null with fewer than two). */
export function longDrift(rows: LongRow[]): LongDrift | null {
  const r = rows.filter((x) => !x.interrupted);
  if (r.length < 2) return null;
  const spread = (v: number[]) => (Math.max(...v) - Math.min(...v)) / Math.min(...v);
  return {
    from_tokens: r[0]!.tokens,
    to_tokens: r.at(-1)!.tokens,
    ms_median: spread(r.map((x) => x.ms_median)),
    ms_mean: spread(r.map((x) => x.ms_per_token)),
    rss: spread(r.map((x) => x.rss_mb)),
    tensors_flat: r.every((x) => x.num_tensors === r[0]!.num_tensors),
    host_flat: r.every((x) => x.host_mb === r[0]!.host_mb),
  };
}

/** The figures' context: backend and how busy the machine was. */
export function machine(): { backend: string; threads: number; host_threads: number; loadavg: number } {
  return { backend: backendInfo().backend, threads: backendInfo().threads, host_threads: hostMemory().threads, loadavg: os.loadavg()[0]! };
}
