/**
 * The command line: argument parsing only. Each command is one module in commands/ that
 * parses its options and calls library functions.
 */
import yargs from 'yargs';
import { EXIT_BAD_INPUT } from '../core/errors.js';
import { BACKENDS } from '../core/backend.js';
import { commands } from './commands/index.js';

export async function main(argv: string[]): Promise<void> {
  let parser = yargs(argv)
    .scriptName('sinklm')
    .usage('$0 <command> [options]\n\nPre-train attention-sink language models and stream them with StreamingLLM.')
    .option('backend', {
      choices: BACKENDS,
      describe: 'TensorFlow.js backend (default: native tensorflow, else wasm, else cpu; env SINKLM_BACKEND)',
      global: true,
    })
    .demandCommand(1, 'name a command (see --help)')
    .strict()
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(false)
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`sinklm: error: ${msg} (see sinklm --help)\n`);
      process.exit(EXIT_BAD_INPUT);
    });
  for (const c of commands) parser = parser.command(c);
  await parser.parseAsync();
}
