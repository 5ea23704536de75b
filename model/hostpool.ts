/**
 * A second thread for the host decode step: a worker that runs the same SIMD kernels
 * (model/kernels.wat) over the same shared WebAssembly memory, so a step can split its
 * larger kernel calls (the rows of a matrix, the heads of attention) between two cores.
 *
 * Every output element is computed by the same kernel code on the same inputs whichever
 * thread runs it, so a step gives the same bits with one thread or two (test/hoststep.test.ts
 * checks it). The main thread records the helper's calls into a command buffer, wakes it,
 * runs its own share, then waits for it; the helper spins briefly after each batch (the
 * next one usually follows within microseconds) and then sleeps on the futex. It never keeps
 * the process alive, and a helper that stops answering becomes an error, never a hang.
 */
import { Worker } from 'node:worker_threads';

/** The kernel calls a step can hand to either thread (byte offsets, float counts). */
export interface KernelCalls {
  matvec(x: number, w: number, stride: number, b: number, y: number, n: number, m: number): void;
  wsum(p: number, v: number, stride: number, out: number, n: number, m: number): void;
  softmax(s: number, bias: number, m: number, extra: number): void;
}

const OP_MATVEC = 1;
const OP_WSUM = 2;
const OP_SOFTMAX = 3;
/** Control words: the batch posted, the batch done, the command count, an error flag. */
const POSTED = 0;
const DONE = 1;
const COUNT = 2;
const FAILED = 3;
const STOP = -1;
/** A helper that has not finished its share in this long has stopped: an error, not a wait. */
const STALL_MS = 60_000;
/** Polls of a control word before a thread sleeps on it (futex) instead. */
const SPIN = 20_000;

// The helper, as plain CommonJS: it runs from a string, so it works from the TypeScript
// sources (tests) and from dist alike.
const HELPER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { module, memory, ctl, cmd, spin } = workerData;
const k = new WebAssembly.Instance(module, { env: { memory } }).exports;
const c = new Int32Array(ctl);
const ci = new Int32Array(cmd);
const cf = new Float32Array(cmd);
let seen = 0;
for (;;) {
  let spins = 0;
  while (Atomics.load(c, ${POSTED}) === seen) {
    if (++spins > spin) {
      Atomics.wait(c, ${POSTED}, seen);
      spins = 0;
    }
  }
  seen = Atomics.load(c, ${POSTED});
  if (seen === ${STOP}) break;
  try {
    const end = c[${COUNT}];
    for (let i = 0; i < end; ) {
      switch (ci[i]) {
        case ${OP_MATVEC}: k.matvec(ci[i + 1], ci[i + 2], ci[i + 3], ci[i + 4], ci[i + 4] === 0 ? 0 : 1, ci[i + 5], ci[i + 6], ci[i + 7]); i += 8; break;
        case ${OP_WSUM}: k.wsum(ci[i + 1], ci[i + 2], ci[i + 3], ci[i + 4], ci[i + 5], ci[i + 6]); i += 7; break;
        case ${OP_SOFTMAX}: k.softmax(ci[i + 1], ci[i + 2], ci[i + 3], cf[i + 4]); i += 5; break;
        default: throw new Error('unknown command ' + ci[i]);
      }
    }
  } catch (e) {
    Atomics.store(c, ${FAILED}, 1);
  }
  Atomics.store(c, ${DONE}, seen);
  Atomics.notify(c, ${DONE});
}
`;

/** Records kernel calls into the helper's command buffer. */
class Recorder implements KernelCalls {
  private ints: Int32Array;
  private floats: Float32Array;
  n = 0;

  constructor(private buffer: SharedArrayBuffer) {
    this.ints = new Int32Array(buffer);
    this.floats = new Float32Array(buffer);
  }

  private room(words: number): void {
    if (this.n + words <= this.ints.length) return;
    throw new Error(`host step helper: more than ${this.ints.length} command words in one batch`);
  }

  matvec(x: number, w: number, stride: number, b: number, y: number, n: number, m: number): void {
    this.room(8);
    this.ints.set([OP_MATVEC, x, w, stride, b, y, n, m], this.n);
    this.n += 8;
  }

  wsum(p: number, v: number, stride: number, out: number, n: number, m: number): void {
    this.room(7);
    this.ints.set([OP_WSUM, p, v, stride, out, n, m], this.n);
    this.n += 7;
  }

  softmax(s: number, bias: number, m: number, extra: number): void {
    this.room(5);
    this.ints.set([OP_SOFTMAX, s, bias, m], this.n);
    this.floats[this.n + 4] = extra;
    this.n += 5;
  }
}

export class KernelHelper {
  private readonly worker: Worker;
  private readonly ctl: Int32Array;
  private readonly recorder: Recorder;
  private posted = 0;
  private failed: string | null = null;

  /**
   * `spin`: polls of the command word before the helper sleeps on it (a few ns each: tens of
   * microseconds, the gap between two phases of one step; short, because a spinning thread
   * takes a core from whatever else runs when the cores are shared).
   */
  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, spin = SPIN) {
    const ctl = new SharedArrayBuffer(16);
    const cmd = new SharedArrayBuffer(4 * 65536);
    this.ctl = new Int32Array(ctl);
    this.recorder = new Recorder(cmd);
    this.worker = new Worker(HELPER_SOURCE, { eval: true, workerData: { module, memory, ctl, cmd, spin } });
    this.worker.unref();
    this.worker.on('error', (e) => (this.failed = String(e?.message ?? e)));
  }

  /**
   * Runs `theirs` on the helper and `mine` here, at once; returns when both are done. The
   * two must write disjoint memory (each reads what neither writes).
   */
  run(theirs: (k: KernelCalls) => void, mine: () => void): void {
    if (this.failed) throw new Error(`the host step's helper thread failed: ${this.failed}`);
    this.recorder.n = 0;
    theirs(this.recorder);
    const seq = (this.posted = this.posted >= 0x7ffffff0 ? 1 : this.posted + 1);
    Atomics.store(this.ctl, COUNT, this.recorder.n);
    Atomics.store(this.ctl, POSTED, seq);
    Atomics.notify(this.ctl, POSTED);
    mine();
    this.wait(seq);
    if (Atomics.exchange(this.ctl, FAILED, 0)) throw new Error("a kernel call failed on the host step's helper thread");
  }

  private wait(seq: number): void {
    for (let i = 0; i < SPIN; i++) if (Atomics.load(this.ctl, DONE) === seq) return;
    const t0 = Date.now();
    for (;;) {
      const done = Atomics.load(this.ctl, DONE);
      if (done === seq) return;
      Atomics.wait(this.ctl, DONE, done, 100);
      if (Date.now() - t0 > STALL_MS) {
        this.failed = `no answer in ${STALL_MS / 1000} s`;
        throw new Error(`the host step's helper thread stopped answering (${this.failed}); SINKLM_HOST_THREADS=1 runs the step on one thread`);
      }
    }
  }

  /** Ends the helper thread (it ends with the process anyway). */
  close(): void {
    Atomics.store(this.ctl, POSTED, STOP);
    Atomics.notify(this.ctl, POSTED);
  }
}
