/**
 * Bad input through the real CLI: every case must exit 2 with exactly one stderr line that
 * names the path or option, print no stack trace, leave no file behind, and finish (a hang,
 * such as Node's recursive mkdir spinning on /proc, fails on the timeout). Each case runs in
 * its own fresh folder holding a file `afile`, so relative paths like `afile/run` mean the
 * same everywhere and anything a case leaves there is seen.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, sinklm as run } from './cli.js';

const CKPT = path.join(ROOT, 'checkpoints', 'none');
const TEXT = path.join(ROOT, 'checkpoints', 'test_stream.txt');
const SMOKE = path.join(ROOT, 'configs', 'smoke.json');
const ABLATE_SMOKE = path.join(ROOT, 'configs', 'ablate-smoke.json');
/** Long enough for a loaded machine, short enough that a hang fails the run soon. */
const TIMEOUT_MS = 40_000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-cli-errors-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/**
 * A backend that cannot start: a bad input's own line comes out only if the command checks
 * it before it starts the backend (TensorFlow's start-up is the expensive part of a bad run).
 */
const NO_BACKEND = { SINKLM_BACKEND: 'no-such-backend' };
const sinklm = (args: string[], cwd: string, input?: string) => run(args, cwd, { input, timeoutMs: TIMEOUT_MS, env: NO_BACKEND });

/** Every entry below `dir`, hidden ones included. */
function listing(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

let cases = 0;
/** A fresh folder with a file `afile` (and whatever `setup` adds) to run one case in. */
function caseDir(setup?: (dir: string) => void): string {
  const dir = path.join(tmp, `case-${++cases}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'afile'), 'a file, not a folder\n');
  setup?.(dir);
  return dir;
}

/** Runs a bad-input case and checks the contract's answer to it. */
async function expectBadInput(args: (dir: string) => string[], names: RegExp, opts: { setup?: (dir: string) => void; stdin?: string } = {}): Promise<string> {
  const dir = caseDir(opts.setup);
  const before = listing(dir);
  const r = await sinklm(args(dir), dir, opts.stdin);
  expect(r.timedOut, `hung: sinklm ${args(dir).join(' ')}`).toBe(false);
  expect(r.code, r.stderr).toBe(2);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^sinklm: error: /);
  expect(lines[0]).toMatch(names);
  expect(r.stderr).not.toMatch(/\n\s+at |internal error/);
  expect(r.stdout).toBe('');
  expect(listing(dir), 'left something behind').toEqual(before);
  return lines[0]!;
}

describe.concurrent('bad output paths: exit 2, one line, up front, nothing left', () => {
  it('train --out under /proc fails at once instead of spinning in mkdir', async () => {
    await expectBadInput(() => ['train', '--config', SMOKE, '--out', '/proc/sinklm-x', '--max-steps', '2'], /\/proc\/sinklm-x.*--out.*virtual filesystem/);
  });
  it('train --out a file', async () => {
    await expectBadInput(() => ['train', '--config', SMOKE, '--out', 'afile'], /afile: --out: is a file, not a folder/);
  });
  it('train --out below a file', async () => {
    await expectBadInput(() => ['train', '--config', SMOKE, '--out', 'afile/run'], /afile\/run: --out: .*afile is a file, not a folder/);
  });
  it('prepare --out below a file, and under /proc', async () => {
    await expectBadInput(() => ['prepare', '--config', SMOKE, '--out', 'afile/x'], /afile\/x.*afile is a file, not a folder/);
    await expectBadInput(() => ['prepare', '--config', SMOKE, '--out', '/proc/sinklm-x/data'], /\/proc\/sinklm-x\/data.*virtual filesystem/);
  });
  it('stream-eval --per-token under /proc and below a file', async () => {
    const base = ['stream-eval', '--checkpoint', CKPT, '--text', TEXT, '--cache', '4+28', '--max-tokens', '40'];
    await expectBadInput(() => [...base, '--per-token', '/proc/x/nll.jsonl'], /\/proc\/x\/nll\.jsonl: --per-token: .*virtual filesystem/);
    await expectBadInput(() => [...base, '--per-token', 'afile/x.jsonl'], /afile\/x\.jsonl: --per-token: .*afile is a file/);
  });
  it('attention --plot under /proc, below a file, and at a folder (no temp file beside it)', async () => {
    const base = ['attention', '--checkpoint', CKPT, '--text', TEXT];
    await expectBadInput(() => [...base, '--plot', '/proc/x.svg'], /\/proc\/x\.svg: --plot: .*virtual filesystem/);
    await expectBadInput(() => [...base, '--plot', 'afile/x.svg'], /afile\/x\.svg: --plot: .*afile is a file/);
    // The case folder's own listing is compared, so a temp file written beside `sub` is seen.
    await expectBadInput((d) => [...base, '--plot', path.join(d, 'sub')], /sub: --plot: is a folder/, { setup: (d) => fs.mkdirSync(path.join(d, 'sub')) });
  });
  it('emergence --plot below a file', async () => {
    await expectBadInput(() => ['emergence', 'run', '--plot', 'afile/x.svg'], /afile\/x\.svg: --plot: .*afile is a file/, { setup: (d) => fs.mkdirSync(path.join(d, 'run')) });
  });
  it('ablate --ship a file, --out under /proc (before any training)', async () => {
    await expectBadInput(() => ['ablate', '--config', ABLATE_SMOKE, '--ship', 'afile'], /afile: --ship: is a file, not a folder/);
    await expectBadInput(() => ['ablate', '--config', ABLATE_SMOKE, '--out', '/proc/sinklm-ablate'], /\/proc\/sinklm-ablate: --out: .*virtual filesystem/);
  });
});

describe.concurrent('inputs checked up front', () => {
  const config = (name: string, body: object) => (d: string) => fs.writeFileSync(path.join(d, name), JSON.stringify({ extends: SMOKE, ...body }));
  it('ablate.window larger than the context fails at config load, naming ablate.window', async () => {
    const line = await expectBadInput(() => ['ablate', '--config', 'big.json'], /big\.json: ablate\.window: 1000 is more than the model's context of 64/, {
      setup: config('big.json', { ablate: { window: 1000, out: 'never' } }),
    });
    expect(line).not.toMatch(/--cache/);
  });
  it('ablate.initial must hold the 0, 1 and 4 cells the verdicts read', async () => {
    await expectBadInput(() => ['ablate', '--config', 'few.json'], /few\.json: ablate\.initial: must include 0, 1, 4.*1, 4 missing/, {
      setup: config('few.json', { ablate: { initial: [0, 2], out: 'never' } }),
    });
  });
  it('stream-eval checks every --cache against the model before printing a row', async () => {
    await expectBadInput(() => ['stream-eval', '--checkpoint', CKPT, '--text', TEXT, '--cache', '4+28', '--cache', '4+200', '--max-tokens', '40'], /--cache: 4\+200: S\+W = 204 is more than the model's 128 positions/);
  });
  it('emergence --windows 0 is refused before any data is read', async () => {
    // The run folder holds nothing: reading it would fail with another message.
    await expectBadInput(() => ['emergence', 'run', '--windows', '0'], /--windows: must be a whole number >= 1/, { setup: (d) => fs.mkdirSync(path.join(d, 'run')) });
  });
});

describe.concurrent('command-line arguments', () => {
  const generate = ['generate', '--checkpoint', CKPT, '--max-new-tokens', '2'];
  it('generate --seed abc', async () => {
    await expectBadInput(() => [...generate, '--prompts', 'afile', '--cache', '4+28', '--seed', 'abc'], /--seed: "abc" is not a number/);
  });
  it('--cache -1+10 says what is wrong with the spec', async () => {
    await expectBadInput(() => [...generate, '--prompts', 'afile', '--cache', '-1+10'], /--cache: "-1\+10" is not a cache size \(S and W cannot be negative\)/);
  });
  it('--eps -1', async () => {
    await expectBadInput(() => ['attention', '--checkpoint', CKPT, '--text', TEXT, '--eps', '-1'], /--eps: must be a number between 0 and 1/);
  });
  it('emergence on a missing run folder, a checkpoint that is a file', async () => {
    await expectBadInput(() => ['emergence', 'nothere'], /nothere: run folder: no such folder/);
    await expectBadInput(() => ['score', '--checkpoint', 'afile', '--text', TEXT], /afile: --checkpoint: is a file, not a folder/);
  });
  it('validate --checkpoints missing, --text a folder, an empty --plot', async () => {
    await expectBadInput(() => ['validate', '--checkpoints', 'nothere'], /nothere: checkpoints folder: no such folder/);
    await expectBadInput((d) => ['score', '--checkpoint', CKPT, '--text', d], /: is a folder, not a file/);
    await expectBadInput(() => ['attention', '--checkpoint', CKPT, '--text', TEXT, '--plot', ''], /--plot: is empty/);
  });
  it('an unknown command is named as one', async () => {
    await expectBadInput(() => ['foo'], /unknown command: foo/);
    await expectBadInput(() => ['--backend', 'cpu', 'foo', '--json'], /unknown command: foo/);
    await expectBadInput(() => ['bench', 'foo'], /unknown command: bench foo/);
  });
  it('--prompts with invalid UTF-8 is refused like --text', async () => {
    const bad = (d: string) => fs.writeFileSync(path.join(d, 'bad.txt'), Buffer.from([0x68, 0x69, 0xff, 0xfe, 0x0a]));
    await expectBadInput(() => [...generate, '--cache', '4+28', '--prompts', 'bad.txt'], /bad\.txt: not valid UTF-8/, { setup: bad });
    await expectBadInput(() => ['score', '--checkpoint', CKPT, '--text', 'bad.txt'], /bad\.txt: not valid UTF-8/, { setup: bad });
  });
  it('sinklm --version prints the package version', async () => {
    const r = await sinklm(['--version'], tmp);
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });
});
