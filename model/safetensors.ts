/**
 * A small safetensors reader and writer (the format is 8 bytes of header length, a JSON
 * header, then raw little-endian tensor bytes). We read F32, F16 and BF16 (real Pythia
 * checkpoints ship in half precision) into Float32Array, and write F32.
 */
import { UserError } from '../core/errors.js';
import { readFileBytes, writeFileAtomic } from '../core/fsutil.js';

export interface NamedArray {
  shape: number[];
  data: Float32Array;
}
export type TensorMap = Map<string, NamedArray>;

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

function decode(dtype: string, bytes: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'F32') {
    for (let i = 0; i < count; i++) out[i] = dv.getFloat32(i * 4, true);
  } else if (dtype === 'F16') {
    for (let i = 0; i < count; i++) out[i] = f16ToF32(dv.getUint16(i * 2, true));
  } else {
    // bfloat16 is the top half of a float32.
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) u[i] = dv.getUint16(i * 2, true) << 16;
  }
  return out;
}

/** Reads a .safetensors file; any structural problem is a UserError naming the file. */
export function readSafetensors(file: string): { tensors: TensorMap; metadata: Record<string, string> } {
  const buf = readFileBytes(file);
  const fail = (msg: string) => new UserError(`not a valid safetensors file: ${msg}`, { file });
  if (buf.length < 8) throw fail(`only ${buf.length} bytes`);
  const headerLen = Number(buf.readBigUInt64LE(0));
  if (headerLen < 2 || 8 + headerLen > buf.length) throw fail(`header length ${headerLen} exceeds the file (${buf.length} bytes; truncated?)`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'));
  } catch {
    throw fail('header is not JSON');
  }
  const dataStart = 8 + headerLen;
  const dataLen = buf.length - dataStart;
  const tensors: TensorMap = new Map();
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = (info ?? {}) as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets } = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
    if (!(dtype in DTYPE_BYTES)) throw new UserError(`tensor ${name} has dtype ${dtype}; only F32, F16 and BF16 are supported`, { file });
    if (!Array.isArray(shape) || !Array.isArray(data_offsets)) throw fail(`tensor ${name} lacks shape or data_offsets`);
    const count = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = data_offsets;
    if (end > dataLen) throw fail(`tensor ${name} ends at byte ${end} but the data has ${dataLen} bytes (truncated?)`);
    if (end - begin !== count * DTYPE_BYTES[dtype]!) throw fail(`tensor ${name}: ${end - begin} bytes for shape [${shape}] ${dtype}`);
    tensors.set(name, { shape, data: decode(dtype, buf.subarray(dataStart + begin, dataStart + end), count) });
  }
  return { tensors, metadata };
}

/** Writes float32 tensors atomically, in the given order, 8-byte aligned header. */
export function writeSafetensors(file: string, tensors: TensorMap, metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  let offset = 0;
  for (const [name, t] of tensors) {
    const bytes = t.data.length * 4;
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let pos = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    const src = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('big-endian hosts are not supported');
    src.copy(out, pos);
    pos += src.length;
  }
  writeFileAtomic(file, out);
}
