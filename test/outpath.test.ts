/**
 * The shared output-path check and makeDirs, as library calls: the TypeScript API refuses a
 * bad output before any work, as the CLI does. (/proc, where a bug would spin rather than
 * fail, is tested through the CLI with a timeout: test/cli-errors.test.ts.)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadRunConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { makeDirs, writeFileAtomic } from '../core/fsutil.js';
import { checkInputDir, checkOutputPath } from '../core/outpath.js';
import { ablate } from '../experiments/ablate.js';
import { train } from '../train/trainer.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-outpath-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const at = (...p: string[]) => path.join(tmp, ...p);
fs.writeFileSync(at('afile'), 'x');
fs.mkdirSync(at('adir'));

function userError(f: () => unknown, file: string, message: RegExp): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(UserError);
  expect((err as UserError).file).toBe(file);
  expect((err as UserError).message).toMatch(message);
}

describe('checkOutputPath', () => {
  it('accepts what can be made, creating nothing', () => {
    expect(checkOutputPath(at('new', 'deeper', 'run'), 'folder')).toBe(at('new', 'deeper', 'run'));
    expect(checkOutputPath(at('adir'), 'folder')).toBe(at('adir'));
    expect(checkOutputPath(at('afile'), 'file')).toBe(at('afile'));
    expect(checkOutputPath(at('adir', 'x.svg'), 'file')).toBe(at('adir', 'x.svg'));
    expect(fs.readdirSync(tmp).sort()).toEqual(['adir', 'afile']);
    expect(fs.readdirSync(at('adir'))).toEqual([]);
  });

  it('names the path and the reason', () => {
    userError(() => checkOutputPath(at('afile'), 'folder', '--out'), at('afile'), /is a file, not a folder/);
    userError(() => checkOutputPath(at('afile', 'run'), 'folder'), at('afile', 'run'), new RegExp(`${at('afile')} is a file, not a folder`));
    userError(() => checkOutputPath(at('afile', 'x', 'y.svg'), 'file'), at('afile', 'x', 'y.svg'), /afile is a file, not a folder/);
    userError(() => checkOutputPath(at('adir'), 'file', '--plot'), at('adir'), /is a folder; give a file name/);
    userError(() => checkOutputPath(`${at('adir')}/`, 'file'), `${at('adir')}/`, /is a folder|ends with a slash/);
    userError(() => checkOutputPath('/proc/sinklm-outpath-test', 'folder'), '/proc/sinklm-outpath-test', /virtual filesystem/);
  });

  it('tells a missing input folder from a file', () => {
    userError(() => checkInputDir(at('nothere'), 'checkpoint'), at('nothere'), /no such folder/);
    userError(() => checkInputDir(at('afile'), 'checkpoint'), at('afile'), /is a file, not a folder/);
  });
});

describe('makeDirs and writeFileAtomic', () => {
  it('make each missing level, and stop at a file in the way', () => {
    makeDirs(at('m', 'a', 'b'));
    expect(fs.statSync(at('m', 'a', 'b')).isDirectory()).toBe(true);
    makeDirs(at('m', 'a', 'b'));
    userError(() => makeDirs(at('afile', 'sub')), at('afile', 'sub'), /afile is a file, not a folder/);
  });

  it('writeFileAtomic refuses a folder as the file, leaving nothing beside it', () => {
    userError(() => writeFileAtomic(at('adir'), 'data'), at('adir'), /is a folder/);
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('.'))).toEqual([]);
  });
});

describe('library entry points check their outputs first', () => {
  const cfg = loadRunConfig(path.join(import.meta.dirname, '..', 'configs', 'ablate-smoke.json'));
  it('train() and ablate() refuse a bad output before preparing any data', async () => {
    const cwd = process.cwd();
    process.chdir(at('adir'));
    try {
      await expect(train(cfg, { out: at('afile', 'run') })).rejects.toThrow(/afile is a file, not a folder/);
      await expect(ablate(cfg, { out: at('afile') })).rejects.toThrow(/is a file, not a folder/);
      await expect(ablate(cfg, { out: at('adir', 'abl'), ship: at('afile') })).rejects.toThrow(/is a file, not a folder/);
    } finally {
      process.chdir(cwd);
    }
    // No data-cache, no run folder: nothing was started.
    expect(fs.readdirSync(at('adir'))).toEqual([]);
  });
});
