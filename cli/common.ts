/**
 * What every command shares: the global options, and the wrapper that turns a thrown
 * error into the contract's exit codes (2 with one line for bad input, 1 otherwise).
 */
import type { Argv } from 'yargs';
import { describeFailure, UserError } from '../core/errors.js';
import { initBackend, type BackendName } from '../core/backend.js';

export interface GlobalArgs {
  backend?: BackendName;
  json?: boolean;
}

export function withJson<T>(y: Argv<T>): Argv<T & { json: boolean }> {
  return y.option('json', {
    type: 'boolean',
    default: false,
    describe: 'print exactly one JSON object on stdout and nothing else there',
  });
}

/** For commands that stream token by token: one TensorFlow intra-op thread (see initBackend). */
export const ONE_THREAD = { intraOpThreads: 1 } as const;

/**
 * Runs a command body; errors become one stderr line and an exit code, never a crash.
 * `check` runs first, before the backend starts: the argument and output-path checks that
 * need no model, so bad input costs no start-up and no work.
 */
export async function runCommand(
  args: GlobalArgs,
  body: () => Promise<void>,
  opts: { backend?: boolean; intraOpThreads?: number; check?: () => void } = {},
): Promise<void> {
  try {
    opts.check?.();
    if (opts.backend !== false) await initBackend({ prefer: args.backend, quiet: !!args.json, intraOpThreads: opts.intraOpThreads });
    await body();
  } catch (e) {
    const { line, code } = describeFailure(e);
    process.stderr.write(line + '\n');
    process.exitCode = code;
  }
}

/**
 * Prints the one JSON object of `--json` mode, its keys in snake_case at every depth: the
 * library's camelCase fields (spec.maxTokens, tokensPerSecond) never reach a script.
 */
export function printJson(obj: unknown): void {
  process.stdout.write(JSON.stringify(snakeCaseDeep(obj)) + '\n');
}

/** camelCase identifiers only; keys that are data (cache labels, names, paths) stay as they are. */
function snakeKey(k: string): string {
  return /^[a-z][a-zA-Z0-9]*$/.test(k) ? k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`) : k;
}

export function snakeCaseDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(snakeCaseDeep);
  if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v) || typeof (v as { toJSON?: unknown }).toJSON === 'function') return v;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [snakeKey(k), snakeCaseDeep(x)]));
}

/** A threshold strictly between 0 and 1 (the sink metric's eps). */
export function checkFraction(v: number, field: string): void {
  if (!(v > 0 && v < 1)) throw new UserError(`must be a number between 0 and 1 (got ${v})`, { field });
}

/** A whole number >= min, when given. */
export function checkInt(v: number | undefined, field: string, min = 1): void {
  if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new UserError(`must be a whole number >= ${min} (got ${v})`, { field });
}

/** yargs turns an option given twice into an array; these commands take each once. */
export function once(args: object, names: readonly string[]): void {
  const a = args as Record<string, unknown>;
  for (const o of names) if (Array.isArray(a[o])) throw new UserError('give it once', { field: `--${o}` });
}

/** The library's camelCase result fields as the snake_case keys every --json output uses (one level). */
export function snakeKeys(obj: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(obj).map(([k, v]) => [snakeKey(k), v]));
}
