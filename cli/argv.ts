/**
 * Two fixes to what yargs makes of the raw arguments, applied to every command at once.
 */
import { UserError } from '../core/errors.js';

/**
 * `--cache -1+10` would make yargs read `-1+10` as short flags ("Unknown argument: 1"):
 * a value that starts with a dash and a digit is joined to its option as `--cache=-1+10`,
 * so the option's own check can say what is wrong with it.
 */
export function joinDashedValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return [...out, ...argv.slice(i)];
    const next = argv[i + 1];
    if (/^--[^=]+$/.test(a) && next !== undefined && /^-[\d.]/.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** How the user wrote the value of --name, for the error line. */
function rawValue(argv: string[], name: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === `--${name}`) return argv[i + 1];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return undefined;
}

/** A number option given text (`--seed abc`) reaches yargs' parsed arguments as NaN: refuse it. */
export function rejectNaN(parsed: Record<string, unknown>, argv: string[]): void {
  for (const [key, v] of Object.entries(parsed)) {
    // yargs keeps both `max-tokens` and `maxTokens`; report the spelling the user typed.
    if (/[A-Z]/.test(key)) continue;
    const bad = Array.isArray(v) ? v.some((x) => Number.isNaN(x)) : Number.isNaN(v);
    if (!bad) continue;
    const raw = rawValue(argv, key);
    throw new UserError(`${raw === undefined ? 'needs a number' : `"${raw}" is not a number`}`, { field: `--${key}` });
  }
}
