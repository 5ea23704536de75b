#!/usr/bin/env node
// sinklm setup-native: gives @tensorflow/tfjs-node (an optionalDependency) a working native
// addon without its own installer, which downloads libtensorflow 2.9.1 from the internet and
// so fails offline. Instead it takes a TensorFlow C library from
//   1. $SINKLM_LIBTENSORFLOW  - an unpacked libtensorflow tarball (lib/ + include/), or
//   2. $SINKLM_TF_WHEEL       - a TensorFlow CPU wheel (tensorflow_cpu-*.whl), or
//   3. a TensorFlow CPU wheel fetched by name with pip (local pip config locations first),
// puts it into node_modules/@tensorflow/tfjs-node/deps, and compiles the addon from source.
// Then it compiles sinklm's own TensorFlow ops (native/*.cc) against the same
// library into sinklm_ops.node beside the addon (scripts/native-ops.mjs).
//
// The wheel fetched (3) or taken from the cache is pinned to TensorFlow TF_VERSION below, so
// the native backend does not change under a user with each TensorFlow release; set
// SINKLM_TF_VERSION (e.g. 2.20.0) to build against another one. A wheel given by
// SINKLM_TF_WHEEL is used whatever its version.
//
// Runs as the package's `postinstall` and as `npm run setup-native` (passes --force to rebuild).
// It never fails the install: on any problem it explains on stderr and exits 0, and sinklm
// falls back to the wasm/cpu backend (core/backend.ts).
//
// Plain Node ESM with built-ins only: it runs before anything is compiled.

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  addonPath,
  cacheDir,
  CPU_PKG,
  findPackage,
  findPython,
  FORCE,
  installFile,
  GPU_PKG,
  log,
  ROOT,
  run,
  secs,
  SetupError,
  tail,
  TAG,
  TF_VERSION,
  WHEEL_PROJECT,
} from './native-common.mjs';
import { buildOps, explainOps } from './native-ops.mjs';

// ---------------------------------------------------------------------------------------------
// Probing: does the package load, in a child process (a failed dlopen must not taint us)?

function probe(pkgDir) {
  const code = `
    try {
      const tf = require(${JSON.stringify(pkgDir)});
      const b = tf.findBackend('tensorflow');
      const y = tf.tensor1d([1, 2, 3]).square().sum().dataSync()[0];
      if (y !== 14) throw new Error('smoke test computed ' + y + ' instead of 14');
      process.stdout.write(JSON.stringify({ ok: true, tf: b && b.binding && b.binding.TF_Version }));
    } catch (e) {
      process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message || e).split('\\n').slice(0, 3).join(' ') }));
    }`;
  const r = run(process.execPath, ['-e', code], {
    cwd: ROOT,
    timeout: 180_000,
    env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: process.env.TF_CPP_MIN_LOG_LEVEL ?? '2' },
  });
  const out = String(r.stdout ?? '');
  try {
    const res = JSON.parse(out.slice(out.lastIndexOf('{"ok":')).trim());
    if (res && typeof res.ok === 'boolean') return res;
  } catch {
    /* fall through */
  }
  const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit code ${r.status}`;
  return { ok: false, error: `loading crashed (${why})`, output: r.output };
}

// ---------------------------------------------------------------------------------------------
// Getting a TensorFlow C library: { tf, fw, include, source } with absolute file paths.

function fromLibtensorflowDir(dir) {
  const abs = path.resolve(dir);
  const libDir = path.join(abs, 'lib');
  const incDir = path.join(abs, 'include');
  const names = fs.existsSync(libDir) ? fs.readdirSync(libDir) : [];
  const pick = (stem) => {
    // Prefer the link name (resolves to the real file), else the longest versioned name.
    const cands = names.filter((n) => n === `${stem}.so` || n.startsWith(`${stem}.so.`));
    if (!cands.length) return undefined;
    const best = cands.includes(`${stem}.so`) ? `${stem}.so` : cands.sort((a, b) => b.length - a.length)[0];
    return fs.realpathSync(path.join(libDir, best));
  };
  const tf = pick('libtensorflow');
  const fw = pick('libtensorflow_framework');
  const missing = [];
  if (!tf) missing.push('lib/libtensorflow.so*');
  if (!fw) missing.push('lib/libtensorflow_framework.so*');
  if (!fs.existsSync(path.join(incDir, 'tensorflow', 'c', 'c_api.h'))) missing.push('include/tensorflow/c/c_api.h');
  if (missing.length) {
    throw new SetupError(`SINKLM_LIBTENSORFLOW=${dir} is not an unpacked libtensorflow tarball`, {
      detail: [`missing: ${missing.join(', ')}`],
      hint: 'point it at the directory that holds lib/ and include/ (as unpacked from libtensorflow-*-linux-x86_64-*.tar.gz)',
    });
  }
  return { tf, fw, include: incDir, source: abs };
}

function versionOf(wheelName) {
  const m = /-(\d+)\.(\d+)\.(\d+)/.exec(wheelName);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [0, 0, 0];
}

/** Cached CPU wheels of TF_VERSION for this machine's architecture, newest first. */
function cachedWheels(dir) {
  const arch = { x64: 'x86_64', arm64: 'aarch64' }[process.arch] ?? process.arch;
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((n) => n.startsWith(`tensorflow_cpu-${TF_VERSION}-`) && n.endsWith('.whl') && n.includes('linux') && n.includes(arch))
    .sort((a, b) => {
      const va = versionOf(a);
      const vb = versionOf(b);
      return vb[0] - va[0] || vb[1] - va[1] || vb[2] - va[2];
    })
    .map((n) => path.join(dir, n));
}


/**
 * Local package locations from pip's own configuration (files and PIP_* env vars), usable
 * with --no-index: file:// and path find-links as given, and for a file:// simple index its
 * per-project page, which pip accepts as a find-links page.
 */
function localPipLocations(py) {
  const r = run(py, ['-m', 'pip', 'config', 'list'], { timeout: 60_000 });
  const locations = [];
  if (r.status !== 0) return locations;
  const add = (loc) => {
    if (!locations.includes(loc)) locations.push(loc);
  };
  for (const line of r.stdout.split('\n')) {
    const m = /^(.*)\.(index-url|extra-index-url|find-links)=(['"]?)(.*)\3$/.exec(line.trim());
    if (!m) continue;
    const key = m[2];
    for (const value of m[4].split(/\s+/).filter(Boolean)) {
      const isFileUrl = value.startsWith('file:');
      const hasScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value);
      if (hasScheme && !isFileUrl) continue; // remote: left to the plain pip fallback
      let p;
      try {
        p = isFileUrl ? fileURLToPath(value) : path.resolve(value);
      } catch {
        continue;
      }
      if (key === 'find-links') {
        if (fs.existsSync(p)) add(value);
      } else {
        for (const project of [WHEEL_PROJECT, WHEEL_PROJECT.replace('-', '_')]) {
          const page = path.join(p, project);
          if (fs.existsSync(page)) add(`${pathToFileURL(page).href}/`);
        }
      }
    }
  }
  return locations;
}

/** Downloads the CPU wheel into the cache's wheels/ (via a private temp dir, then rename). */
function downloadWheel(wheelsDir) {
  const py = findPython();
  if (!py) {
    throw new SetupError('python3 is not available, so pip cannot fetch the TensorFlow CPU wheel', {
      hint: 'install python3 (node-gyp needs it too), or set SINKLM_TF_WHEEL / SINKLM_LIBTENSORFLOW',
    });
  }
  fs.mkdirSync(wheelsDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(wheelsDir, '.download-'));
  const base = ['-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '--disable-pip-version-check', '-d', tmp];
  const attempts = [];
  try {
    const locations = localPipLocations(py);
    if (locations.length) {
      log(`fetching ${WHEEL_PROJECT}==${TF_VERSION} with pip from local locations in pip config (${locations.length})`);
      const r = run(py, [...base, '--no-index', ...locations.flatMap((l) => ['--find-links', l]), `${WHEEL_PROJECT}==${TF_VERSION}`], {
        timeout: 300_000,
      });
      if (r.status === 0) return moveWheel(tmp, wheelsDir);
      attempts.push(`pip download --no-index (local locations) failed:`, ...tail(r.error?.message ?? r.output, 6));
    }
    log(`fetching ${WHEEL_PROJECT}==${TF_VERSION} (~275 MB) with pip from its configured index`);
    const r = run(py, [...base, '--timeout', '15', '--retries', '1', '--progress-bar', 'off', `${WHEEL_PROJECT}==${TF_VERSION}`], {
      timeout: 1_200_000,
    });
    if (r.status === 0) return moveWheel(tmp, wheelsDir);
    attempts.push(`pip download failed:`, ...tail(r.error?.message ?? r.output, 8));
    throw new SetupError(`could not fetch the ${WHEEL_PROJECT}==${TF_VERSION} wheel with pip`, {
      detail: attempts,
      hint: 'download a tensorflow_cpu-*.whl (Linux, any Python version) elsewhere and set SINKLM_TF_WHEEL to it',
    });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function moveWheel(tmp, wheelsDir) {
  const whl = fs.readdirSync(tmp).find((n) => n.endsWith('.whl'));
  if (!whl) throw new SetupError('pip reported success but left no .whl file');
  const dest = path.join(wheelsDir, whl);
  fs.renameSync(path.join(tmp, whl), dest);
  log(`saved ${whl} in ${wheelsDir} (${secs()})`);
  return dest;
}

// Extraction: only the two libraries and the C API headers, keyed by the wheel's name.
const EXTRACT_PY = `
import os, shutil, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
libs = {'tensorflow/libtensorflow_cc.so.2': 'lib/libtensorflow_cc.so.2',
        'tensorflow/libtensorflow_framework.so.2': 'lib/libtensorflow_framework.so.2'}
inc = 'tensorflow/include/'
keep = ('tensorflow/c/', 'tsl/', 'xla/tsl/c/', 'tensorflow/core/platform/ctstring',
        'tensorflow/core/common_runtime/next_pluggable_device/c/')
found, n = set(), 0
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        name = info.filename
        if info.is_dir() or '..' in name.split('/'):
            continue
        if name in libs:
            target = libs[name]; found.add(name)
        elif name.startswith(inc) and name[len(inc):].startswith(keep):
            target = 'include/' + name[len(inc):]
        else:
            continue
        dst = os.path.join(out, target)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with z.open(info) as src, open(dst, 'wb') as f:
            shutil.copyfileobj(src, f, 1 << 20)
        n += 1
missing = sorted(set(libs) - found)
if missing:
    sys.exit('the wheel lacks ' + ', '.join(missing) + ' (not a TensorFlow CPU wheel for Linux?)')
print(n)
`;

function extractedLayout(dir) {
  return {
    tf: path.join(dir, 'lib', 'libtensorflow_cc.so.2'),
    fw: path.join(dir, 'lib', 'libtensorflow_framework.so.2'),
    include: path.join(dir, 'include'),
  };
}

function extractWheel(wheel, extractRoot) {
  const key = path.basename(wheel).replace(/\.whl$/, '');
  const dest = path.join(extractRoot, key);
  if (fs.existsSync(path.join(dest, '.complete'))) {
    log(`reusing extracted ${key} from the cache`);
    return { ...extractedLayout(dest), source: wheel };
  }
  const py = findPython();
  if (!py) throw new SetupError('python3 is not available to unpack the wheel', { hint: 'install python3' });
  fs.mkdirSync(extractRoot, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(extractRoot, `.${key}.tmp-`));
  try {
    log(`extracting libtensorflow_cc.so.2, libtensorflow_framework.so.2 and C headers from ${path.basename(wheel)}`);
    const r = run(py, ['-c', EXTRACT_PY, wheel, tmp], { timeout: 300_000 });
    if (r.status !== 0) {
      throw new SetupError(`could not unpack ${wheel}`, {
        detail: tail(r.error?.message ?? r.output, 8),
        hint: 'the wheel may be truncated: delete it and run again',
      });
    }
    const layout = extractedLayout(tmp);
    for (const h of ['c/c_api.h', 'c/eager/c_api.h']) {
      if (!fs.existsSync(path.join(layout.include, 'tensorflow', h))) {
        throw new SetupError(`the wheel has no tensorflow/include/tensorflow/${h}`);
      }
    }
    fs.writeFileSync(path.join(tmp, '.complete'), `${wheel}\n`);
    fs.rmSync(dest, { recursive: true, force: true });
    try {
      fs.renameSync(tmp, dest);
    } catch (e) {
      // Another install finished the same extraction first: use it.
      if (!fs.existsSync(path.join(dest, '.complete'))) throw e;
    }
    log(`extracted into ${dest} (${secs()})`);
    return { ...extractedLayout(dest), source: wheel };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function obtainLibrary() {
  if (process.env.SINKLM_LIBTENSORFLOW) {
    log(`using the TensorFlow C library in SINKLM_LIBTENSORFLOW=${process.env.SINKLM_LIBTENSORFLOW}`);
    return fromLibtensorflowDir(process.env.SINKLM_LIBTENSORFLOW);
  }
  const cache = cacheDir();
  let wheel;
  if (process.env.SINKLM_TF_WHEEL) {
    wheel = path.resolve(process.env.SINKLM_TF_WHEEL);
    if (!fs.statSync(wheel, { throwIfNoEntry: false })?.isFile()) {
      throw new SetupError(`SINKLM_TF_WHEEL=${process.env.SINKLM_TF_WHEEL} is not a file`, {
        hint: 'set it to a tensorflow_cpu-*.whl file',
      });
    }
    log(`using the wheel in SINKLM_TF_WHEEL=${wheel}`);
  } else {
    const wheelsDir = path.join(cache, 'wheels');
    wheel = cachedWheels(wheelsDir)[0];
    if (wheel) log(`using cached wheel ${wheel}`);
    else wheel = downloadWheel(wheelsDir);
  }
  return extractWheel(wheel, path.join(cache, 'libtensorflow'));
}

// ---------------------------------------------------------------------------------------------
// Installing it into the package and building the addon.

/** Hard link when on the same filesystem (the cache may vanish; a hard link survives), else copy. */
function linkOrCopy(src, dst) {
  const tmp = `${dst}.tmp-${process.pid}`;
  try {
    fs.linkSync(src, tmp);
    fs.renameSync(tmp, dst);
    return 'hard-linked';
  } catch {
    fs.rmSync(tmp, { force: true });
    installFile(src, dst);
    return 'copied';
  }
}

/** DT_SONAME of an ELF64 little-endian shared library (undefined when it cannot tell). */
function elfSoname(file) {
  let fd;
  try {
    fd = fs.openSync(file, 'r');
    const read = (pos, len) => {
      const b = Buffer.alloc(len);
      fs.readSync(fd, b, 0, len, pos);
      return b;
    };
    const h = read(0, 64);
    if (h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2 || h[5] !== 1) return undefined;
    const shoff = Number(h.readBigUInt64LE(0x28));
    const shentsize = h.readUInt16LE(0x3a);
    const shnum = h.readUInt16LE(0x3c);
    const sh = read(shoff, shentsize * shnum);
    const section = (i) => ({
      type: sh.readUInt32LE(i * shentsize + 4),
      offset: Number(sh.readBigUInt64LE(i * shentsize + 0x18)),
      size: Number(sh.readBigUInt64LE(i * shentsize + 0x20)),
      link: sh.readUInt32LE(i * shentsize + 0x28),
    });
    for (let i = 0; i < shnum; i++) {
      const s = section(i);
      if (s.type !== 6 /* SHT_DYNAMIC */) continue;
      const dyn = read(s.offset, s.size);
      for (let o = 0; o + 16 <= dyn.length; o += 16) {
        const tag = dyn.readBigInt64LE(o);
        if (tag === 0n) break;
        if (tag === 14n /* DT_SONAME */) {
          const str = read(section(s.link).offset + Number(dyn.readBigUInt64LE(o + 8)), 256);
          const name = str.subarray(0, str.indexOf(0)).toString();
          return /^[\w.+-]+$/.test(name) ? name : undefined;
        }
      }
    }
    return undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * deps/lib gets the real file under its runtime name (stem.so.MAJOR), the link name (stem.so,
 * for -l at build time), and the library's soname and own file name (e.g.
 * libtensorflow_cc.so.2, which the built addon then asks for at run time). The addon's rpath
 * is $ORIGIN/../../deps/lib, so these are real files or links inside deps/lib only.
 */
function placeLibrary(src, libDir, stem) {
  const major = /\.so\.(\d+)/.exec(path.basename(src))?.[1] ?? '2';
  const runtime = `${stem}.so.${major}`;
  const how = linkOrCopy(src, path.join(libDir, runtime));
  const links = new Set([`${stem}.so`, path.basename(src)]);
  const soname = elfSoname(src);
  if (soname) links.add(soname);
  links.delete(runtime);
  for (const name of links) fs.symlinkSync(runtime, path.join(libDir, name));
  return how;
}

function populateDeps(pkgDir, lib) {
  const deps = path.join(pkgDir, 'deps');
  const libDir = path.join(deps, 'lib');
  fs.rmSync(deps, { recursive: true, force: true });
  fs.mkdirSync(libDir, { recursive: true });
  const how = placeLibrary(lib.tf, libDir, 'libtensorflow');
  placeLibrary(lib.fw, libDir, 'libtensorflow_framework');
  fs.cpSync(lib.include, path.join(deps, 'include'), { recursive: true, dereference: true });
  fs.writeFileSync(
    path.join(deps, 'sinklm-source.json'),
    `${JSON.stringify({ source: lib.source, libtensorflow: lib.tf, framework: lib.fw, at: new Date().toISOString() }, null, 2)}\n`,
  );
  log(`deps/ populated in ${path.relative(ROOT, pkgDir) || pkgDir} (libraries ${how})`);
}


function checkBuildTools() {
  const missing = [];
  if (!findPython()) missing.push('python3');
  if (run('make', ['--version']).error) missing.push('make');
  const cxx = process.env.CXX || 'c++';
  if (run(cxx, ['--version']).error && run('g++', ['--version']).error) missing.push('a C++ compiler (g++)');
  if (missing.length) {
    throw new SetupError(`build tools missing: ${missing.join(', ')}`, {
      hint: 'install them (e.g. the build-essential and python3 packages) and run again',
    });
  }
}

function nodeHeadersEnv() {
  if (process.env.npm_config_nodedir) return {};
  // Outside npm: use the headers installed next to this node binary when present (offline).
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? { npm_config_nodedir: prefix } : {};
}

function buildAddon(pkgDir) {
  checkBuildTools();
  let preGyp;
  try {
    preGyp = createRequire(path.join(pkgDir, 'package.json')).resolve('@mapbox/node-pre-gyp/bin/node-pre-gyp');
  } catch {
    throw new SetupError('@mapbox/node-pre-gyp (a dependency of tfjs-node) is not installed');
  }
  // Stale objects from an earlier build (node-pre-gyp builds in build-tmp-napi-vN) must not be reused.
  for (const d of fs.readdirSync(pkgDir)) {
    if (d === 'build' || d.startsWith('build-tmp-napi-v')) fs.rmSync(path.join(pkgDir, d), { recursive: true, force: true });
  }
  fs.rmSync(path.dirname(addonPath(pkgDir)), { recursive: true, force: true });
  log(`compiling the addon (node-pre-gyp install --build-from-source; ~20 s)`);
  const r = run(process.execPath, [preGyp, 'install', '--build-from-source'], {
    cwd: pkgDir,
    timeout: 600_000,
    env: { ...process.env, ...nodeHeadersEnv() },
  });
  const addon = addonPath(pkgDir);
  if (r.status !== 0 || !fs.existsSync(addon)) {
    throw new SetupError('compiling the tfjs-node addon failed', {
      detail: tail(r.error?.message ?? r.output, 25),
      hint: 'node-gyp needs python3, make, g++ and Node headers (npm config nodedir, or network access)',
    });
  }
  log(`built ${path.relative(ROOT, addon)} (${secs()})`);
}

/**
 * The compiled addon, cached per package version, N-API build, Node major, platform and exact
 * library files, so a repeated npm ci skips the compile. --force always compiles afresh.
 */
function cachedAddon(pkgDir, lib) {
  const pj = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  const id = (f) => {
    const st = fs.statSync(f);
    return [fs.realpathSync(f), st.size, Math.round(st.mtimeMs)];
  };
  const key = createHash('sha256')
    .update(
      JSON.stringify([
        pj.name,
        pj.version,
        process.platform,
        process.arch,
        process.versions.node.split('.')[0],
        path.relative(pkgDir, addonPath(pkgDir)),
        id(lib.tf),
        id(lib.fw),
        fs.readdirSync(lib.include).sort(),
      ]),
    )
    .digest('hex')
    .slice(0, 20);
  return path.join(cacheDir(), 'addons', `${pj.name.replace('/', '+')}-${pj.version}-${key}`, path.basename(addonPath(pkgDir)));
}

function saveAddon(pkgDir, cached) {
  try {
    fs.mkdirSync(path.dirname(cached), { recursive: true });
    const tmp = `${cached}.tmp-${process.pid}`;
    fs.copyFileSync(addonPath(pkgDir), tmp);
    fs.renameSync(tmp, cached);
  } catch (e) {
    log(`note: could not cache the built addon (${e.message})`);
  }
}


// ---------------------------------------------------------------------------------------------

function setupPackage(name, pkgDir, { gpu }) {
  if (!FORCE) {
    const p = probe(pkgDir);
    if (p.ok) {
      log(`${name} already loads (TensorFlow ${p.tf ?? '?'}); nothing to do (npm run setup-native rebuilds)`);
      if (p.tf && p.tf !== TF_VERSION) log(`note: it was built against TensorFlow ${p.tf}, not the pinned ${TF_VERSION}; npm run setup-native rebuilds against the pin`);
      return p;
    }
    const why = /native addon module/.test(p.error ?? '') ? 'addon not built' : String(p.error).slice(0, 200);
    log(`${name} is installed but does not load yet (${why}); setting it up`);
  }
  if (gpu && !process.env.SINKLM_LIBTENSORFLOW) {
    throw new SetupError('it needs the GPU build of libtensorflow, which sinklm does not fetch', {
      detail: [
        `${name}@4.22.0 wants libtensorflow 2.9.1 built for GPU with CUDA 11.2 + cuDNN 8.1`,
        '(on CUDA 12 systems it cannot load libcudart.so.11.0 and runs on the CPU).',
      ],
      hint: 'unpack libtensorflow-gpu-linux-x86_64-2.9.1.tar.gz, set SINKLM_LIBTENSORFLOW=<that directory>, run npm run setup-native',
    });
  }
  const lib = obtainLibrary();
  populateDeps(pkgDir, lib);
  const cached = cachedAddon(pkgDir, lib);
  if (!FORCE && fs.existsSync(cached)) {
    const addon = addonPath(pkgDir);
    fs.mkdirSync(path.dirname(addon), { recursive: true });
    installFile(cached, addon);
    const p = probe(pkgDir);
    if (p.ok) {
      log(`${name} ready with the addon cached for this library: native TensorFlow ${p.tf ?? '?'} (${secs()})`);
      return p;
    }
    log(`the cached addon does not load (${String(p.error).slice(0, 120)}); compiling instead`);
  }
  buildAddon(pkgDir);
  const p = probe(pkgDir);
  if (p.ok) saveAddon(pkgDir, cached);
  if (!p.ok) {
    throw new SetupError(`the addon was built but ${name} still does not load`, {
      detail: [p.error, ...tail(p.output, 10)],
      hint: 'the TensorFlow C library may not match this machine (architecture, glibc) or lack symbols the addon needs',
    });
  }
  log(`${name} ready: native TensorFlow ${p.tf ?? '?'} (${secs()})`);
  return p;
}

function explain(name, e, pkgDir, { cpuNative = false } = {}) {
  // A failed --force rebuild that stopped before touching deps/ leaves a working build.
  const still = FORCE && pkgDir ? probe(pkgDir) : undefined;
  const lines = [
    still?.ok
      ? `${TAG} rebuilding native TensorFlow for ${name} failed: ${e.message}`
      : `${TAG} native TensorFlow for ${name} is NOT set up: ${e.message}`,
    ...(e.detail ?? []).map((l) => (l.startsWith('  ') ? l : `  ${l}`)),
  ];
  if (e.hint) lines.push(`  hint: ${e.hint}`);
  if (!(e instanceof SetupError)) lines.push(...tail(e.stack, 8));
  if (still?.ok || cpuNative) {
    lines.push(
      still?.ok
        ? `  The existing build still loads (TensorFlow ${still.tf ?? '?'}) and stays in use.`
        : `  sinklm uses native TensorFlow through ${CPU_PKG} (CPU) meanwhile.`,
    );
    process.stderr.write(`${lines.join('\n')}\n`);
    return;
  }
  lines.push(
    '  sinklm still works, on the slower wasm/cpu backend. To get native TensorFlow, any of:',
    '    - SINKLM_TF_WHEEL=/path/to/tensorflow_cpu-<ver>-<py>-manylinux_x86_64.whl (any Python tag)',
    '    - SINKLM_LIBTENSORFLOW=/path/to/unpacked/libtensorflow (holds lib/ and include/)',
    `    - a pip that can fetch it: python3 -m pip download --no-deps ${WHEEL_PROJECT}==${TF_VERSION}`,
    '    and build tools (python3, make, g++); then run:  npm run setup-native',
  );
  process.stderr.write(`${lines.join('\n')}\n`);
}

function main() {
  const cpuDir = findPackage(CPU_PKG);
  const gpuDir = findPackage(GPU_PKG);
  if (!cpuDir && !gpuDir) {
    log(
      `${CPU_PKG} is not installed (npm before 11 drops it when its own download fails); ` +
        `to get it: npm install --no-save --ignore-scripts ${CPU_PKG}@4.22.0 && npm run setup-native`,
    );
    return;
  }
  if (process.platform !== 'linux') {
    log(`building native TensorFlow from a wheel is supported on Linux only (this is ${process.platform}); ${CPU_PKG}'s own install applies`);
    return;
  }
  let cpuOk = false;
  if (cpuDir) {
    try {
      cpuOk = setupPackage(CPU_PKG, cpuDir, { gpu: false }).ok;
    } catch (e) {
      explain(CPU_PKG, e, cpuDir);
    }
    if (cpuOk) {
      try {
        buildOps(cpuDir);
      } catch (e) {
        explainOps(e);
      }
    }
  }
  if (gpuDir) {
    try {
      setupPackage(GPU_PKG, gpuDir, { gpu: true });
    } catch (e) {
      explain(GPU_PKG, e, gpuDir, { cpuNative: cpuOk });
    }
  }
}

try {
  main();
} catch (e) {
  explain(CPU_PKG, e);
}
process.exitCode = 0;
