import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from './errors.js';

/**
 * Writes a file so that readers see either the old content or the new, never half:
 * write to a temporary name beside it, fsync, rename over.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
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
    throw new UserError(code === 'ENOENT' ? 'file not found' : `cannot read (${code})`, { file });
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
  const bytes = readFileBytes(file);
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
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new UserError(`output folder is not writable (${(e as NodeJS.ErrnoException).code})`, { file: dir });
  }
}
