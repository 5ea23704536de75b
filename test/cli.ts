/** Runs the real CLI (bin/sinklm, after tsc) as a user would, with a timeout so a hang fails instead of stalling. */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const BIN = path.join(ROOT, 'bin', 'sinklm');

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * TensorFlow's C++ start-up lines, which its library writes straight to the process's
 * stderr whatever TF_CPP_MIN_LOG_LEVEL says on CPUs where it turns oneDNN on (AVX-512
 * VNNI/BF16 machines): absl's pre-initialisation notice and glog-style records such as
 * "I0000 00:00:... port.cc:153] oneDNN custom operations are on". Not sinklm's output,
 * so the tests' "one line" assertions leave them out.
 */
const TF_STARTUP_LINE = /^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR|[IWEF]\d{4} \d+:\d+:\d+\.\d+\s+\d+ [\w.]+:\d+\] .*)\n/gm;

export function sinklm(args: string[], cwd: string, opts: { input?: string; timeoutMs?: number } = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr: stderr.replace(TF_STARTUP_LINE, ''), timedOut });
    });
    child.stdin.end(opts.input ?? '');
  });
}
