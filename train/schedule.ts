/**
 * Pythia's learning-rate schedule: linear warmup over the first warmup_frac of the steps,
 * then cosine decay to min_lr_ratio x lr at the last step.
 */
export interface ScheduleOptions {
  lr: number;
  totalSteps: number;
  warmupFrac: number;
  minLrRatio: number;
}

/** Learning rate for 1-based step `step` (the step being taken). */
export function learningRate(step: number, o: ScheduleOptions): number {
  const warmup = Math.round(o.warmupFrac * o.totalSteps);
  if (warmup > 0 && step <= warmup) return (o.lr * step) / warmup;
  const span = Math.max(1, o.totalSteps - warmup);
  const progress = Math.min(1, Math.max(0, (step - warmup) / span));
  const min = o.lr * o.minLrRatio;
  return min + 0.5 * (o.lr - min) * (1 + Math.cos(Math.PI * progress));
}
