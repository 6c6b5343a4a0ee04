/**
 * What a user watches during training: metrics per window of optimizer updates (SpecForge's trainer logs
 * `train/ploss_k`, `train/acc_k`) appended to a JSONL file, and a progress line (loss, acc, tokens/s, lr,
 * ETA) drawn as a bar on a terminal or printed as plain lines otherwise.
 *
 * Metric names follow SpecForge's: `loss` (the mean of the per-position losses ploss_k, as its progress bar
 * shows; not the 0.8^k-weighted training objective),
 * `acc` (mean of acc_k), `ploss_k`, `acc_k`, and `simulated_acc_len` = Σ_k Π_{j≤k} acc_j, the expected
 * accepted length of a greedy chain if each position were accepted independently with probability acc_j.
 */
import { TensorBoardWriter } from "../io/tensorboard.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { type Eagle3Metrics, simulatedAcceptanceLength } from "../models/eagle3_metrics.ts";

export { simulatedAcceptanceLength };

/**
 * One metrics record: a training window or an evaluation pass at optimizer update `step` (metrics.jsonl's
 * `step`, SpecForge's name, counts optimizer updates).
 */
export interface MetricsRecord {
  /** "train" for a window of training updates, "eval" for a pass over the evaluation set. */
  split: "train" | "eval";
  /** Optimizer updates done when the record was taken. */
  step: number;
  /** 0-based epoch. */
  epoch: number;
  /** Mean of ploss_k. */
  loss: number;
  /** Per-TTT-position losses ploss_k (unweighted), k = 0..K-1. */
  ploss: number[];
  /** Per-TTT-position accuracies acc_k, k = 0..K-1. */
  acc: number[];
  /** Learning rate of the last update (train records). */
  lr?: number;
  /** Global grad norm before clipping of the last update (train records). */
  gradNorm?: number;
  /** Tokens (padded positions of the micro-batches) per second over the window (train records). */
  tokensPerSec?: number;
  /** Mean accepted tokens per target forward of real speculative decoding (eval records, when measured). */
  tau?: number;
  /**
   * Per-TTT-position expected acceptance α_k of the draft's distribution against the target's (SpecForge's
   * `acceptance_rate_k`), when the steps measured it.
   */
  acceptance?: number[];
  /** Seconds since the run (or the resumed run) started. */
  elapsed: number;
}

/** The record of metrics `m` taken at optimizer update `update` (its `loss` is the mean of ploss_k). */
export function metricsRecord(
  split: "train" | "eval",
  m: Eagle3Metrics,
  update: number,
  epoch: number,
  elapsed: number,
): MetricsRecord {
  const r: MetricsRecord = {
    split,
    step: update,
    epoch,
    loss: mean(m.ploss),
    ploss: m.ploss,
    acc: m.acc,
    elapsed,
  };
  if (m.acceptance) r.acceptance = m.acceptance;
  return r;
}

/** A record as the flat JSON object written to the JSONL file (SpecForge's key names). */
export function recordToJson(r: MetricsRecord): Record<string, number | string> {
  const out: Record<string, number | string> = { split: r.split, step: r.step, epoch: r.epoch, loss: r.loss };
  out.acc = mean(r.acc);
  r.ploss.forEach((v, k) => out[`ploss_${k}`] = v);
  r.acc.forEach((v, k) => out[`acc_${k}`] = v);
  out.simulated_acc_len = simulatedAcceptanceLength(r.acc);
  r.acceptance?.forEach((v, k) => out[`acceptance_rate_${k}`] = v);
  if (r.lr !== undefined) out.lr = r.lr;
  if (r.gradNorm !== undefined) out.grad_norm = r.gradNorm;
  if (r.tokensPerSec !== undefined) out.tokens_per_sec = r.tokensPerSec;
  if (r.tau !== undefined) out.tau = r.tau;
  out.elapsed = r.elapsed;
  return out;
}

/** Reads a JSON object written by {@link recordToJson} back into a record. */
export function recordFromJson(o: Record<string, unknown>, where: string): MetricsRecord {
  const num = (k: string) => {
    const v = o[k];
    if (typeof v !== "number") throw new Error(`${where}: field ${k} is not a number`);
    return v;
  };
  const series = (prefix: string) => {
    const out: number[] = [];
    for (let k = 0; typeof o[`${prefix}_${k}`] === "number"; k++) out.push(o[`${prefix}_${k}`] as number);
    return out;
  };
  if (o.split !== "train" && o.split !== "eval") throw new Error(`${where}: split must be train or eval`);
  return {
    split: o.split,
    step: num("step"),
    epoch: num("epoch"),
    loss: num("loss"),
    ploss: series("ploss"),
    acc: series("acc"),
    ...(typeof o.lr === "number" ? { lr: o.lr } : {}),
    ...(typeof o.grad_norm === "number" ? { gradNorm: o.grad_norm } : {}),
    ...(typeof o.tokens_per_sec === "number" ? { tokensPerSec: o.tokens_per_sec } : {}),
    ...(typeof o.tau === "number" ? { tau: o.tau } : {}),
    ...(typeof o.acceptance_rate_0 === "number" ? { acceptance: series("acceptance_rate") } : {}),
    elapsed: typeof o.elapsed === "number" ? o.elapsed : 0,
  };
}

/** Mean of a list (0 for an empty one). */
export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/**
 * A record's TensorBoard scalars, tagged `{split}/{name}` with metrics.jsonl's names: loss, ploss_k, acc_k,
 * acceptance_k, lr, grad_norm, tokens_per_s, tau.
 */
export function tensorboardScalars(r: MetricsRecord): Record<string, number | undefined> {
  const out: Record<string, number | undefined> = { [`${r.split}/loss`]: r.loss };
  r.ploss.forEach((v, k) => out[`${r.split}/ploss_${k}`] = v);
  r.acc.forEach((v, k) => out[`${r.split}/acc_${k}`] = v);
  r.acceptance?.forEach((v, k) => out[`${r.split}/acceptance_${k}`] = v);
  out[`${r.split}/lr`] = r.lr;
  out[`${r.split}/grad_norm`] = r.gradNorm;
  out[`${r.split}/tokens_per_s`] = r.tokensPerSec;
  out[`${r.split}/tau`] = r.tau;
  return out;
}

/**
 * The metrics file of a run: JSONL, one {@link recordToJson} object a line, appended as records come. When
 * a run resumes from the checkpoint of update `resumeStep`, records after that step (written by the run that
 * was interrupted, and about to be redone) are dropped first, so the file reads as one uninterrupted run.
 */
export class MetricsLog {
  /** Every record in the file, in order (those kept on resume, then those appended). */
  readonly records: MetricsRecord[] = [];

  private constructor(
    readonly path: string,
    private file: Deno.FsFile | null,
    private tensorboard: TensorBoardWriter | null,
  ) {}

  /** A log that keeps its records in memory only (the ranks of a data-parallel run other than rank 0). */
  static inMemory(): MetricsLog {
    return new MetricsLog("", null, null);
  }

  /**
   * Opens (creates) the file; with `resumeStep`, keeps the records up to that step, else starts empty. With
   * `tensorboardDir`, every appended record also goes to a new TensorBoard event file there
   * ({@link tensorboardScalars}).
   */
  static async open(
    path: string,
    resumeStep: number | null,
    opts: { tensorboardDir?: string } = {},
  ): Promise<MetricsLog> {
    const kept: MetricsRecord[] = [];
    if (resumeStep !== null) {
      let text = "";
      try {
        text = await Deno.readTextFile(path);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      text.split("\n").forEach((line, i) => {
        if (!line.trim()) return;
        let r: MetricsRecord;
        try {
          r = recordFromJson(JSON.parse(line), `${path}:${i + 1}`);
        } catch {
          return; // a line cut by the interruption
        }
        if (r.step <= resumeStep) kept.push(r);
      });
    }
    await writeFileAtomic(path, kept.map((r) => JSON.stringify(recordToJson(r)) + "\n").join(""));
    const file = await Deno.open(path, { append: true });
    const tb = opts.tensorboardDir ? await TensorBoardWriter.create(opts.tensorboardDir) : null;
    const log = new MetricsLog(path, file, tb);
    log.records.push(...kept);
    return log;
  }

  /** Appends one record (one line, written at once). */
  async append(r: MetricsRecord): Promise<void> {
    this.records.push(r);
    if (!this.file) return;
    const bytes = new TextEncoder().encode(JSON.stringify(recordToJson(r)) + "\n");
    let done = 0;
    while (done < bytes.length) done += await this.file.write(bytes.subarray(done));
    await this.tensorboard?.scalars(r.step, tensorboardScalars(r));
  }

  /** The TensorBoard event file, when one is written. */
  get tensorboardPath(): string | null {
    return this.tensorboard?.path ?? null;
  }

  /** Closes the file(s). */
  close(): void {
    try {
      this.file?.close();
    } catch { /* already closed */ }
    try {
      this.tensorboard?.close();
    } catch { /* already closed */ }
  }
}

/** "1h02m", "3m05s", "12s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

/** Fields of one progress line. */
export interface ProgressState {
  /** Optimizer updates done. */
  step: number;
  /** Optimizer updates the run will do in all. */
  totalSteps: number;
  /** 0-based epoch of the last micro-batch. */
  epoch: number;
  /** Mean loss over the TTT positions of the last window. */
  loss: number;
  /** Mean accuracy over the TTT positions of the last window. */
  acc: number;
  /** Tokens (padded positions) per second over the last window. */
  tokensPerSec: number;
  /** Learning rate of the last update. */
  lr: number;
  /** Seconds left, estimated. */
  eta: number;
}

/** "step 120/1000 ep 1 loss 2.3456 acc 0.412 lr 9.87e-4 1234 tok/s ETA 3m05s". */
export function formatProgress(s: ProgressState): string {
  return `step ${s.step}/${s.totalSteps} ep ${s.epoch} loss ${s.loss.toFixed(4)} acc ${s.acc.toFixed(3)} ` +
    `lr ${s.lr.toExponential(2)} ${Math.round(s.tokensPerSec)} tok/s ETA ${formatDuration(s.eta)}`;
}

/**
 * Prints progress: on a terminal a bar redrawn in place (`\r`), elsewhere (logs, CI) one plain line per
 * call. Messages ({@link note}) go on their own line either way.
 */
export class ProgressPrinter {
  #onLine = false;

  /**
   * `write` receives the text (default: stdout); `tty` redraws a bar in place (default: whether stdout is a
   * terminal); `width` is the bar's length in characters.
   */
  constructor(
    readonly write: (text: string) => void = (t) => Deno.stdout.writeSync(new TextEncoder().encode(t)),
    readonly tty: boolean = Deno.stdout.isTerminal(),
    readonly width = 24,
  ) {}

  /** Shows the progress of `s`. */
  show(s: ProgressState): void {
    const line = formatProgress(s);
    if (!this.tty) {
      this.write(line + "\n");
      return;
    }
    const frac = s.totalSteps > 0 ? Math.min(1, s.step / s.totalSteps) : 0;
    const filled = Math.round(frac * this.width);
    const bar = "█".repeat(filled) + "░".repeat(this.width - filled);
    this.write(`\r\x1b[2K${bar} ${(100 * frac).toFixed(0).padStart(3)}% ${line}`);
    this.#onLine = true;
  }

  /** Prints a message on a line of its own. */
  note(message: string): void {
    if (this.#onLine) this.write("\n");
    this.#onLine = false;
    this.write(message + "\n");
  }

  /** Ends the bar's line. */
  done(): void {
    if (this.#onLine) this.write("\n");
    this.#onLine = false;
  }
}
