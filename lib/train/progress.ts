/**
 * A one-line progress bar for a TTY (written over itself with \r, throttled); on anything else it
 * writes nothing, so logs and CI output stay clean.
 */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

export class ProgressBar {
  readonly enabled: boolean;
  #start = Date.now();
  #lastDraw = 0;
  #lastLen = 0;

  constructor(
    readonly total: number,
    readonly stream: ProgressStream = process.stderr,
    enabled?: boolean,
    readonly minIntervalMs = 80,
  ) {
    this.enabled = enabled ?? stream.isTTY === true;
  }

  /** Redraws with `done` of `total` finished; `info` is appended (e.g. the loss). */
  update(done: number, info = '', force = false): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && done < this.total && now - this.#lastDraw < this.minIntervalMs) return;
    this.#lastDraw = now;
    this.draw(this.render(done, info, now));
  }

  /** Final redraw and newline. */
  finish(info = ''): void {
    if (!this.enabled) return;
    this.draw(this.render(this.total, info, Date.now()));
    this.stream.write('\n');
  }

  /** The line for `done` steps (exported for tests). */
  render(done: number, info: string, now = Date.now()): string {
    const width = 20;
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const filled = Math.round(frac * width);
    const secs = (now - this.#start) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const eta = rate > 0 ? (this.total - done) / rate : 0;
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
    return `${bar} ${done}/${this.total} ${(frac * 100).toFixed(0).padStart(3)}% ${rate.toFixed(1)} it/s eta ${formatSeconds(eta)}${info ? '  ' + info : ''}`;
  }

  private draw(line: string): void {
    // Some terminals (and pipes posing as TTYs) report 0 columns: then the width is unknown, not zero.
    const cols = this.stream.columns !== undefined && this.stream.columns > 0 ? this.stream.columns : 120;
    const text = line.length >= cols ? line.slice(0, cols - 1) : line;
    this.stream.write('\r' + text + ' '.repeat(Math.max(0, this.#lastLen - text.length)));
    this.#lastLen = text.length;
  }
}

export function formatSeconds(s: number): string {
  const t = Math.max(0, Math.round(s));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}
