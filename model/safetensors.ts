/**
 * A small safetensors reader and writer (the format is 8 bytes of header length, a JSON
 * header, then raw little-endian tensor bytes). We read F32, F16, BF16 and F64 into
 * Float32Array (real Pythia checkpoints ship in float16; compute is float32) and write F32
 * or F16.
 *
 * Reading goes tensor by tensor from an open file, never the whole file at once: a
 * Pythia-1B file is 2 GB of float16 (more than one Node buffer may hold) that becomes 4 GB
 * of float32, and only one copy of it should be alive.
 */
import * as fs from 'node:fs';
import { UserError } from '../core/errors.js';
import { writeFileAtomicFrom } from '../core/fsutil.js';

export interface NamedArray {
  shape: number[];
  data: Float32Array;
}
export type TensorMap = Map<string, NamedArray>;

export type StoredDtype = 'F32' | 'F16' | 'BF16' | 'F64';
const DTYPE_BYTES: Record<StoredDtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('sinklm: big-endian hosts are not supported');

/** IEEE half -> number, from the format's definition (subnormals, infinities, NaN). */
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** number -> IEEE half bits, rounding to nearest even (as torch's .half()); overflow is +-Infinity. */
const f32Bits = new Float32Array(1);
const u32Bits = new Uint32Array(f32Bits.buffer);
export function f32ToF16(x: number): number {
  f32Bits[0] = x;
  const u = u32Bits[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const man = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): shift the full mantissa down, round to nearest even.
    if (e < -10) return sign;
    const m = man | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rest > half || (rest === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rest = man & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry into the exponent is still right
  return sign | h;
}

let halfTable: Float32Array | undefined;
/** All 65,536 halves decoded once: a lookup is far cheaper than the formula per weight. */
function f16Table(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = f16ToF32(h);
  }
  return halfTable;
}

function decodeInto(dtype: StoredDtype, raw: Uint8Array, out: Float32Array): void {
  const n = out.length;
  if (dtype === 'F16') {
    const table = f16Table();
    const u = new Uint16Array(raw.buffer, raw.byteOffset, n);
    for (let i = 0; i < n; i++) out[i] = table[u[i]!]!;
  } else if (dtype === 'BF16') {
    // bfloat16 is the top half of a float32.
    const u = new Uint16Array(raw.buffer, raw.byteOffset, n);
    const o = new Uint32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) o[i] = u[i]! << 16;
  } else if (dtype === 'F64') {
    out.set(new Float64Array(raw.buffer, raw.byteOffset, n));
  }
}

function readFully(fd: number, into: Uint8Array, position: number, file: string): void {
  for (let at = 0; at < into.length; ) {
    const got = fs.readSync(fd, into, at, Math.min(into.length - at, 2 ** 30), position + at);
    if (got <= 0) throw new UserError(`not a valid safetensors file: ends ${into.length - at} bytes early (truncated?)`, { file });
    at += got;
  }
}

function openForRead(file: string): number {
  try {
    const st = fs.statSync(file);
    if (st.isDirectory()) throw new UserError('is a folder, not a file', { file });
    return fs.openSync(file, 'r');
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? 'file not found' : `cannot read (${code})`, { file });
  }
}

export interface HeaderEntry {
  dtype: string;
  shape: number[];
  /** Byte offsets within the data section. */
  begin: number;
  end: number;
}

/** The header of a .safetensors file, checked against the file's size; no tensor is read. */
export function readSafetensorsHeader(file: string): { entries: Map<string, HeaderEntry>; metadata: Record<string, string>; dataStart: number } {
  const fd = openForRead(file);
  try {
    return parseHeader(fd, file);
  } finally {
    fs.closeSync(fd);
  }
}

function parseHeader(fd: number, file: string): { entries: Map<string, HeaderEntry>; metadata: Record<string, string>; dataStart: number } {
  const size = fs.fstatSync(fd).size;
  const fail = (msg: string) => new UserError(`not a valid safetensors file: ${msg}`, { file });
  if (size < 8) throw fail(`only ${size} bytes`);
  const lenBytes = Buffer.alloc(8);
  readFully(fd, lenBytes, 0, file);
  const headerLen = Number(lenBytes.readBigUInt64LE(0));
  if (headerLen < 2 || 8 + headerLen > size) throw fail(`header length ${headerLen} exceeds the file (${size} bytes; truncated?)`);
  const headerBytes = Buffer.alloc(headerLen);
  readFully(fd, headerBytes, 8, file);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(headerBytes.toString('utf8'));
  } catch {
    throw fail('header is not JSON');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw fail('header is not a JSON object');
  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  const entries = new Map<string, HeaderEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = (info ?? {}) as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets } = (info ?? {}) as { dtype: string; shape: number[]; data_offsets: [number, number] };
    if (typeof dtype !== 'string' || !Array.isArray(shape) || !Array.isArray(data_offsets)) throw fail(`tensor ${name} lacks dtype, shape or data_offsets`);
    const [begin, end] = data_offsets;
    if (!(Number.isInteger(begin) && Number.isInteger(end) && 0 <= begin && begin <= end)) throw fail(`tensor ${name} has data_offsets [${data_offsets}]`);
    if (end > dataLen) throw fail(`tensor ${name} ends at byte ${end} but the data has ${dataLen} bytes (truncated?)`);
    entries.set(name, { dtype, shape, begin, end });
  }
  return { entries, metadata, dataStart };
}

/**
 * Reads a .safetensors file into float32; any structural problem is a UserError naming the
 * file. `keep` picks the tensors to read: the others (e.g. the BOOL attention masks older
 * transformers saved beside the weights) are neither read nor checked for their dtype.
 */
export function readSafetensors(file: string, opts: { keep?: (name: string) => boolean } = {}): { tensors: TensorMap; metadata: Record<string, string> } {
  const fd = openForRead(file);
  try {
    const { entries, metadata, dataStart } = parseHeader(fd, file);
    const fail = (msg: string) => new UserError(`not a valid safetensors file: ${msg}`, { file });
    const tensors: TensorMap = new Map();
    let scratch = new Uint8Array(0);
    for (const [name, e] of entries) {
      if (opts.keep && !opts.keep(name)) continue;
      if (!(e.dtype in DTYPE_BYTES)) throw new UserError(`tensor ${name} has dtype ${e.dtype}; only F32, F16, BF16 and F64 are supported`, { file });
      const dtype = e.dtype as StoredDtype;
      const count = e.shape.reduce((a, b) => a * b, 1);
      if (e.end - e.begin !== count * DTYPE_BYTES[dtype]) throw fail(`tensor ${name}: ${e.end - e.begin} bytes for shape [${e.shape}] ${dtype}`);
      const data = new Float32Array(count);
      if (dtype === 'F32') {
        readFully(fd, new Uint8Array(data.buffer), dataStart + e.begin, file);
      } else {
        // One aligned scratch buffer, grown to the largest tensor, so no typed view is misaligned.
        const bytes = e.end - e.begin;
        if (scratch.length < bytes) scratch = new Uint8Array(bytes);
        const raw = scratch.subarray(0, bytes);
        readFully(fd, raw, dataStart + e.begin, file);
        decodeInto(dtype, raw, data);
      }
      tensors.set(name, { shape: e.shape, data });
    }
    return { tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes tensors atomically, in the given order, 8-byte aligned header: float32, or float16
 * (`dtype: 'F16'`, rounded to nearest even) as HF ships Pythia.
 */
export function writeSafetensors(file: string, tensors: TensorMap, metadata: Record<string, string> = {}, opts: { dtype?: 'F32' | 'F16' } = {}): void {
  const list = [...tensors];
  writeSafetensorsFrom(
    file,
    list.map(([name, t]) => ({ name, shape: t.shape })),
    (i) => list[i]![1].data,
    metadata,
    opts,
  );
}

/**
 * writeSafetensors for tensors made one at a time: `data(i)` gives tensor i's values when
 * its turn comes, so a model far larger than what one wants in memory twice (a random
 * Pythia-160M for the bench: 650 MB as float32) is written holding one tensor at a time.
 */
export function writeSafetensorsFrom(
  file: string,
  specs: { name: string; shape: number[] }[],
  data: (i: number) => Float32Array,
  metadata: Record<string, string> = {},
  opts: { dtype?: 'F32' | 'F16' } = {},
): void {
  const dtype = opts.dtype ?? 'F32';
  const width = DTYPE_BYTES[dtype];
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  let offset = 0;
  for (const s of specs) {
    const bytes = s.shape.reduce((a, b) => a * b, 1) * width;
    header[s.name] = { dtype, shape: s.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const lead = Buffer.alloc(8 + headerBytes.length);
  lead.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(lead, 8);
  writeFileAtomicFrom(file, (write) => {
    write(lead);
    specs.forEach((s, i) => {
      const d = data(i);
      const count = s.shape.reduce((a, b) => a * b, 1);
      if (d.length !== count) throw new Error(`writeSafetensors: ${s.name} has ${d.length} values for shape [${s.shape}]`);
      if (dtype === 'F32') {
        write(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      } else {
        const h = new Uint16Array(count);
        for (let j = 0; j < count; j++) h[j] = f32ToF16(d[j]!);
        write(new Uint8Array(h.buffer));
      }
    });
  });
}
