/**
 * Publishing a prepared folder all at once, by core/atomicdir's one mechanism: everything is
 * written into a hidden sibling temp folder (manifest last), fsynced and renamed into place,
 * so a half-written output never sits where a complete one is expected. A folder is only
 * ever replaced when it holds nothing but a previous preparation: nothing a user put there
 * is lost.
 */
import * as fs from 'node:fs';
import { UserError } from '../core/errors.js';
import { abandonDir, beginDir, commitDir } from '../core/atomicdir.js';
import { MANIFEST_FILE, TEST_STREAM_FILE, TOKENIZER_FILE } from './manifest.js';

const OWN_FILE = /^(manifest\.json|tokenizer\.json|test_stream\.txt|(train|validation|test)-\d{5}\.arrow)$/;

export function shardFileName(split: string, index: number): string {
  return `${split}-${String(index).padStart(5, '0')}.arrow`;
}

/** True when `dir` is missing, empty, or holds only files a preparation writes. */
function replaceable(dir: string): boolean {
  if (!fs.existsSync(dir)) return true;
  return fs.readdirSync(dir).every((f) => OWN_FILE.test(f) || f.startsWith('.'));
}

/** Creates the temp folder to write into, after checking `dir` may be (re)placed. */
export function beginOutput(dir: string): string {
  if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory()) throw new UserError('output path exists and is not a folder', { file: dir });
  if (!replaceable(dir)) {
    throw new UserError(
      `output folder holds files that are not prepared data (${MANIFEST_FILE}, ${TOKENIZER_FILE}, ${TEST_STREAM_FILE}, shards); choose another --out or data.dir`,
      { file: dir },
    );
  }
  try {
    if (fs.existsSync(dir)) fs.accessSync(dir, fs.constants.W_OK);
    return beginDir(dir);
  } catch (e) {
    throw new UserError(`output folder is not writable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file: dir });
  }
}

/** Moves the finished temp folder to `dir`, replacing a previous preparation there. */
export function commitOutput(tmp: string, dir: string): void {
  commitDir(tmp, dir);
}

export function abandonOutput(tmp: string): void {
  abandonDir(tmp);
}
