// What the native set-up steps share: paths, logging, errors, running tools, the cache.
// Plain Node ESM with built-ins only (it runs before anything is compiled).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export const TAG = 'sinklm setup-native:';
export const FORCE = process.argv.includes('--force');
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CPU_PKG = '@tensorflow/tfjs-node';
export const GPU_PKG = '@tensorflow/tfjs-node-gpu';
export const WHEEL_PROJECT = 'tensorflow-cpu';
/** The TensorFlow release the addon is built against (numerics and kernels are measured on it). */
export const TF_VERSION = process.env.SINKLM_TF_VERSION || '2.21.0';
export const T0 = Date.now();

export const secs = () => `${((Date.now() - T0) / 1000).toFixed(1)} s`;
export const log = (msg) => console.log(`${TAG} ${msg}`);

/** A failure with what went wrong (message), supporting lines (detail) and a specific hint. */
export class SetupError extends Error {
  constructor(message, { detail = [], hint } = {}) {
    super(message);
    this.detail = detail;
    this.hint = hint;
  }
}

export function cacheDir() {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'sinklm');
}

/** Last `n` non-empty lines of a process's output, indented, for error reports. */
export function tail(text, n = 25) {
  return String(text ?? '')
    .split('\n')
    .filter((l) => l.trim())
    .slice(-n)
    .map((l) => `    ${l}`);
}

export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  return { ...r, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

export function findPackage(name) {
  const req = createRequire(path.join(ROOT, 'package.json'));
  try {
    return path.dirname(req.resolve(`${name}/package.json`));
  } catch {
    return undefined;
  }
}

export function findPython() {
  for (const py of ['python3', 'python']) {
    const r = run(py, ['--version']);
    if (r.status === 0) return py;
  }
  return undefined;
}

/** Where node-pre-gyp puts and finds the addon: binary.module_path with the best N-API version. */
/**
 * Puts a copy of `src` at `dst` by writing it aside and renaming it into place: a process
 * that has the old file mapped (a training run in the background) keeps its copy intact,
 * where copying over it would change the code under its feet.
 */
export function installFile(src, dst) {
  const tmp = `${dst}.tmp-${process.pid}`;
  fs.copyFileSync(src, tmp);
  fs.renameSync(tmp, dst);
}

export function addonPath(pkgDir) {
  const pj = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  const own = Number(process.versions.napi);
  const napi = Math.max(...(pj.binary?.napi_versions ?? [own]).filter((v) => v <= own));
  const modulePath = (pj.binary?.module_path ?? './lib/napi-v{napi_build_version}').replace('{napi_build_version}', String(napi));
  return path.join(pkgDir, modulePath, `${pj.binary?.module_name ?? 'tfjs_binding'}.node`);
}
