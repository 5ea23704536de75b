/**
 * One WebAssembly memory for the host decode step: the weights HostStep copies out of
 * TensorFlow, the host KV caches, and the step's activations all live in it, so the SIMD
 * kernels of model/kernels.wat read them in place. Blocks are handed out by offset; a
 * view (Float32Array) is taken at the moment of use, because growing the memory detaches
 * every earlier view.
 */
import * as os from 'node:os';
import { UserError } from '../core/errors.js';
import type { NeoXConfig } from './config.js';
import { KernelHelper, type KernelCalls } from './hostpool.js';
import { KERNELS_WASM_BASE64 } from './kernels.wasm.js';

const PAGE = 65536;
const ALIGN = 16;

/** A WebAssembly (wasm32) memory cannot grow past 4 GiB. */
export const WASM_MAX_BYTES = 4 * 2 ** 30;

/**
 * The most one model's host step may take before streaming runs on the tensor step
 * instead. The host step copies every matrix out of TensorFlow (which keeps its own), so
 * its memory is on top of the model's; and its one-thread matrix-vector products lose to
 * TensorFlow's batched kernels once the matrices are large enough to hide the per-kernel
 * dispatch that the host step exists to avoid. 2 GiB takes Pythia-410M (1.5 GB at cache
 * 1024), not Pythia-1B (3.9 GB, which would leave no room in the 4 GiB for a second model).
 */
export const HOST_BUDGET_BYTES = 2 * 2 ** 30;

/** Bytes of the weights HostStep copies into host memory (every matrix and bias but embed_in). */
export function hostWeightBytes(c: NeoXConfig): number {
  const D = c.hidden_size;
  const F = c.intermediate_size;
  const perLayer = 3 * D * D + 3 * D + D * D + D + F * D + F + D * F + D;
  return 4 * (c.num_hidden_layers * perLayer + c.vocab_size * D);
}

/**
 * Bytes of host memory one model's host step holds: its weights, the keys and values of
 * `batch` streams of `keys` cached tokens each, and the activations of one step.
 */
export function hostStepBytes(c: NeoXConfig, keys: number, batch = 1): number {
  const D = c.hidden_size;
  const kv = 4 * 2 * c.num_hidden_layers * batch * keys * D;
  const scratch = 4 * (batch * (6 * D + c.intermediate_size + c.vocab_size) + keys + D);
  return hostWeightBytes(c) + kv + scratch;
}

interface Kernels {
  matvec(x: number, w: number, stride: number, b: number, bias: number, y: number, n: number, m: number): void;
  matrows(x: number, rows: number, w: number, b: number, bias: number, y: number, n: number, m: number): void;
  wsum(p: number, v: number, stride: number, out: number, n: number, m: number): void;
  softmax(s: number, bias: number, m: number, extra: number): void;
  gelu(p: number, n: number, tanh: number): void;
  maxf(p: number, n: number): number;
  sumexp(p: number, n: number, mx: number): number;
}

/**
 * Threads the host step runs its kernels on: SINKLM_HOST_THREADS (1 or 2), else 2 when the
 * machine has two cores or more. The second is a helper worker (model/hostpool.ts); the
 * numbers are the same bits either way.
 */
export function hostThreads(): number {
  const env = process.env.SINKLM_HOST_THREADS;
  if (env !== undefined && env !== '') {
    if (env !== '1' && env !== '2') throw new UserError(`must be 1 or 2 (got "${env}")`, { field: 'SINKLM_HOST_THREADS' });
    return Number(env);
  }
  return Math.min(2, os.availableParallelism?.() ?? os.cpus().length);
}

export class HostMemory implements KernelCalls {
  /** Shared, so the helper thread's instance of the kernels works on the same bytes. */
  readonly memory: WebAssembly.Memory;
  private readonly module: WebAssembly.Module;
  private readonly kernels: Kernels;
  private helper: KernelHelper | null | undefined;
  private wanted: number | undefined;
  /** Free blocks [offset, bytes], sorted by offset and coalesced. */
  private free: [number, number][] = [];
  private readonly sizes = new Map<number, number>();
  /** Everything at or above `top` is unused. Offset 0..ALIGN stays reserved (never a block). */
  private top = ALIGN;

  constructor() {
    this.memory = new WebAssembly.Memory({ initial: 16, maximum: WASM_MAX_BYTES / PAGE, shared: true });
    this.module = new WebAssembly.Module(Buffer.from(KERNELS_WASM_BASE64, 'base64'));
    this.kernels = new WebAssembly.Instance(this.module, { env: { memory: this.memory } }).exports as unknown as Kernels;
  }

  /** 2 when a helper thread runs kernels beside this one (hostThreads()), else 1. */
  get threads(): number {
    if (this.helper === undefined) this.helper = (this.wanted ?? hostThreads()) > 1 ? new KernelHelper(this.module, this.memory) : null;
    return this.helper ? 2 : 1;
  }

  /** Runs the kernels on 1 or 2 threads from now on, whatever SINKLM_HOST_THREADS says. */
  setThreads(threads: 1 | 2): void {
    this.closeHelper();
    this.wanted = threads;
  }

  /**
   * `theirs` on the helper thread while `mine` runs here (with one thread: theirs, then
   * mine, here); returns when both are done. The two must write disjoint memory.
   */
  both(theirs: (k: KernelCalls) => void, mine: (k: KernelCalls) => void): void {
    if (this.threads > 1) this.helper!.run(theirs, () => mine(this));
    else {
      theirs(this);
      mine(this);
    }
  }

  /**
   * matvec with its m rows split between the threads (the helper takes the later half,
   * from a multiple of 4): the same bits as matvec.
   */
  matvecSplit(x: number, w: number, stride: number, b: number, y: number, n: number, m: number): void {
    const half = Math.floor(m / 8) * 4;
    if (this.threads < 2 || half === 0) return this.matvec(x, w, stride, b, y, n, m);
    const skip = (rows: number, at: number, scale: number) => (at === 0 ? 0 : at + rows * scale * 4);
    this.both(
      (k) => k.matvec(x, w + half * stride * 4, stride, skip(half, b, 1), y + half * 4, n, m - half),
      (k) => k.matvec(x, w, stride, b, y, n, half),
    );
  }

  /** Ends the helper thread, if there is one (it ends with the process anyway). */
  closeHelper(): void {
    this.helper?.close();
    this.helper = undefined;
  }

  /** A zero-filled block of n float32s; returns its byte offset. */
  alloc(n: number): number {
    const bytes = Math.max(ALIGN, Math.ceil((n * 4) / ALIGN) * ALIGN);
    let off = -1;
    const i = this.free.findIndex(([, size]) => size >= bytes);
    if (i >= 0) {
      const [at, size] = this.free[i]!;
      off = at;
      if (size === bytes) this.free.splice(i, 1);
      else this.free[i] = [at + bytes, size - bytes];
    } else {
      off = this.top;
      this.top += bytes;
      const need = Math.ceil(this.top / PAGE) - this.memory.buffer.byteLength / PAGE;
      if (need > 0) {
        try {
          this.memory.grow(need);
        } catch {
          this.top -= bytes;
          throw new UserError(
            `the host streaming step needs ${Math.ceil((this.top + bytes) / 2 ** 20)} MB of WebAssembly memory, more than it can have; run with SINKLM_DECODE=tensor`,
            { field: 'SINKLM_DECODE' },
          );
        }
      }
    }
    this.sizes.set(off, bytes);
    new Float32Array(this.memory.buffer, off, bytes / 4).fill(0);
    return off;
  }

  release(off: number): void {
    const bytes = this.sizes.get(off);
    if (bytes === undefined) throw new Error(`HostMemory: ${off} is not an allocated block`);
    this.sizes.delete(off);
    this.free.push([off, bytes]);
    this.free.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const [at, size] of this.free) {
      const last = merged.at(-1);
      if (last && last[0] + last[1] === at) last[1] += size;
      else merged.push([at, size]);
    }
    // A free block that reaches the top gives its room back to the top.
    const last = merged.at(-1);
    if (last && last[0] + last[1] === this.top) {
      this.top = last[0];
      merged.pop();
    }
    this.free = merged;
  }

  /** Bytes held in live blocks. */
  get used(): number {
    let s = 0;
    for (const b of this.sizes.values()) s += b;
    return s;
  }

  /** A view of n float32s at a byte offset; valid until the next alloc. */
  f32(off: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, off, n);
  }

  /** y[o] = b[o] + x . w[o * stride .. + n) for o < m (b = 0: no bias). */
  matvec(x: number, w: number, stride: number, b: number, y: number, n: number, m: number): void {
    this.kernels.matvec(x, w, stride, b, b === 0 ? 0 : 1, y, n, m);
  }

  /**
   * matvec over `rows` inputs x[r * n ..] into y[r * m ..], each weight row read once for
   * all of them (weights [m, n], stride n); bit for bit what `rows` matvec calls give.
   */
  matrows(x: number, rows: number, w: number, b: number, y: number, n: number, m: number): void {
    this.kernels.matrows(x, rows, w, b, b === 0 ? 0 : 1, y, n, m);
  }

  /** out[0..n) = sum over j < m of p[j] * v[j * stride .. + n). */
  wsum(p: number, v: number, stride: number, out: number, n: number, m: number): void {
    this.kernels.wsum(p, v, stride, out, n, m);
  }

  /**
   * Attention's softmax over the m scores at s, in place: s[j] += bias[j] (bias 0: no
   * mask), then exp(s[j] - max) over exp(extra - max) + the sum of them all. `extra` is
   * the implicit sink's logit: -Infinity for a plain softmax, 0 for softmax1, the head's
   * logit for the per-head sink logit. SIMD exp (float32, within 2 ulp), float64 sum.
   */
  softmax(s: number, bias: number, m: number, extra: number): void {
    this.kernels.softmax(s, bias, m, extra);
  }

  /**
   * The MLP's activation over the n floats at p, in place: exact GELU, x/2 (1 + erf(x/sqrt 2))
   * (erf to ~1.2e-7 relative, float32), or with `tanh` its tanh approximation (gelu_new).
   */
  gelu(p: number, n: number, tanh: boolean): void {
    this.kernels.gelu(p, n, tanh ? 1 : 0);
  }

  /**
   * log sum_j exp(x[j]) over the n floats at p (n >= 1): the max, then the exps of the
   * differences (SIMD float32 exp, within 2 ulp) summed in float64. Reads only.
   */
  logSumExp(p: number, n: number): number {
    const mx = this.kernels.maxf(p, n);
    if (!Number.isFinite(mx)) return mx;
    return mx + Math.log(this.kernels.sumexp(p, n, mx));
  }
}

let shared: HostMemory | undefined;

/** The process's one host memory (weights, caches and activations of every HostStep). */
export function hostMemory(): HostMemory {
  shared ??= new HostMemory();
  return shared;
}
