/**
 * What every command shares: the global options, and the wrapper that turns a thrown
 * error into the contract's exit codes (2 with one line for bad input, 1 otherwise).
 */
import type { Argv } from 'yargs';
import { describeFailure } from '../core/errors.js';
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

/** Runs a command body; errors become one stderr line and an exit code, never a crash. */
export async function runCommand(
  args: GlobalArgs,
  body: () => Promise<void>,
  opts: { backend?: boolean; intraOpThreads?: number } = {},
): Promise<void> {
  try {
    if (opts.backend !== false) await initBackend({ prefer: args.backend, quiet: !!args.json, intraOpThreads: opts.intraOpThreads });
    await body();
  } catch (e) {
    const { line, code } = describeFailure(e);
    process.stderr.write(line + '\n');
    process.exitCode = code;
  }
}

/** Prints the one JSON object of `--json` mode. */
export function printJson(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
