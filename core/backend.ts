/**
 * Backend selection, in one place: WebGPU on a hardware adapter first (core/webgpu.ts), then
 * native TensorFlow (tfjs-node-gpu when the user installed it, else tfjs-node), then wasm,
 * then the pure-JS cpu backend. `--backend` or SINKLM_BACKEND overrides (`webgpu` then takes
 * a software adapter too: SwiftShader where there is no GPU); SINKLM_NO_NATIVE=1 and
 * SINKLM_NO_WEBGPU=1 hide those (to test the fallbacks). On native, sinklm's own TensorFlow
 * ops load too (SINKLM_NO_KERNELS=1 hides them).
 * Every figure sinklm reports carries `backendInfo().backend`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs-core';
import { UserError } from './errors.js';
import { adapterLine, installNavigatorGpu, probeWebGPU, type AdapterInfo } from './webgpu.js';

export const BACKENDS = ['tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKENDS)[number];

export const NATIVE_HOWTO = 'npm run setup-native  (builds @tensorflow/tfjs-node against a TensorFlow C library; see README "Backends")';

export interface BackendInfo {
  backend: BackendName;
  /** Why this backend runs: requested, or why the ones before it were passed over. */
  reason: string;
  native: { available: boolean; package?: string; tensorflow?: string; error?: string; howto?: string };
  /** Whether the backend runs on a GPU (tfjs-node-gpu, or WebGPU on a hardware adapter). */
  gpu: boolean;
  /** The WebGPU adapter (when one was found) and why WebGPU does or does not run. */
  webgpu: { available: boolean; adapter?: AdapterInfo; error?: string };
  /** sinklm's own TensorFlow ops (native/): whether they run, which, and why not. */
  kernels: KernelInfo;
  versions: Record<string, string>;
  threads: number;
}

export interface KernelInfo {
  /** True when the ops run: the library loaded and the backend is tensorflow. */
  in_use: boolean;
  /** The library's ops registered in TensorFlow (empty when not loaded). */
  ops: string[];
  library?: string;
  /** Compiler flags it was built with (-march=native, or the portable fallback). */
  build?: string;
  threads?: number;
  /** Why the ops do not run. */
  reason?: string;
}

const require = createRequire(import.meta.url);
let current: BackendInfo | undefined;

interface NativeProbe {
  ok: boolean;
  pkg?: string;
  tfVersion?: string;
  error?: string;
}
let nativeProbe: NativeProbe | undefined;

function shortError(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  const msg = String(err?.message ?? e).split('\n')[0]!;
  if (err?.code === 'MODULE_NOT_FOUND' && /tfjs-node/.test(msg) && !/binding/.test(msg)) return 'package not installed';
  if (/native addon module|tfjs_binding\.node/.test(msg)) return 'addon not built (its libtensorflow download fails offline)';
  if (err?.code === 'ERR_DLOPEN_FAILED') return `TensorFlow C library cannot be loaded: ${msg}`;
  return msg;
}

/** Loads tfjs-node(-gpu) once; registers the 'tensorflow' backend on success. */
function probeNative(): NativeProbe {
  if (nativeProbe) return nativeProbe;
  if (process.env.SINKLM_NO_NATIVE && process.env.SINKLM_NO_NATIVE !== '0') {
    return (nativeProbe = { ok: false, error: 'hidden by SINKLM_NO_NATIVE' });
  }
  // TensorFlow's C++ start-up chatter (oneDNN, CPU features) is not for our users' stderr.
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
  const errors: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    let capture: StderrCapture | undefined;
    try {
      const dir = moduleDir(pkg); // throws 'package not installed' before anything loads
      capture = stderrCapture(dir);
      capture?.begin();
      // TensorFlow 2.21 logs through absl, which writes to stderr whatever TF_CPP_MIN_LOG_LEVEL
      // says until absl::InitializeLog() (nothing calls it), and logs from its libraries' static
      // initialisers (on CPUs where oneDNN turns on), before any code of ours could run there:
      // so their loads write into a capture, sifted below.
      const mod = require(pkg) as { version?: Record<string, string> };
      loadOps(dir);
      passOn(capture?.end());
      const binding = (tf.findBackend('tensorflow') as unknown as { binding?: { TF_Version?: string } } | null)?.binding;
      return (nativeProbe = { ok: true, pkg, tfVersion: binding?.TF_Version ?? mod.version?.['tfjs-node'] });
    } catch (e) {
      passOn(capture?.end());
      const msg = shortError(e);
      if (!(pkg.endsWith('-gpu') && msg === 'package not installed')) errors.push(`${pkg}: ${msg}`);
    }
  }
  return (nativeProbe = { ok: false, error: errors.join('; ') || 'package not installed' });
}

/** Where a tfjs-node package keeps its addon, and sinklm's modules beside it. */
function moduleDir(pkg: string): string {
  const libDir = path.join(path.dirname(require.resolve(`${pkg}/package.json`)), 'lib');
  const dirs = fs.existsSync(libDir) ? fs.readdirSync(libDir).filter((d) => d.startsWith('napi-v')).sort() : [];
  return path.join(libDir, dirs.find((d) => fs.existsSync(path.join(libDir, d, 'tfjs_binding.node'))) ?? dirs[0] ?? 'napi-v8');
}

interface StderrCapture {
  begin(): boolean;
  end(): string;
}

/** native/stdio/capture.c, built beside the addon; undefined when it is not there. */
function stderrCapture(dir: string): StderrCapture | undefined {
  const lib = path.join(dir, 'sinklm_stdio.node');
  try {
    return fs.existsSync(lib) ? (require(lib) as StderrCapture) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A line TensorFlow's log wrote (absl's "I1201 14:35:00.123 4321 port.cc:153] ..." format,
 * severity I/W/E/F), or absl's banner before its first such line.
 */
const TF_LOG_LINE = /^(?:([IWEF])\d{4} \d+:\d+:\d+\.\d+\s+\d+ [\w.]+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$)/;

/**
 * What the native libraries wrote to stderr while they loaded, less TensorFlow's log lines
 * below `minLevel` (TF_CPP_MIN_LOG_LEVEL: 0 info, 1 warning, 2 error, 3 fatal, as TensorFlow
 * 2.9 read it itself) with their continuation lines, and absl's banner: anything else, errors
 * included, is kept.
 */
export function siftStartupLog(text: string, minLevel: number): string {
  let dropping = false; // a dropped message's continuation lines go with it
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const keep = lines.filter((line) => {
    const m = TF_LOG_LINE.exec(line);
    if (m) dropping = m[1] === undefined || 'IWEF'.indexOf(m[1]) < minLevel;
    return !dropping;
  });
  return keep.length ? `${keep.join('\n')}\n` : '';
}

/**
 * Runs `f` with fd 2 captured (where the capture module is built; else stderr stays as it
 * is) and returns what was written meanwhile: Dawn prints its driver warnings there.
 */
async function captured<T>(f: () => Promise<T>): Promise<[T, string]> {
  let cap: StderrCapture | undefined;
  try {
    cap = stderrCapture(moduleDir('@tensorflow/tfjs-node'));
  } catch {
    cap = undefined;
  }
  const on = cap?.begin() ?? false;
  try {
    const out = await f();
    return [out, on ? cap!.end() : ''];
  } catch (e) {
    if (on) cap!.end();
    throw e;
  }
}

function passOn(captured: string | undefined): void {
  const text = captured && siftStartupLog(captured, Math.min(3, Math.max(0, Number(process.env.TF_CPP_MIN_LOG_LEVEL) || 0)));
  if (text) process.stderr.write(text);
}

export const KERNELS_HOWTO = 'npm run setup-native  (also builds sinklm\'s TensorFlow ops from native/; needs g++)';

interface OpsProbe {
  ops: string[];
  retainFreedMemory?: () => boolean;
  library?: string;
  build?: string;
  threads?: number;
  error?: string;
}
let opsProbe: OpsProbe | undefined;

/**
 * Loads sinklm's op library (native/*.cc, built beside tfjs-node's addon) into the
 * TensorFlow runtime tfjs-node runs; its load registers the ops. Once, after tfjs-node.
 * SINKLM_NO_KERNELS=1 hides it (everything then runs as without it).
 */
function loadOps(dir: string): OpsProbe {
  if (opsProbe) return opsProbe;
  if (process.env.SINKLM_NO_KERNELS && process.env.SINKLM_NO_KERNELS !== '0') return (opsProbe = { ops: [], error: 'hidden by SINKLM_NO_KERNELS' });
  const lib = path.join(dir, 'sinklm_ops.node');
  if (!fs.existsSync(lib)) return (opsProbe = { ops: [], error: `not built (no sinklm_ops.node in ${dir})` });
  try {
    const m = require(lib) as { ops: string[]; build?: string; threads?: number; error?: string; retainFreedMemory?: () => boolean };
    return (opsProbe = { ops: m.ops, library: lib, build: m.build, threads: m.threads, error: m.error, retainFreedMemory: m.retainFreedMemory });
  } catch (e) {
    return (opsProbe = { ops: [], library: lib, error: `cannot be loaded: ${String((e as Error)?.message ?? e).split('\n')[0]}` });
  }
}

/**
 * For training processes: freed memory stays in the process for the next step instead of
 * going back to the system and faulting in again (native/ops.cc says why). Needs the op
 * library (glibc); returns whether it took effect.
 */
export function retainFreedMemory(): boolean {
  return opsProbe?.retainFreedMemory?.() ?? false;
}

/** sinklm's ops registered in the native runtime (none unless it loaded). */
export function sinklmOps(): string[] {
  return opsProbe?.ops ?? [];
}

function kernelInfo(backend: BackendName, probe: NativeProbe): KernelInfo {
  const ops = probe.ok && probe.pkg ? loadOps(moduleDir(probe.pkg)) : undefined;
  const base = { ops: ops?.ops ?? [], library: ops?.library, build: ops?.build, threads: ops?.threads };
  if (!ops) return { in_use: false, ...base, reason: 'they run on native TensorFlow, which is unavailable' };
  if (ops.error || !ops.ops.length) return { in_use: false, ...base, reason: `${ops.error ?? 'no ops registered'}; to build them: ${KERNELS_HOWTO}` };
  if (backend !== 'tensorflow') return { in_use: false, ...base, reason: `the ${backend} backend runs (they are tensorflow kernels)` };
  return { in_use: true, ...base };
}

/**
 * tfjs-core's Node entry registers no gradients; @tensorflow/tfjs does (tfjs-node loads it).
 * tfjs-node is optional and training must work on wasm/cpu without it, so load it here.
 */
function ensureGradients(): void {
  if (!tf.getGradient('BatchMatMul')) require('@tensorflow/tfjs');
}

/** tfjs-backend-webgpu's MatMulProgramType.MatMulPackedProgram. */
const MATMUL_PACKED = 3;

async function activate(name: BackendName, softwareAdapter = false): Promise<void> {
  ensureGradients();
  // tfjs's own banners ("install our node backend ...") would repeat, less accurately, what
  // sinklm says about the backend it picked; prod mode silences tfjs warnings, nothing else.
  tf.enableProdMode();
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  if (name === 'cpu') await import('@tensorflow/tfjs-backend-cpu');
  if (name === 'webgpu') {
    installNavigatorGpu();
    await import('@tensorflow/tfjs-backend-webgpu');
    // tfjs picks a split-K matmul for small outputs (every decoded token's products), which
    // sums with atomic compare-exchange loops: on a software adapter those cost 50 ms a
    // product (SwiftShader, [1, 128] x [128, 512]). The tiled program there: 16x faster
    // decoding (990 -> 61 ms/token on the shipped token model), the same numbers.
    if (softwareAdapter) tf.env().set('WEBGPU_MATMUL_PROGRAM_TYPE', MATMUL_PACKED);
  }
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`backend ${name} failed to initialise`);
  await tf.ready();
  watchCounts();
  if (name === 'webgpu') watchDevice();
}

/**
 * Work the device was given: GPU->CPU reads (any backend's read/readSync) and, on webgpu,
 * compute dispatches (tfjs's programs and sinklm's WGSL). Benchmarks and tests take
 * differences of these around a step or a token.
 */
const counts = { reads: 0, dispatches: 0 };
const watched = new WeakSet<object>();

export function deviceCounts(): { reads: number; dispatches: number } {
  return { ...counts };
}

/** Counts one dispatch that did not go through tfjs's program runner (sinklm's WGSL kernels). */
export function countDispatch(): void {
  counts.dispatches += 1;
}

function watchCounts(): void {
  const be = tf.backend() as unknown as Record<string, unknown>;
  if (watched.has(be)) return;
  watched.add(be);
  // A backend's read may call its own readSync (tfjs-node's does): one read, counted once.
  let inside = 0;
  const wrap = (name: string, counter: keyof typeof counts) => {
    const f = be[name];
    if (typeof f !== 'function') return;
    be[name] = function (this: unknown, ...a: unknown[]) {
      if (!inside) counts[counter] += 1;
      inside += 1;
      try {
        const out = (f as (...x: unknown[]) => unknown).apply(this, a);
        return out;
      } finally {
        inside -= 1;
      }
    };
  };
  wrap('read', 'reads');
  wrap('readSync', 'reads');
  wrap('recordAndSubmit', 'dispatches');
}

/** What the WebGPU device reported that tfjs does not (validation, out-of-memory, device lost). */
const deviceErrors: string[] = [];

function watchDevice(): void {
  const device = (tf.backend() as unknown as { device?: EventTarget & { lost?: Promise<{ message: string }> } }).device;
  device?.addEventListener?.('uncapturederror', (ev) => {
    const msg = String((ev as unknown as { error?: { message?: string } }).error?.message ?? ev).split('\n')[0]!;
    if (deviceErrors.length < 8) deviceErrors.push(msg);
  });
  void device?.lost?.then((info) => deviceErrors.push(`device lost: ${info.message}`));
}

/**
 * Throws when the WebGPU device reported an error since the last call: every result since
 * then may be wrong. Commands call it where they are about to trust or save numbers.
 */
export function checkDevice(what: string): void {
  if (!deviceErrors.length) return;
  const first = deviceErrors.splice(0).join('; ');
  throw new Error(`WebGPU reported an error during ${what}, so its results are not trusted: ${first}`);
}

function versions(): Record<string, string> {
  const v: Record<string, string> = { node: process.versions.node, 'tfjs-core': tf.version_core };
  const tryVersion = (pkg: string) => {
    try {
      v[pkg.replace('@tensorflow/', '')] = (require(`${pkg}/package.json`) as { version: string }).version;
    } catch {
      /* not installed */
    }
  };
  tryVersion('@tensorflow/tfjs-node');
  tryVersion('@tensorflow/tfjs-node-gpu');
  tryVersion('@tensorflow/tfjs-backend-wasm');
  tryVersion('@tensorflow/tfjs-backend-webgpu');
  tryVersion('webgpu');
  return v;
}

/**
 * Picks and activates the backend. Explicit requests that cannot be met are bad input
 * (exit 2); the automatic choice falls back and says so once on stderr.
 */
export async function initBackend(opts: { prefer?: BackendName; quiet?: boolean; intraOpThreads?: number } = {}): Promise<BackendInfo> {
  // Token-by-token work is a stream of tiny kernels, where TensorFlow's intra-op thread
  // pool costs more than it gives (measured: 36 -> 22 ms/token at cache 64 with one
  // thread, same numbers). Commands that stream ask for one; the user's setting wins.
  // It must be set before the native library loads.
  if (opts.intraOpThreads && !nativeProbe) process.env.TF_NUM_INTRAOP_THREADS ??= String(opts.intraOpThreads);
  const envPref = process.env.SINKLM_BACKEND;
  if (envPref && !(BACKENDS as readonly string[]).includes(envPref)) {
    throw new UserError(`must be one of ${BACKENDS.join(', ')} (got "${envPref}")`, { field: 'SINKLM_BACKEND' });
  }
  const requested = opts.prefer ?? (envPref as BackendName | undefined);
  if (current && (!requested || requested === current.backend)) return current;

  const probe = probeNative();
  // A hardware adapter runs first; a software one only when asked for.
  const gpuProbe = await probeWebGPU(requested === 'webgpu', captured);
  const hardware = gpuProbe.ok && !gpuProbe.adapter!.software;
  const webgpu = {
    available: gpuProbe.ok && (hardware || requested === 'webgpu'),
    adapter: gpuProbe.adapter,
    error: gpuProbe.ok ? (hardware || requested === 'webgpu' ? undefined : `only a software adapter (${adapterLine(gpuProbe.adapter!)}): used with --backend webgpu`) : gpuProbe.error,
  };
  const native = {
    available: probe.ok,
    package: probe.pkg,
    tensorflow: probe.tfVersion,
    error: probe.error,
    howto: probe.ok ? undefined : NATIVE_HOWTO,
  };
  let backend: BackendName;
  let reason: string;
  if (requested) {
    if (requested === 'tensorflow' && !probe.ok) {
      throw new UserError(`native TensorFlow is unavailable (${probe.error}); to get it: ${NATIVE_HOWTO}`, {
        field: '--backend tensorflow',
      });
    }
    if (requested === 'webgpu' && !gpuProbe.ok) {
      throw new UserError(`WebGPU is unavailable: ${gpuProbe.error}`, { field: '--backend webgpu' });
    }
    backend = requested;
    reason = `requested (${opts.prefer ? '--backend' : 'SINKLM_BACKEND'})`;
    if (requested === 'webgpu') reason += ` on ${adapterLine(gpuProbe.adapter!)}`;
  } else if (hardware) {
    backend = 'webgpu';
    reason = `a hardware WebGPU adapter: ${adapterLine(gpuProbe.adapter!)}`;
  } else if (probe.ok) {
    backend = 'tensorflow';
    reason = `native ${probe.pkg} loaded (TensorFlow ${probe.tfVersion ?? '?'})`;
  } else {
    backend = 'wasm';
    reason = `native TensorFlow unavailable: ${probe.error}`;
  }
  try {
    await activate(backend, !!gpuProbe.adapter?.software);
  } catch (e) {
    if (requested || backend === 'cpu') throw e;
    reason += `; ${backend} failed (${shortError(e)})`;
    backend = backend === 'webgpu' && probe.ok ? 'tensorflow' : 'cpu';
    await activate(backend);
  }
  if (!requested && backend === 'webgpu' && !opts.quiet) process.stderr.write(`sinklm: using the webgpu backend (${reason})\n`);
  if (!requested && backend !== 'tensorflow' && backend !== 'webgpu' && !opts.quiet) {
    process.stderr.write(`sinklm: using the ${backend} backend (${reason}). For ~3-70x faster runs: ${NATIVE_HOWTO}\n`);
  }
  current = {
    backend,
    reason,
    native,
    gpu: backend === 'webgpu' ? !gpuProbe.adapter!.software : probe.pkg === '@tensorflow/tfjs-node-gpu',
    webgpu,
    kernels: kernelInfo(backend, probe),
    versions: versions(),
    threads: Number(process.env.TF_NUM_INTRAOP_THREADS) || (os.availableParallelism?.() ?? os.cpus().length),
  };
  return current;
}

/** The active backend; initialises the automatic choice on first use. */
export async function ensureBackend(): Promise<BackendInfo> {
  return current ?? initBackend({ quiet: true });
}

export function backendInfo(): BackendInfo {
  if (!current) throw new Error('backend not initialised; call initBackend() first');
  return current;
}
