/**
 * One progress bar on stderr for long loops (training steps, streamed tokens):
 *
 *   train |██████████░░░░░░░░░░| 1,234/10,000 tok | 2.31k tok/s | ETA 3m05s | loss 3.214  lr 3e-4
 *
 * Drawn only for a person watching: when stderr is not a terminal (CI, `> log.txt`) nothing
 * is written unless SINKLM_PROGRESS=1, and the caller prints its own log lines instead
 * (`bar.enabled` says which case it is in).
 */
import cliProgress from 'cli-progress';

export interface ProgressBar {
  /** False when nothing is drawn; callers then log progress themselves. */
  readonly enabled: boolean;
  /** `done` is the absolute count so far, not an increment. */
  update(done: number, fields: Record<string, string | number>): void;
  stop(): void;
}

export interface ProgressOptions {
  total: number;
  /** What is counted, e.g. "tok" or "step"; shown after the counts and in the rate. */
  unit: string;
  label: string;
  /** false turns the bar off whatever the terminal; otherwise see progressEnabled(). */
  enabled?: boolean;
}

/** The rate follows roughly the last this-many seconds, so a slow first step fades out. */
const RATE_SMOOTHING_SECONDS = 10;

/** A bar is drawn on a terminal, or anywhere with SINKLM_PROGRESS=1; SINKLM_PROGRESS=0 hides it. */
export function progressEnabled(): boolean {
  const env = process.env.SINKLM_PROGRESS;
  if (env === '1') return true;
  if (env === '0') return false;
  return process.stderr.isTTY === true;
}

/** 0.4s, 42s, 3m05s, 1h02m, 2d03h; "--" when unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  const s = Math.round(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

/** Three significant digits with an SI suffix: 0.0123, 12.3, 2.31k, 1.5M; "-" when unknown. */
export function formatRate(x: number): string {
  if (!Number.isFinite(x)) return '-';
  const abs = Math.abs(x);
  for (const [scale, suffix] of [
    [1e12, 'T'],
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k'],
  ] as const) {
    // 999.6 rounds to "1.00k", not "1000".
    if (abs >= scale * 0.9995) return `${trimZeros((x / scale).toPrecision(3))}${suffix}`;
  }
  if (abs === 0) return '0';
  return trimZeros(x.toPrecision(3));
}

function trimZeros(s: string): string {
  return s.includes('.') && !s.includes('e') ? s.replace(/\.?0+$/, '') : s;
}

/** Counts in full up to a million (1,234/10,000), then SI (1.23M/50M). */
function formatCount(n: number): string {
  return Math.abs(n) < 1e6 ? Math.round(n).toLocaleString('en-US') : formatRate(n);
}

/** Short enough for a status line: 3.214, 0.0421, 3e-4, 12345. */
function formatField(v: string | number): string {
  if (typeof v === 'string') return v;
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return trimMantissa(v.toExponential(2));
  return trimZeros(v.toPrecision(4));
}

function trimMantissa(s: string): string {
  const [m, e] = s.split('e');
  return `${trimZeros(m!)}e${e}`;
}

interface Payload {
  rate: number;
  eta: number;
  fields: Record<string, string | number>;
}

export function progressBar(opts: ProgressOptions): ProgressBar {
  const enabled = opts.enabled !== false && progressEnabled();
  if (!enabled) return { enabled, update() {}, stop() {} };

  const total = Math.max(1, opts.total);
  const unit = opts.unit;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      barsize: 24,
      fps: 5,
      // When forced on in a non-terminal, write a plain line every 10 s instead of redrawing.
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      format: (options, params, payload: Payload) => {
        const fields = Object.entries(payload.fields)
          .map(([k, v]) => `${k} ${formatField(v)}`)
          .join('  ');
        return [
          `${opts.label} |${cliProgress.Format.BarFormat(params.progress, options)}| ${formatCount(params.value)}/${formatCount(params.total)} ${unit}`,
          `${formatRate(payload.rate)} ${unit}/s`,
          `ETA ${formatDuration(payload.eta)}`,
          ...(fields ? [fields] : []),
        ].join(' | ');
      },
    },
    cliProgress.Presets.shades_classic,
  );

  let lastTime = performance.now();
  let lastDone = 0;
  let rate = NaN;
  const payload = (fields: Record<string, string | number>, done: number): Payload => ({
    rate,
    eta: rate > 0 ? (total - done) / rate : NaN,
    fields,
  });
  let started = false;

  return {
    enabled,
    update(done, fields) {
      const now = performance.now();
      const dt = (now - lastTime) / 1000;
      if (!started) {
        // The first update may resume a run at step 12,000: count the rate from there.
        bar.start(total, done, payload(fields, done));
        started = true;
      } else if (dt > 0 && done >= lastDone) {
        const instant = (done - lastDone) / dt;
        // An exponential moving average over time, not over calls, so uneven update
        // intervals weigh by how long they lasted.
        const alpha = 1 - Math.exp(-dt / RATE_SMOOTHING_SECONDS);
        rate = Number.isNaN(rate) ? instant : rate + alpha * (instant - rate);
        bar.update(done, payload(fields, done));
      } else {
        bar.update(done, payload(fields, done));
      }
      lastTime = now;
      lastDone = done;
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
