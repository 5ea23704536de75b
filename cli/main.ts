/**
 * The command line: argument parsing only. Each command is one module in commands/ that
 * parses its options and calls library functions.
 */
import * as fs from 'node:fs';
import yargs from 'yargs';
import { EXIT_BAD_INPUT, isUserError } from '../core/errors.js';
import { BACKENDS } from '../core/backend.js';
import { BENCH_SUBCOMMANDS } from './commands/bench.js';
import { commands } from './commands/index.js';
import { joinDashedValues, rejectNaN } from './argv.js';

/** The package's own version, from the package.json two folders above dist/cli/. */
function packageVersion(): string {
  const pkg: unknown = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
  return (pkg as { version?: string }).version ?? 'unknown';
}

const COMMAND_NAMES = commands.map((c) => String(c.command).split(' ')[0]!);

/** The first word that is not an option (nor the value of --backend): the command the user named. */
function firstWord(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return argv[i + 1];
    if (a === '--backend') i++;
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

function badInput(line: string): never {
  process.stderr.write(`sinklm: error: ${line}\n`);
  process.exit(EXIT_BAD_INPUT);
}

export async function main(argv: string[]): Promise<void> {
  const word = firstWord(argv);
  if (word !== undefined && !COMMAND_NAMES.includes(word)) badInput(`unknown command: ${word} (commands: ${COMMAND_NAMES.join(', ')}; see sinklm --help)`);
  if (word === 'bench') {
    const sub = firstWord(argv.slice(argv.indexOf('bench') + 1));
    if (sub !== undefined && !BENCH_SUBCOMMANDS.includes(sub)) badInput(`unknown command: bench ${sub} (bench ${BENCH_SUBCOMMANDS.join(' | bench ')})`);
  }
  argv = joinDashedValues(argv);
  let parser = yargs(argv)
    .scriptName('sinklm')
    .usage('$0 <command> [options]\n\nPre-train attention-sink language models and stream them with StreamingLLM.')
    .option('backend', {
      choices: BACKENDS,
      describe: 'TensorFlow.js backend (default: webgpu on a hardware GPU, else native tensorflow, else wasm, else cpu; env SINKLM_BACKEND)',
      global: true,
    })
    .demandCommand(1, 'name a command')
    .strict()
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(packageVersion())
    .middleware((a) => rejectNaN(a, argv), true)
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      if (err && isUserError(err)) badInput(err.line());
      if (err) throw err;
      badInput(`${msg} (see sinklm --help)`);
    });
  for (const c of commands) parser = parser.command(c);
  try {
    await parser.parseAsync();
  } catch (e) {
    // Middleware (rejectNaN) throws past yargs' fail handler.
    if (isUserError(e)) badInput(e.line());
    throw e;
  }
}
