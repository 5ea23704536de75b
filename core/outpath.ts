/**
 * The one check of an output path, made before any expensive work starts: a run that
 * trains for an hour must not find out at the end that it cannot write its result.
 *
 * It creates nothing (a failed command leaves nothing behind) except a probe folder that it
 * removes at once: the only honest test of "can a file be made here" is making one, since
 * access(W_OK) says yes to root on /proc, where nothing can be created.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from './errors.js';

/** What the path must be: a folder the command fills, or one file it writes. */
export type OutputKind = 'folder' | 'file';

/** stat that says "not there" for a missing entry and for a path running through a file. */
function statOf(p: string): fs.Stats | undefined {
  try {
    return fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new UserError(`cannot look at this path (${code})`, { file: p });
  }
}

/** Why nothing can be created in `dir`, or null when something can. */
function cannotCreateIn(dir: string): string | null {
  let probe: string;
  try {
    probe = fs.mkdtempSync(path.join(dir, '.sinklm-probe-'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    // /proc and /sys answer ENOENT or EPERM for a folder that plainly exists.
    if (/^\/(proc|sys)(\/|$)/.test(dir)) return `${dir} is a virtual filesystem where nothing can be created (${code})`;
    if (code === 'EACCES' || code === 'EPERM') return `no permission to create anything in ${dir} (${code})`;
    if (code === 'EROFS') return `${dir} is on a read-only filesystem (${code})`;
    return `cannot create anything in ${dir} (${code})`;
  }
  fs.rmdirSync(probe);
  return null;
}

/**
 * Checks that `out` can be written as a `kind`, and returns it resolved. Throws a UserError
 * naming the path and the reason when the path runs through a file, is a file where a folder
 * is wanted (or the other way round), or lies where nothing can be created. `option` is how
 * the user gave the path (e.g. `--out`), for the message.
 */
export function checkOutputPath(out: string, kind: OutputKind, option?: string): string {
  const abs = path.resolve(out);
  const fail = (why: string): never => {
    throw new UserError(why, { file: out, field: option });
  };
  if (out.trim() === '') fail('is empty; give a path');
  if (kind === 'file' && /[\\/]$/.test(out)) fail('ends with a slash; give a file name');
  const self = statOf(abs);
  if (self) {
    if (kind === 'folder' && !self.isDirectory()) fail('is a file, not a folder');
    if (kind === 'file' && self.isDirectory()) fail('is a folder; give a file name inside it');
  }
  // The nearest ancestor that exists is where the first new entry will be made.
  let dir = kind === 'folder' && self ? abs : path.dirname(abs);
  for (let s = statOf(dir); !s; s = statOf(dir)) dir = path.dirname(dir);
  if (!fs.statSync(dir).isDirectory()) fail(`${dir} is a file, not a folder`);
  const why = cannotCreateIn(dir);
  if (why) fail(why);
  return abs;
}

/**
 * A folder the command reads (a checkpoint, a run): a missing path and a file where the
 * folder should be are told apart, so the user is not sent looking for a file inside it.
 */
export function checkInputDir(dir: string, what: string): void {
  const st = statOf(path.resolve(dir));
  if (!st) throw new UserError(`${what}: no such folder`, { file: dir });
  if (!st.isDirectory()) throw new UserError(`${what}: is a file, not a folder`, { file: dir });
}
