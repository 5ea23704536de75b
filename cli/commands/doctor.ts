import type { CommandModule } from 'yargs';
import { initBackend, type BackendInfo } from '../../core/backend.js';
import { adapterLine } from '../../core/webgpu.js';
import { printJson, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  json: boolean;
}

function webgpuLine(w: BackendInfo['webgpu']): string {
  if (!w.adapter) return `no (${w.error})`;
  const a = w.adapter;
  const limits = `max binding ${(a.limits.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB, workgroup storage ${a.limits.maxComputeWorkgroupStorageSize / 1024} KiB`;
  return `${w.available ? 'yes' : 'not used'}: ${adapterLine(a)}; ${limits}${a.driver ? `; Vulkan driver ${a.driver}` : ''}${w.error ? `; ${w.error}` : ''}`;
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
          `webgpu:    ${webgpuLine(info.webgpu)}`,
          `kernels:   ${info.kernels.in_use ? `sinklm ops in use: ${info.kernels.ops.join(', ')} (${info.kernels.build ?? '?'}; ${info.kernels.library})` : `sinklm ops not in use (${info.kernels.reason})`}`,
          `threads:   ${info.threads}`,
          `versions:  ${Object.entries(info.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`,
        ];
        process.stdout.write(lines.join('\n') + '\n');
      },
      { backend: false },
    ),
};
