import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from './errors.js';

/**
 * Writes a file so that readers see either the old content or the new, never half:
 * write to a temporary name beside it, fsync, rename over.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  writeFileAtomicFrom(file, (write) => write(typeof data === 'string' ? Buffer.from(data) : data));
}

/** writeFileAtomic for content produced in pieces (e.g. a large checkpoint, tensor by tensor). */
export function writeFileAtomicFrom(file: string, body: (write: (bytes: Uint8Array) => void) => void): void {
  const dir = path.dirname(file);
  makeDirs(dir);
  // A folder at `file` would put the temp file beside it, in the folder's parent.
  if (fs.statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw new UserError('is a folder; give a file name', { file });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w');
  try {
    try {
      body((bytes) => writeAll(fd, bytes));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fsyncDir(dir);
}

/** Writes every byte: fs.writeSync may write fewer than asked (a full disk, a signal, a pipe). */
export function writeAll(fd: number, data: Uint8Array): void {
  for (let at = 0; at < data.length; ) {
    const n = fs.writeSync(fd, data, at, data.length - at);
    if (n <= 0) throw new Error(`write returned ${n} with ${data.length - at} bytes left`);
    at += n;
  }
}

/** fsync a directory so that a rename inside it survives a crash. */
export function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Some filesystems refuse to open directories; the rename is still atomic there.
  }
}

/** A file's bytes; a missing or unreadable file is a UserError naming it. */
export function readFileBytes(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a folder, not a file' : `cannot read (${code})`, { file });
  }
}

/** Reads a JSON file, turning a missing file or bad JSON into a UserError naming it. */
export function readJsonFile(file: string): unknown {
  const text = readFileBytes(file).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`not valid JSON (${(e as Error).message})`, { file });
  }
}

/**
 * Reads a UTF-8 text file, refusing a missing file, binary content (NUL bytes) and
 * invalid UTF-8 with a UserError naming the file.
 */
export function readUtf8File(file: string): string {
  return decodeUtf8(readFileBytes(file), file);
}

/** The text of bytes read from `file` (or stdin), by readUtf8File's rule. */
export function decodeUtf8(bytes: Uint8Array, file: string): string {
  const nul = bytes.indexOf(0);
  if (nul >= 0) throw new UserError(`binary file, not text (NUL byte at offset ${nul})`, { file });
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new UserError('not valid UTF-8 text', { file });
  }
}

/** Checks that a directory can be created and written to, before a long job starts. */
export function ensureWritableDir(dir: string): void {
  makeDirs(dir);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new UserError(`output folder is not writable (${(e as NodeJS.ErrnoException).code})`, { file: dir });
  }
}

/**
 * mkdir -p, one level at a time. Node's own recursive mkdir loops forever where mkdir
 * answers ENOENT for a parent that exists (/proc); this one makes each missing level once
 * and stops with a UserError naming the folder at the first refusal.
 */
export function makeDirs(dir: string): void {
  const missing: string[] = [];
  let at = path.resolve(dir);
  for (;;) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(at);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new UserError(`cannot look at ${at} (${code})`, { file: dir });
    }
    if (st) {
      if (!st.isDirectory()) throw new UserError(`cannot create this folder: ${at} is a file, not a folder`, { file: dir });
      break;
    }
    missing.push(at);
    const up = path.dirname(at);
    if (up === at) break;
    at = up;
  }
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // Another process may have made it meanwhile; that is what we wanted.
      if (code === 'EEXIST' && fs.statSync(d).isDirectory()) continue;
      throw new UserError(`cannot create folder ${d} (${code})`, { file: dir });
    }
  }
}
