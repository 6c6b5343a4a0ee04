/**
 * One training run as the trainer's functions share it: {@link Run}, what is fixed once the run starts (the
 * settings, the resolved setup, the draft, the optimizer, the batch source and its programs, the outputs),
 * and {@link RunState}, everything that changes as it goes (the counters a checkpoint saves: optimizer
 * updates, micro-batches, the data position; what was last logged and saved; the timing window of the
 * progress line).
 */
import type { DataLoader, LoaderPosition } from "../data/loader.ts";
import type { World } from "../dist/world.ts";
import type { Eagle3Draft } from "../models/eagle3.ts";
import type { TargetModel } from "../models/target.ts";
import type { BatchSource, SourcedBatch } from "./batch_source.ts";
import type { BestRecord } from "./best.ts";
import type { TrainingState } from "./checkpoint.ts";
import type { TrainSettings } from "./config.ts";
import type { MetricsLog, MetricsRecord, ProgressPrinter } from "./metrics.ts";
import type { DraftOptimizer } from "./optimizer.ts";
import type { LrSchedule } from "./schedule.ts";
import type { Note, RunSetup } from "./setup.ts";
import type { StepPrograms } from "./step_programs.ts";

/** Optional observers of a run (monitoring, tests). */
export interface TrainHooks {
  /** Called after optimizer update `update` was queued (the draft's tensors hold its result once it runs). */
  afterUpdate?: (update: number, draft: Eagle3Draft) => void | Promise<void>;
}

/** What a run holds, fixed once it starts (its mutable part is {@link Run.state}). */
export interface Run {
  /** The run's settings. */
  settings: TrainSettings;
  /** What the settings resolved to. */
  setup: RunSetup;
  /** The training batches' order and position. */
  loader: DataLoader;
  /** The learning-rate schedule (its total counts updates). */
  schedule: LrSchedule;
  /** The last update this run does: the schedule's total, or --max-num-steps if smaller. */
  limit: number;
  /** The draft being trained. */
  draft: Eagle3Draft;
  /** AdamW over the draft's parameters. */
  optimizer: DraftOptimizer;
  /** Where the step inputs come from. */
  source: BatchSource<SourcedBatch>;
  /** The per-shape feeds and steps, and the metric sums. */
  programs: StepPrograms<SourcedBatch>;
  /** The target model (online), for measuring tau by speculative decoding; null offline. */
  target: TargetModel | null;
  /** The metrics file. */
  log: MetricsLog;
  /** Progress output. */
  progress: ProgressPrinter;
  /** Prints one note line. */
  note: Note;
  /** Observers. */
  hooks: TrainHooks;
  /** The data-parallel ranks (one process: lib/dist/world.ts SINGLE_PROCESS); rank 0 writes the files. */
  world: World;
  /** The mutable state. */
  state: RunState;
}

/** Where a run is; see the module comment. */
export class RunState {
  /** Optimizer updates done (including those before a resume). */
  update = 0;
  /** Micro-batches done; one stream across epochs, so an accumulation window may span an epoch boundary. */
  microBatches = 0;
  /** Where the data loader continues: the next micro-batch is batch `step` of epoch `epoch`. */
  position: LoaderPosition = { epoch: 0, step: 0 };
  /** The epoch of the last micro-batch run (checkpoint names and records carry it). */
  epoch = 0;
  /** The last checkpoint written (or resumed from), null if none. */
  lastCheckpoint: string | null = null;
  /** The update the last checkpoint holds (-1: none this run). */
  savedAt = -1;
  /** The update of the last evaluation (-1: none yet). */
  evaluatedAt = -1;
  /** The last training record, null when none was logged. */
  lastTrain: MetricsRecord | null = null;
  /** The last evaluation record, null when no evaluation ran. */
  lastEval: MetricsRecord | null = null;
  /** The best measured τ of the run and its update (./best.ts), null before the first. */
  best: BestRecord | null = null;
  /** Seconds of training before this process started (a resumed run's earlier time). */
  elapsedBefore = 0;
  /** The update this process started from. */
  startUpdate = 0;
  /** Tokens run since the last training record, and when that window started (performance.now()). */
  window = { tokens: 0, start: performance.now() };
  readonly #t0 = performance.now();

  /** The state of a run resumed from a checkpoint `dir` saved with `s`. */
  static resumed(s: TrainingState, dir: string): RunState {
    const r = new RunState();
    r.update = r.savedAt = r.startUpdate = s.globalStep;
    r.microBatches = s.microSteps;
    r.position = s.position;
    r.epoch = s.position.epoch;
    r.elapsedBefore = s.elapsed;
    r.lastCheckpoint = dir;
    return r;
  }

  /** Seconds of training, the resumed run's earlier time included. */
  elapsed(): number {
    return this.elapsedBefore + (performance.now() - this.#t0) / 1000;
  }

  /** Seconds per update in this process so far. */
  secondsPerUpdate(): number {
    return (this.elapsed() - this.elapsedBefore) / Math.max(1, this.update - this.startUpdate);
  }

  /** Starts a new timing window; returns the finished window's tokens per second. */
  takeWindow(): number {
    const now = performance.now();
    const rate = this.window.tokens / Math.max((now - this.window.start) / 1000, 1e-9);
    this.window = { tokens: 0, start: now };
    return rate;
  }
}
