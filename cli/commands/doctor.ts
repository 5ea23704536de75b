import type { CommandModule } from 'yargs';
import { initBackend } from '../../core/backend.js';
import { printJson, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  json: boolean;
}

export const doctor: CommandModule<GlobalArgs, Args> = {
  command: 'doctor',
  describe: 'which backend runs and why, versions, threads, and how to get native TensorFlow',
  builder: (y) => withJson(y),
  handler: (args) =>
    runCommand(
      args,
      async () => {
        const info = await initBackend({ prefer: args.backend, quiet: true });
        if (args.json) return printJson(info);
        const lines = [
          `backend:   ${info.backend}${info.gpu ? ' (GPU)' : ''}`,
          `why:       ${info.reason}`,
          `native:    ${info.native.available ? `yes (${info.native.package}, TensorFlow ${info.native.tensorflow ?? '?'})` : `no (${info.native.error})`}`,
          ...(info.native.howto ? [`get it:    ${info.native.howto}`] : []),
          `kernels:   ${info.kernels.in_use ? `sinklm ops in use: ${info.kernels.ops.join(', ')} (${info.kernels.build ?? '?'}; ${info.kernels.library})` : `sinklm ops not in use (${info.kernels.reason})`}`,
          `threads:   ${info.threads}`,
          `versions:  ${Object.entries(info.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`,
        ];
        process.stdout.write(lines.join('\n') + '\n');
      },
      { backend: false },
    ),
};
