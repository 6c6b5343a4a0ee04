/**
 * A counting progress bar for the CLI's long phases (generation, evaluation): on a terminal one line redrawn
 * in place, elsewhere (logs, CI) one plain line per update. Training has its own richer line
 * (lib/train/metrics.ts `ProgressPrinter`).
 */
import { formatDuration } from "../train/metrics.ts";

/** Shows `done of total` with elapsed time and an estimate of the time left. */
export class ProgressBar {
  readonly #start = performance.now();
  #onLine = false;

  /**
   * `label` names the phase; `total` is the count at completion; `write` and `tty` default to stdout and
   * whether it is a terminal.
   */
  constructor(
    readonly label: string,
    readonly total: number,
    readonly write: (text: string) => void = (t) => Deno.stdout.writeSync(new TextEncoder().encode(t)),
    readonly tty: boolean = Deno.stdout.isTerminal(),
    readonly width = 24,
  ) {}

  /** Shows that `done` units of `total` are complete; `detail` is appended to the line. */
  update(done: number, detail = ""): void {
    const secs = (performance.now() - this.#start) / 1000;
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const eta = done > 0 ? secs * (this.total - done) / done : NaN;
    const text = `${this.label} ${done}/${this.total} ${formatDuration(secs)} elapsed` +
      (done < this.total ? `, ETA ${formatDuration(eta)}` : "") + (detail ? ` ${detail}` : "");
    if (!this.tty) {
      this.write(`${text}\n`);
      return;
    }
    const filled = Math.round(frac * this.width);
    this.write(`\r\x1b[2K${"█".repeat(filled)}${"░".repeat(this.width - filled)} ${text}`);
    this.#onLine = true;
  }

  /** Ends the bar's line (call once the phase is over). */
  done(): void {
    if (this.#onLine) this.write("\n");
    this.#onLine = false;
  }
}
