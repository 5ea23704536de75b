// Gathers bench/gpu/run.sh's parts into one JSON of figures: node bench/gpu/gather.mjs DIR OUT
import * as fs from 'node:fs';
import * as path from 'node:path';
const [dir, out] = process.argv.slice(2);
const parts = fs.readFileSync(path.join(dir, 'parts.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const read = (name) => {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8'));
  } catch {
    return null;
  }
};
const lastLine = (name) => fs.readFileSync(path.join(dir, `${name}.log`), 'utf8').trim().split('\n').at(-1) ?? '';
const figures = { date: new Date().toISOString(), parts: {} };
for (const p of parts) {
  const r = read(p.part);
  const row = { rc: p.rc, seconds: p.seconds, ...(p.rc !== 0 ? { error: lastLine(p.part) } : {}) };
  if (p.part === 'doctor' && r) Object.assign(row, { adapter: r.webgpu?.adapter, versions: r.versions });
  if (p.part === 'tests' && r) Object.assign(row, { passed: r.numPassedTests, failed: r.numFailedTests, skipped: r.numPendingTests });
  if (p.part.startsWith('train') && r) {
    for (const k of ['batch', 'seq', 'ms_per_step', 'ms_per_step_median', 'tokens_per_s', 'kernels_per_step', 'gpu_kernel_ms', 'reads_per_step', 'ms_forward', 'ms_backward', 'ms_optimizer', 'peak_gflops', 'mfu']) row[k] = r[k];
  }
  if (p.part === 'decode' && r) row.rows = (r.rows ?? r.results ?? []).map((x) => ({ policy: x.policy, cache: x.cache, ms_per_token: x.ms_per_token, ms_median: x.ms_median, dispatches_per_token: x.dispatches_per_token, reads_per_token: x.reads_per_token }));
  figures.parts[p.part] = row;
}
fs.writeFileSync(out, JSON.stringify(figures, null, 2) + '\n');
console.log(`bench/gpu: figures in ${out}`);
