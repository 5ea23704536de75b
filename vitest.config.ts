import { defineConfig } from 'vitest/config';

// Tests share one TensorFlow runtime per file and the machine has two cores:
// run files one at a time so timings and thread pools do not fight.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
