// Building sinklm's own TensorFlow ops (native/*.cc) against the TensorFlow C
// library the addon was built with, into sinklm_ops.node beside the addon. Called by
// setup-native.mjs after the addon; plain Node ESM with built-ins only.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addonPath, cacheDir, findPython, FORCE, installFile, log, ROOT, run, secs, SetupError, tail, TAG } from './native-common.mjs';

// sinklm's own TensorFlow ops (native/*.cc, registered by ops.cc): an N-API module beside the addon, built
// against the same libtensorflow_framework and the wheel's C kernel API headers, with
// -O3 -march=native (the build happens on the machine that runs it) and, when that fails to
// compile or load, a portable -O3 build. Cached per source, library, Node, CPU and flags.
// A failure only means sinklm runs without them (`sinklm doctor` says so).

const OPS_DIR = path.join(ROOT, 'native');
/** The op library's sources (every .cc in native/) and headers, in a fixed order. */
const opsFiles = () => (fs.existsSync(OPS_DIR) ? fs.readdirSync(OPS_DIR).filter((f) => /\.(cc|h)$/.test(f)).sort().map((f) => path.join(OPS_DIR, f)) : []);
const OPS_NAME = 'sinklm_ops.node';
/** A header kernels.h includes that extractions made before the op library did not keep. */
const OPS_EXTRA_HEADERS = 'tensorflow/core/common_runtime/next_pluggable_device/c/';
// -fno-math-errno -fno-trapping-math change no value (errno and FP-exception flags only) but
// let the exp/erf loops vectorise (floor becomes one instruction).
const OPS_FLAGS = [
  { name: 'native', flags: ['-O3', '-march=native', '-fno-math-errno', '-fno-trapping-math'] },
  { name: 'portable', flags: ['-O3', '-fno-math-errno', '-fno-trapping-math'] },
];

/** The C headers the op library needs, in deps/include; pulls the missing ones from the wheel. */
function opsIncludeDir(pkgDir) {
  const inc = path.join(pkgDir, 'deps', 'include');
  if (!fs.existsSync(path.join(inc, 'tensorflow', 'c', 'kernels.h'))) {
    throw new SetupError('the TensorFlow C library in use has no tensorflow/c/kernels.h (the C kernel API)');
  }
  if (fs.existsSync(path.join(inc, OPS_EXTRA_HEADERS, 'tf_rendezvous_c_api.h'))) return inc;
  let source;
  try {
    source = JSON.parse(fs.readFileSync(path.join(pkgDir, 'deps', 'sinklm-source.json'), 'utf8')).source;
  } catch {
    /* below */
  }
  const py = findPython();
  if (!source?.endsWith('.whl') || !fs.existsSync(source) || !py) {
    throw new SetupError(`tensorflow/c/kernels.h needs ${OPS_EXTRA_HEADERS}*.h, which deps/include lacks and no wheel is at hand to supply`, {
      hint: 'npm run setup-native rebuilds deps/ from the wheel',
    });
  }
  const code = `
import os, sys, zipfile
pre = 'tensorflow/include/'
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith(pre + sys.argv[3]) and n.endswith('.h'):
            d = os.path.join(sys.argv[2], n[len(pre):])
            os.makedirs(os.path.dirname(d), exist_ok=True)
            with open(d, 'wb') as f:
                f.write(z.read(n))
`;
  const r = run(py, ['-c', code, source, inc, OPS_EXTRA_HEADERS], { timeout: 120_000 });
  if (r.status !== 0) throw new SetupError('could not take the kernel API headers from the wheel', { detail: tail(r.output, 6) });
  return inc;
}

function nodeIncludeDir() {
  const cands = [];
  if (process.env.npm_config_nodedir) cands.push(path.join(process.env.npm_config_nodedir, 'include', 'node'));
  cands.push(path.join(path.resolve(path.dirname(process.execPath), '..'), 'include', 'node'));
  const gyp = path.join(os.homedir(), '.cache', 'node-gyp', process.versions.node, 'include', 'node');
  cands.push(gyp);
  const found = cands.find((d) => fs.existsSync(path.join(d, 'node_api.h')));
  if (!found) throw new SetupError('Node headers (node_api.h) not found', { hint: 'set npm config nodedir, or install the Node headers' });
  return found;
}

/** What -march=native means here: the CPU model and its flags. */
function cpuSignature() {
  try {
    const info = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const first = (key) => new RegExp(`^${key}\\s*:\\s*(.*)$`, 'm').exec(info)?.[1] ?? '';
    return `${first('model name')}|${first('flags')}`;
  } catch {
    return os.cpus()[0]?.model ?? '';
  }
}

/** In a child process: tfjs-node, then the op library, then one op checked against its formula. */
function probeOps(pkgDir, lib) {
  const code = `
    try {
      const tf = require(${JSON.stringify(pkgDir)});
      const m = require(${JSON.stringify(lib)});
      if (m.error) throw new Error(m.error);
      const be = tf.backend();
      const y = be.executeMultipleOutputs('SinklmBiasGelu', [], [tf.tensor2d([[-1, 0, 2]]), tf.tensor1d([0, 0, 0])], 1)[0].dataSync();
      const want = [-0.15865525, 0, 1.95449974];
      if (want.some((w, i) => Math.abs(y[i] - w) > 1e-5)) throw new Error('SinklmBiasGelu computed ' + Array.from(y));
      process.stdout.write(JSON.stringify({ ok: true, ops: m.ops.length, build: m.build }));
    } catch (e) {
      process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message || e).split('\\n')[0] }));
    }`;
  const r = run(process.execPath, ['-e', code], { cwd: ROOT, timeout: 180_000, env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2' } });
  const out = String(r.stdout ?? '');
  try {
    return JSON.parse(out.slice(out.lastIndexOf('{"ok":')));
  } catch {
    return { ok: false, error: `loading crashed (${r.signal ?? `exit code ${r.status}`})` };
  }
}

// The stderr capture (native/stdio/capture.c): a C N-API module that links only libc, built
// beside the op library. core/backend.ts holds fd 2 in it while TensorFlow's libraries load.
const STDIO_SOURCE = path.join(OPS_DIR, 'stdio', 'capture.c');
const STDIO_NAME = 'sinklm_stdio.node';

/** In a child process: a line written to fd 2 during a capture comes back from end(). */
function probeStdio(lib) {
  const code = `
    const m = require(${JSON.stringify(lib)});
    const began = m.begin();
    process._rawDebug('sinklm-capture-probe');
    const text = m.end();
    process.stdout.write(JSON.stringify({ ok: began && text === 'sinklm-capture-probe\\n' }));`;
  const r = run(process.execPath, ['-e', code], { timeout: 60_000 });
  return String(r.stdout ?? '').includes('{"ok":true}');
}

function buildStdio(pkgDir) {
  if (!fs.existsSync(STDIO_SOURCE)) return;
  const target = path.join(path.dirname(addonPath(pkgDir)), STDIO_NAME);
  const key = createHash('sha256').update(JSON.stringify([fs.readFileSync(STDIO_SOURCE, 'utf8'), process.arch, process.versions.modules])).digest('hex').slice(0, 20);
  const cached = path.join(cacheDir(), 'addons', `sinklm-stdio-${key}`, STDIO_NAME);
  if (!FORCE && fs.existsSync(cached)) {
    installFile(cached, target);
    if (probeStdio(target)) return;
  }
  const tmp = `${target}.tmp-${process.pid}`;
  const cc = process.env.CC || 'gcc';
  const r = run(cc, ['-O2', '-fPIC', '-shared', '-DNODE_GYP_MODULE_NAME=sinklm_stdio', `-I${nodeIncludeDir()}`, STDIO_SOURCE, '-o', tmp], { timeout: 120_000 });
  if (r.status !== 0 || !fs.existsSync(tmp)) {
    fs.rmSync(tmp, { force: true });
    throw new SetupError('the stderr capture (native/stdio/capture.c) did not compile', { detail: tail(r.error?.message ?? r.output, 8) });
  }
  fs.renameSync(tmp, target);
  if (!probeStdio(target)) {
    fs.rmSync(target, { force: true });
    throw new SetupError('the stderr capture (native/stdio/capture.c) does not capture');
  }
  fs.mkdirSync(path.dirname(cached), { recursive: true });
  installFile(target, cached);
  log(`stderr capture ready (${secs()})`);
}

export function buildOps(pkgDir) {
  try {
    buildStdio(pkgDir);
  } catch (e) {
    log(`note: ${e.message}; TensorFlow's start-up lines will reach stderr`);
  }
  const files = opsFiles();
  const sources = files.filter((f) => f.endsWith('.cc'));
  if (!sources.length) return;
  const target = path.join(path.dirname(addonPath(pkgDir)), OPS_NAME);
  const libDir = path.join(pkgDir, 'deps', 'lib');
  const fw = path.join(libDir, 'libtensorflow_framework.so.2');
  const st = fs.statSync(fw);
  const key = createHash('sha256')
    .update(JSON.stringify([files.map((f) => [path.basename(f), fs.readFileSync(f, 'utf8')]), OPS_FLAGS, fs.realpathSync(fw), st.size, Math.round(st.mtimeMs), process.arch, process.versions.modules, cpuSignature()]))
    .digest('hex')
    .slice(0, 20);
  const cached = path.join(cacheDir(), 'addons', `sinklm-ops-${key}`, OPS_NAME);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  if (!FORCE && fs.existsSync(cached)) {
    installFile(cached, target);
    const p = probeOps(pkgDir, target);
    if (p.ok) return log(`sinklm ops ready (${p.ops} ops, cached build, ${p.build}) (${secs()})`);
    log(`the cached sinklm ops do not load (${p.error}); compiling instead`);
  }
  const inc = opsIncludeDir(pkgDir);
  const nodeInc = nodeIncludeDir();
  const cxx = process.env.CXX || 'g++';
  const failures = [];
  for (const { name, flags } of OPS_FLAGS) {
    const tmp = `${target}.tmp-${process.pid}`;
    log(`compiling sinklm's TensorFlow ops (${flags.join(' ')}; ~30 s)`);
    const r = run(
      cxx,
      [
        '-std=c++17', ...flags, '-fPIC', '-shared', '-DNODE_GYP_MODULE_NAME=sinklm_ops', `-DSINKLM_BUILD="${flags.join(' ')}"`,
        `-I${inc}`, `-I${nodeInc}`, ...sources, '-o', tmp, `-L${libDir}`, '-ltensorflow_framework', '-Wl,-rpath,$ORIGIN/../../deps/lib',
      ],
      { timeout: 600_000 },
    );
    if (r.status !== 0) {
      failures.push(`${name} build (${flags.join(' ')}) did not compile:`, ...tail(r.error?.message ?? r.output, 8));
      fs.rmSync(tmp, { force: true });
      continue;
    }
    fs.renameSync(tmp, target);
    const p = probeOps(pkgDir, target);
    if (p.ok) {
      try {
        fs.mkdirSync(path.dirname(cached), { recursive: true });
        installFile(target, cached);
      } catch (e) {
        log(`note: could not cache the sinklm ops (${e.message})`);
      }
      return log(`sinklm ops ready: ${p.ops} ops, ${name} build (${flags.join(' ')}) (${secs()})`);
    }
    failures.push(`${name} build (${flags.join(' ')}) does not load: ${p.error}`);
    fs.rmSync(target, { force: true });
  }
  throw new SetupError("sinklm's own TensorFlow ops could not be built", { detail: failures, hint: 'needs g++ with C++17 and the Node headers; npm run setup-native retries' });
}

export function explainOps(e) {
  const lines = [`${TAG} sinklm's TensorFlow ops (native/) are NOT built: ${e.message}`, ...(e.detail ?? []).map((l) => (l.startsWith('  ') ? l : `  ${l}`))];
  if (e.hint) lines.push(`  hint: ${e.hint}`);
  if (!(e instanceof SetupError)) lines.push(...tail(e.stack, 8));
  lines.push('  sinklm runs without them, on TensorFlow\'s own kernels (`sinklm doctor` says which run).');
  process.stderr.write(`${lines.join('\n')}\n`);
}
