/**
 * The one way sinklm puts a folder of outputs in place (checkpoints, snapshots, prepared
 * data): every file is written into a hidden temporary sibling, the files and the folder
 * are fsynced, and the folder is renamed into place. A reader therefore finds either the
 * complete old folder or the complete new one, never a half-written one, whatever moment
 * a crash or a kill strikes.
 *
 * Temporary folders start with a dot (`.NAME.tmp-PID-XXXX`), so listings that take only
 * `step-N` or other plain names never see them. A folder that already exists is moved
 * aside (`.NAME.old-PID-XXXX`) before the new one is renamed in and only then deleted: the
 * old content is never deleted before the new content is in place. Should a crash fall
 * between the two renames, recoverDir() puts the old folder back.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDir, makeDirs } from './fsutil.js';

const TMP = '.tmp-';
const OLD = '.old-';

function hidden(final: string, kind: string): string {
  return `.${path.basename(final)}${kind}`;
}

/** fsync every file and folder below `dir` (the folder itself last), so its content survives a crash. */
export function fsyncTree(dir: string): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) fsyncTree(p);
    else if (e.isFile()) {
      const fd = fs.openSync(p, 'r');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  fsyncDir(dir);
}

/** Whether a pid names a process that is still running (its temp folders may still be in use). */
function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The pid in a temporary or set-aside folder's name (older sinklm wrote `.NAME.tmp-PID`). */
function pidOf(name: string): number {
  return Number(/\.(?:tmp|old)-(\d+)/.exec(name)?.[1]);
}

/**
 * Puts back a folder whose replacement was cut short between its two renames, and removes
 * temporary folders of `final` left by processes that died. Safe to call at any time.
 */
export function recoverDir(final: string): void {
  const parent = path.dirname(final);
  if (!fs.existsSync(parent)) return;
  for (const n of fs.readdirSync(parent)) {
    const old = n.startsWith(hidden(final, OLD));
    if (!old && !n.startsWith(hidden(final, TMP))) continue;
    const pid = pidOf(n);
    if (alive(pid)) continue;
    const p = path.join(parent, n);
    if (old && !fs.existsSync(final)) fs.renameSync(p, final);
    else fs.rmSync(p, { recursive: true, force: true });
  }
}

/** Starts a folder write: a fresh, empty temporary sibling of `final` to fill. */
export function beginDir(final: string): string {
  const parent = path.dirname(final);
  makeDirs(parent);
  recoverDir(final);
  return fs.mkdtempSync(path.join(parent, `${hidden(final, TMP)}${process.pid}-`));
}

/** Publishes a filled temporary folder as `final`, replacing (never first deleting) what was there. */
export function commitDir(tmp: string, final: string): void {
  fsyncTree(tmp);
  const parent = path.dirname(final);
  let aside: string | null = null;
  if (fs.existsSync(final)) {
    aside = `${path.join(parent, hidden(final, OLD))}${process.pid}-${path.basename(tmp).slice(-6)}`;
    fs.renameSync(final, aside);
  }
  fs.renameSync(tmp, final);
  fsyncDir(parent);
  if (aside) fs.rmSync(aside, { recursive: true, force: true });
}

/** Drops a temporary folder that will not be published (the write failed). */
export function abandonDir(tmp: string): void {
  fs.rmSync(tmp, { recursive: true, force: true });
}

/** Writes a whole folder atomically: `fill` writes its files into the temporary folder it is given. */
export async function writeDirAtomic(final: string, fill: (tmp: string) => Promise<void> | void): Promise<string> {
  const tmp = beginDir(final);
  try {
    await fill(tmp);
    commitDir(tmp, final);
  } catch (e) {
    abandonDir(tmp);
    throw e;
  }
  return final;
}

/** Whether a folder entry is a temporary or set-aside folder of a process that has died (safe to delete). */
export function isStaleName(name: string): boolean {
  return name.startsWith('.') && (name.includes(TMP) || name.includes(OLD)) && !alive(pidOf(name));
}
