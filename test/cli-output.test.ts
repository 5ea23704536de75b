/**
 * What the CLI prints on success: snake_case --json keys everywhere, the backend and
 * settings a figure depends on, and the warm-up and dense conventions of stream-eval.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { snakeCaseDeep, snakeKeys } from '../cli/common.js';
import { ROOT, sinklm } from './cli.js';

const CKPT = path.join(ROOT, 'checkpoints', 'none');
const TEXT = path.join(ROOT, 'checkpoints', 'test_stream.txt');
const SMOKE = path.join(ROOT, 'configs', 'smoke.json');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-cli-output-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Every key of a JSON value, nested ones included. */
function keysOf(v: unknown): string[] {
  if (Array.isArray(v)) return v.flatMap(keysOf);
  if (v && typeof v === 'object') return Object.entries(v).flatMap(([k, x]) => [k, ...keysOf(x)]);
  return [];
}

async function json(args: string[], input?: string): Promise<Record<string, unknown>> {
  const r = await sinklm([...args, '--json'], tmp, { input });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout.trim().split('\n')).toHaveLength(1);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  expect(keysOf(out).filter((k) => /[A-Z]/.test(k))).toEqual([]);
  return out;
}

describe('snakeKeys', () => {
  it('turns the library camelCase into snake_case, values untouched', () => {
    expect(snakeKeys({ tokensPerSecond: 1, valLoss: null, out: 'x' })).toEqual({ tokens_per_second: 1, val_loss: null, out: 'x' });
  });
  it('at every depth for --json, leaving keys that are data alone', () => {
    const created = new Date(0);
    expect(snakeCaseDeep({ spec: { maxTokens: 3 }, rows: [{ msPerToken: 1 }], '4+60': 1, 'Sink^0.3': 2, created })).toEqual({
      spec: { max_tokens: 3 },
      rows: [{ ms_per_token: 1 }],
      '4+60': 1,
      'Sink^0.3': 2,
      created,
    });
  });
});

describe.concurrent('sinklm --json and what each command names', () => {
  it('train --json uses snake_case keys', async () => {
    const out = await json(['train', '--config', SMOKE, '--max-steps', '1', '--out', path.join(tmp, 'run')]);
    expect(out).toHaveProperty('val_loss');
    expect(out).toHaveProperty('tokens_per_second');
  });

  it('score names its backend; --json adds nll_mean, ppl and backend', async () => {
    const out = await json(['score', '--checkpoint', CKPT, '--text', TEXT]);
    const nll = out.nll as number[];
    const mean = nll.reduce((a, b) => a + b, 0) / nll.length;
    expect(out.nll_mean).toBeCloseTo(mean, 10);
    expect(out.ppl).toBeCloseTo(Math.exp(mean), 8);
    expect(typeof out.backend).toBe('string');
    const r = await sinklm(['score', '--checkpoint', CKPT, '--text', TEXT], tmp);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`backend ${out.backend}`));
  });

  it('generate --json records seed, temperature, top_k and top_p', async () => {
    const out = await json(['generate', '--checkpoint', CKPT, '--cache', '4+28', '--max-new-tokens', '2', '--seed', '7', '--temperature', '0.5', '--top-k', '5', '--top-p', '0.9'], 'hello\n');
    expect(out).toMatchObject({ seed: 7, temperature: 0.5, top_k: 5, top_p: 0.9 });
  });

  it('stream-eval: dense rows say the cache size does not apply; --help says what the warm-up is', async () => {
    const args = ['stream-eval', '--checkpoint', CKPT, '--text', TEXT, '--cache', '4+28', '--max-tokens', '40'];
    const out = await json([...args, '--policy', 'dense']);
    const [row] = out.results as Record<string, unknown>[];
    expect(row).toMatchObject({ policy: 'dense', cache: '4+28' });
    expect(row!.note).toMatch(/does not apply/);
    expect(row!.ms_per_token).toBeGreaterThan(0);
    const text = await sinklm([...args, '--policy', 'dense'], tmp);
    expect(text.stdout).toMatch(/^dense\s+no limit\s+ppl/);
    const help = await sinklm(['stream-eval', '--help'], tmp);
    expect(help.stdout).toMatch(/warm-up: the first 8 tokens/);
  });
});

describe('README and --help', () => {
  const COMMANDS = ['doctor', 'prepare', 'train', 'score', 'stream-eval', 'generate', 'attention', 'emergence', 'ablate', 'validate', 'bench train', 'bench decode'];
  it("list the same flags for every command (README's CLI table against each --help)", async () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const helps = await Promise.all(COMMANDS.map((c) => sinklm([...c.split(' '), '--help'], tmp)));
    COMMANDS.forEach((c, i) => {
      const help = new Set([...helps[i]!.stdout.matchAll(/^\s+(--[a-z-]+)/gm)].map((m) => m[1]!).filter((f) => !['--help', '--version', '--backend'].includes(f)));
      const row = readme.split('\n').find((l) => l.startsWith(`| \`sinklm ${c}`));
      expect(row, `README has no row for ${c}`).toBeDefined();
      const listed = new Set([...row!.split(/(?<!\\)\|/)[1]!.matchAll(/--[a-z-]+/g)].map((m) => m[0]));
      expect([...listed].sort(), c).toEqual([...help].sort());
    });
  });
});
