import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe("README's library example works as written", () => {
  it('the js block after "Streaming a shipped checkpoint" runs in a fresh ESM process (no initBackend call) and prints a finite perplexity', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const at = readme.indexOf('Streaming a shipped checkpoint:');
    expect(at, 'README has the library example').toBeGreaterThan(0);
    const block = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
    expect(block).not.toBeNull();
    expect(block![1]!.trim().split('\n').length).toBeLessThanOrEqual(5);
    // Inside the repository the package resolves itself by name ("exports" -> dist/index.js).
    const file = path.join(ROOT, '.scratch', 'readme-example.mjs');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, block![1]!);
    try {
      const r = spawnSync(process.execPath, [file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
      expect(r.status, r.stderr).toBe(0);
      const m = /^ppl ([\d.]+), [\d.]+ ms\/token on (tensorflow|webgpu|wasm|cpu)$/m.exec(r.stdout);
      expect(m, r.stdout).not.toBeNull();
      expect(Number(m![1])).toBeGreaterThan(1);
      expect(Number.isFinite(Number(m![1]))).toBe(true);
      // No TensorFlow start-up chatter (absl, CPU features, oneDNN) reaches a library user's stderr.
      expect(r.stderr).not.toMatch(/absl|cpu_feature_guard|oneDNN|^[IWE]\d{4} /m);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('require() of the package fails with ERR_REQUIRE_ESM-style errors, as README says (ESM-only)', () => {
    const r = spawnSync(process.execPath, ['-e', "require('sinklm')"], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    expect(r.status).not.toBe(0);
  });
});
