/**
 * The contract's error convention, in one place.
 *
 * `UserError` is bad input the user can fix (usage, config, corpus, checkpoint): the CLI
 * prints its one line and exits 2. Anything else is a bug or an environment failure and
 * exits 1. Library code throws; only the CLI decides how to exit.
 */
export class UserError extends Error {
  /** The file (or option) the problem is in, when there is one. */
  readonly file?: string;
  /** The field inside that file, e.g. `model.hidden_size`. */
  readonly field?: string;

  constructor(message: string, where: { file?: string; field?: string } = {}) {
    super(message);
    this.name = 'UserError';
    this.file = where.file;
    this.field = where.field;
  }

  /** The one line the user sees: `file: field: message`. */
  line(): string {
    const parts = [this.file, this.field].filter((p): p is string => !!p);
    return parts.length ? `${parts.join(': ')}: ${this.message}` : this.message;
  }
}

/**
 * A check the command exists to make came out wrong (e.g. `validate`'s recomputed grid
 * drifted from the recorded one): not bad input, not a crash. Exit 1 with one line.
 */
export class CheckFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckFailure';
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

export const EXIT_OK = 0;
export const EXIT_INTERNAL = 1;
export const EXIT_BAD_INPUT = 2;

/** Formats any thrown value for stderr and picks the exit code. */
export function describeFailure(e: unknown): { line: string; code: number } {
  if (isUserError(e)) return { line: `sinklm: error: ${e.line()}`, code: EXIT_BAD_INPUT };
  if (e instanceof CheckFailure) return { line: `sinklm: check failed: ${e.message}`, code: EXIT_INTERNAL };
  const msg = e instanceof Error ? (e.stack ?? e.message) : String(e);
  return { line: `sinklm: internal error: ${msg}`, code: EXIT_INTERNAL };
}
