/**
 * EAGLE-3 training, online and offline (SpecForge `scripts/train_eagle3_online.py` and
 * `train_eagle3_offline.py`; its current runtime, `specforge train`, counts the same way). A run is resolved
 * from its settings (./setup.ts), then loops over micro-batches: the {@link BatchSource} turns each batch into
 * the draft step's GPU inputs (online: the frozen target's forward, ./sources/online.ts; offline: the feature
 * files, ./sources/offline.ts), the draft's prebuilt step (lib/models/eagle3.ts, kept per batch shape by
 * ./step_programs.ts) runs the TTT unroll forward and backward into the accumulated gradients, and every
 * `draft_accumulation_steps` micro-batches the optimizer (./optimizer.ts) clips and updates with the learning
 * rate of ./schedule.ts. Evaluation is ./evaluate.ts; checkpoints ./run_checkpoint.ts; the run's mutable
 * state is one {@link RunState} (./run.ts). Under Open MPI's `mpirun` (lib/dist/world.ts) each rank trains on
 * its share of every batch and ./data_parallel.ts averages the gradients before each update; rank 0 writes.
 *
 * Counting: an update is one optimizer update (SpecForge's `global_step`). Micro-batches form one stream
 * across epochs, so an accumulation window may span an epoch boundary, as in SpecForge's scripts, where the
 * micro-batch counter runs across epochs. The schedule's total is `--total-steps`, else
 * `num_epochs · ceil(batches per epoch / accumulation)` (SpecForge's formula); --max-num-steps stops early
 * without changing it. Log, eval and save intervals count updates.
 *
 * No readback between micro-batches: metrics stay in GPU accumulators and are read every log interval (one
 * sync). A non-finite loss or gradient norm stops the run with {@link TrainingDivergedError} before anything
 * is saved (./divergence.ts).
 */
import { renderReportHtml } from "../eval/report.ts";
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import type { HubOptions } from "../io/hub.ts";
import { claimOutputDir } from "../io/lock.ts";
import type { Tensor } from "../tensor.ts";
import { ConfigError } from "../models/config.ts";
import type { DraftConfig } from "../models/draft_config.ts";
import { TargetEnds, TargetModel } from "../models/target.ts";
import { Eagle3Draft } from "../models/eagle3.ts";
import { eagle3ActivationBytes } from "../models/eagle3_activations.ts";
import { initEagle3WeightsFromTargetHead } from "../models/eagle3_init.ts";
import type { LkLossOptions } from "../ops/lk_loss.ts";
import type { RowSplitMatrix } from "../ops/row_split.ts";
import { DataLoader } from "../data/loader.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import { saveVocabMapping, type VocabMapping } from "../data/vocab.ts";
import { DraftOptimizer, type MuonSettings } from "./optimizer.ts";
import { MUON_DEFAULTS } from "../ops/muon.ts";
import { lrAt, type LrSchedule, warmupStepsFor } from "./schedule.ts";
import type { TrainSettings } from "./config.ts";
import { mean, MetricsLog, type MetricsRecord, metricsRecord, ProgressPrinter } from "./metrics.ts";
import { renderTrainingPlot } from "./plot.ts";
import type { BatchSource } from "./batch_source.ts";
import { OnlineSource } from "./sources/online.ts";
import { OfflineSource } from "./sources/offline.ts";
import { StepPrograms } from "./step_programs.ts";
import { embeddingOverride, type Note, type RunSetup, setUpRun } from "./setup.ts";
import { type Run, RunState, type TrainHooks } from "./run.ts";
import { checkFinite, TrainingDivergedError } from "./divergence.ts";
import { restoreRun, saveRun } from "./run_checkpoint.ts";
import { evaluate } from "./evaluate.ts";
import { readBest } from "./best.ts";
import { averageGradients } from "./data_parallel.ts";
import { checkPlanFits, type MemoryPlan, type PlanLimits } from "../models/memory_plan.ts";
import { planLimits, planRun } from "./training_plan.ts";
import { formatBytes, parseByteSize } from "../gpu/device_memory.ts";
import { loadTargetWithin } from "../models/target_stream.ts";
import { SINGLE_PROCESS, type World } from "../dist/world.ts";

export { TrainingDivergedError };
export { supervisedMask } from "./batch_source.ts";
export type { TrainHooks };

/** Files a run writes in its output directory besides the checkpoints. */
export const RUN_FILES = {
  metrics: "metrics.jsonl",
  /** TensorBoard event files (--report-to tensorboard). */
  tensorboard: "runs",
  plot: "training_curves.svg",
  /** One HTML page: curves, settings, links (lib/eval/report.ts renderReportHtml). */
  report: "report.html",
  vocabMapping: "vocab_mapping.safetensors",
} as const;

/** Options of {@link trainOnline} and {@link trainOffline}. */
export interface TrainOptions {
  /** The run's settings, e.g. from {@link parseTrainArgs} (which checks them with {@link checkSettings}). */
  settings: TrainSettings;
  /** How hub ids are resolved and downloaded (from the environment, in the CLI). */
  hub: HubOptions;
  /** Progress output (default: stdout, a bar on a terminal). */
  progress?: ProgressPrinter;
  /** Observers called during the run (none by default). */
  hooks?: TrainHooks;
  /**
   * The data-parallel ranks (lib/dist/world.ts; default one process). Each rank trains on its share of every
   * batch (`batchSize` is per rank); rank 0 alone holds the lock and writes logs, plots and checkpoints.
   */
  world?: World;
}

/** What a run did. */
export interface TrainResult {
  /** Optimizer updates done (including those before a resume). */
  updates: number;
  /** The last checkpoint written (also an SGLang directory), null if none. */
  checkpoint: string | null;
  /** The last training record, null when none was logged. */
  lastTrain: MetricsRecord | null;
  /** The last evaluation record, null when no evaluation ran. */
  lastEval: MetricsRecord | null;
  /** The draft config the run trained (derived from the target or loaded). */
  draftConfig: DraftConfig;
  /** The draft ↔ target vocabulary mapping the run used. */
  mapping: VocabMapping;
  /** Bytes of the draft step's activations for the largest micro-batch the run can meet (B × its longest sample). */
  activationBytes: number;
  /** The most bytes of GPU storage buffers the run held at once (the device's buffer pool, from the run's start). */
  peakBytes: number;
  /** The peak its memory plan foresaw (lib/train/memory_plan.ts). */
  plannedPeakBytes: number;
}

/**
 * The memory plan of the run the settings describe, and the device limits it is checked against, without
 * loading a weight or allocating anything (`--dry-run`). The data is tokenized (through the cache) for its
 * sample lengths; nothing else is written.
 */
export async function planTrainingRun(
  gpu: Gpu,
  o: TrainOptions,
): Promise<{ plan: MemoryPlan; limits: PlanLimits }> {
  const s = o.settings, world = o.world ?? SINGLE_PROCESS;
  const progress = o.progress ?? new ProgressPrinter();
  const setup = await setUpRun(s, o.hub, (m) => progress.note(m), world.size);
  const loader = loaderOf(s, setup, world);
  const schedule = scheduleOf(s, loader.stepsPerEpoch);
  const limit = Math.min(schedule.totalSteps, s.maxNumSteps ?? Infinity);
  return { plan: await planRun(gpu, s, setup, loader, limit, lkOf(s)), limits: planLimits(gpu, s) };
}

/**
 * Runs online training as the settings say: prepares data, draft config and vocabulary, trains with
 * checkpoints, evaluations, metrics and plots in the output directory, and returns what it did.
 */
export function trainOnline(gpu: Gpu, o: TrainOptions): Promise<TrainResult> {
  if (o.settings.trainHiddenStatesPath) {
    throw new ConfigError(
      "--train-hidden-states-path is for train-offline (train-online runs the target itself)",
    );
  }
  return train(gpu, o);
}

/**
 * Runs offline training (SpecForge's `scripts/train_eagle3_offline.py`): the same step as {@link trainOnline},
 * fed from the features prepare-hidden-states wrote (--train-hidden-states-path, --eval-hidden-states-path)
 * instead of a target forward; only the target's embedding (and its lm_head for hidden-state teachers) is
 * loaded. Files for the next batch are read while the GPU runs the current one.
 */
export function trainOffline(gpu: Gpu, o: TrainOptions): Promise<TrainResult> {
  if (!o.settings.trainHiddenStatesPath) {
    throw new ConfigError(
      "train-offline needs --train-hidden-states-path (a prepare-hidden-states directory)",
    );
  }
  return train(gpu, o);
}

/**
 * Holds the output directory's lock (lib/io/lock.ts: a second run into it fails at once; stale temporary
 * files of killed runs are removed) for the whole run.
 */
async function train(gpu: Gpu, o: TrainOptions): Promise<TrainResult> {
  const progress = o.progress ?? new ProgressPrinter();
  if ((o.world?.rank ?? 0) !== 0) return await trainLocked(gpu, { ...o, progress }); // rank 0 holds the lock
  const lock = await claimOutputDir(o.settings.outputDir, "train", { note: (m) => progress.note(m) });
  try {
    return await trainLocked(gpu, { ...o, progress });
  } finally {
    await lock.release();
  }
}

async function trainLocked(gpu: Gpu, o: TrainOptions): Promise<TrainResult> {
  const s = o.settings;
  const progress = o.progress ?? new ProgressPrinter();
  const note: Note = (m) => progress.note(m);
  const world = o.world ?? SINGLE_PROCESS;
  gpu.pool.resetPeak();
  const setup = await setUpRun(s, o.hub, note, world.size);
  const loader = loaderOf(s, setup, world);
  const schedule = scheduleOf(s, loader.stepsPerEpoch);
  const limit = Math.min(schedule.totalSteps, s.maxNumSteps ?? Infinity);
  const plan = await planRun(gpu, s, setup, loader, limit, lkOf(s));
  checkPlanFits(plan, planLimits(gpu, s));
  const top = [...plan.categories].sort((a, b) => b.bytes - a.bytes)[0];
  note(
    `memory plan: ${formatBytes(plan.peakBytes)} of GPU buffers at most; the largest part: ${top.name}, ` +
      `${formatBytes(top.bytes)} (--dry-run lists every part)`,
  );
  const headRows = plan.headRows ?? null;
  if (headRows !== null && s.headChunkRows === null) {
    note(
      `the draft head runs in windows of ${headRows} rows (a batch's logits at once would not fit the device)`,
    );
  }
  const owned: Array<{ destroy(): void }> = []; // freed in reverse order
  let log: MetricsLog | null = null;
  try {
    const { source, target, embedding } = await openSource(gpu, s, setup, note, owned, headRows !== null);
    const weights = s.initHeadFromTarget
      ? await initEagle3WeightsFromTargetHead(
        setup.draftConfig,
        s.seed,
        setup.targetDir,
        setup.mapping.draftToTarget,
      )
      : undefined;
    const draft = own(owned, Eagle3Draft.create(gpu, setup.draftConfig, { seed: s.seed, weights }));
    const params = draft.entries().map(([name, param, grad]) => ({ name, param, grad }));
    const optimizer = own(
      owned,
      await DraftOptimizer.create(gpu, params, { maxGradNorm: s.maxGradNorm, muon: muonOf(s) }),
    );
    const K = s.tttLength, vocab = setup.mapping, accumulationSteps = s.draftAccumulationSteps;
    const programs = own(
      owned,
      new StepPrograms(source, {
        draft,
        tttLength: K,
        embedding,
        vocab,
        accumulationSteps,
        stepDecay: s.tttLossDecay,
        headRows,
        lk: lkOf(s),
        mlpSaved: s.mlpSavedDtype,
      }),
    );
    const state = setup.resume ? await restoreRun(setup.resume, draft, optimizer) : new RunState();
    if (setup.resume) {
      state.best = await readBest(s.outputDir); // the best τ before the interruption
      note(
        `resumed from ${setup.resume.dir}: update ${state.update}, epoch ${state.epoch}, batch ${state.position.step}`,
      );
    }
    if (world.rank === 0) {
      await saveVocabMapping(join(s.outputDir, RUN_FILES.vocabMapping), setup.mapping);
      log = await MetricsLog.open(join(s.outputDir, RUN_FILES.metrics), setup.resume ? state.update : null, {
        tensorboardDir: s.reportTo === "tensorboard" ? join(s.outputDir, RUN_FILES.tensorboard) : undefined,
      });
    } else {
      log = MetricsLog.inMemory();
    }
    const hooks = o.hooks ?? {};
    const run: Run = {
      settings: s,
      setup,
      loader,
      schedule,
      limit,
      draft,
      optimizer,
      source,
      programs,
      target,
      log,
      progress,
      note,
      hooks,
      world,
      state,
    };
    const activationBytes = announce(run);
    await trainLoop(run);
    await finish(run);
    const peakBytes = gpu.pool.peakBytes;
    note(
      `GPU storage buffers: at most ${
        formatBytes(peakBytes)
      } held at once (the buffer pool's peak; planned ` +
        `${formatBytes(plan.peakBytes)})`,
    );
    return {
      updates: state.update,
      checkpoint: state.lastCheckpoint,
      lastTrain: state.lastTrain,
      lastEval: state.lastEval,
      draftConfig: setup.draftConfig,
      mapping: setup.mapping,
      activationBytes,
      peakBytes,
      plannedPeakBytes: plan.peakBytes,
    };
  } finally {
    progress.done();
    log?.close();
    for (const x of owned.reverse()) x.destroy();
  }
}

/** Adds `x` to the things the run frees when it ends; returns it. */
function own<T extends { destroy(): void }>(owned: Array<{ destroy(): void }>, x: T): T {
  owned.push(x);
  return x;
}

/**
 * The schedule: `--total-steps` updates, else `num_epochs · ceil(batches per epoch / accumulation)`, the first
 * `int(warmup_ratio · total)` of them warmup.
 */
/** This rank's loader of the training data; an error when the data makes no full batch. */
function loaderOf(s: TrainSettings, setup: RunSetup, world: World): DataLoader {
  const loader = new DataLoader(setup.train, {
    batchSize: s.batchSize,
    shuffle: true,
    seed: s.seed,
    rank: world.rank,
    worldSize: world.size,
  });
  if (loader.stepsPerEpoch === 0) {
    throw new ConfigError(
      `${s.trainDataPath}: ${setup.train.length} samples make no full batch of ${s.batchSize}`,
    );
  }
  return loader;
}

function scheduleOf(s: TrainSettings, batchesPerEpoch: number): LrSchedule {
  const totalSteps = s.totalSteps ?? s.numEpochs * Math.ceil(batchesPerEpoch / s.draftAccumulationSteps);
  return { base: s.learningRate, warmupSteps: warmupStepsFor(totalSteps, s.warmupRatio), totalSteps };
}

/**
 * The run's batch source (the target online, its ends and the feature files offline), the target (online,
 * for tau) and the draft's frozen embedding (--embedding-key's tensor, or the target's own). With
 * `windowedTeacher` (the draft head in windows), the steps make the teacher logits per window.
 */
async function openSource(
  gpu: Gpu,
  s: TrainSettings,
  setup: RunSetup,
  note: Note,
  owned: Array<{ destroy(): void }>,
  windowedTeacher: boolean,
): Promise<{ source: BatchSource; target: TargetModel | null; embedding: Tensor | RowSplitMatrix }> {
  const d2t = setup.mapping.draftToTarget;
  let source: OnlineSource | OfflineSource, target: TargetModel | null = null;
  if (setup.offline) {
    const lmHead = setup.offline.train.manifest.storage.teacherFormat !== "topk";
    const ends = await TargetEnds.load(gpu, setup.targetDir, { lmHead });
    source = own(owned, new OfflineSource(gpu, setup.offline, ends, d2t, windowedTeacher));
  } else {
    const loaded = await loadTargetWithin(gpu, setup.targetDir, setup.targetConfig, {
      auxLayers: setup.auxLayers,
      budgetBytes: s.targetMemoryBudget === null ? null : parseByteSize(s.targetMemoryBudget),
      onMessage: note,
    });
    source = own(owned, new OnlineSource(loaded, d2t, windowedTeacher));
    if (loaded instanceof TargetModel) target = loaded;
    else if (s.evalSpecSamples > 0) {
      note(
        "--eval-spec-samples: the target is streamed, tau is not measured during training (use deno task eval)",
      );
    }
  }
  const override = await embeddingOverride(gpu, setup, s.embeddingKey, note);
  if (override) own(owned, override);
  if (setup.offline && s.evalSpecSamples > 0) {
    note(
      "--eval-spec-samples: offline training has no target forward; tau is not measured (use deno task eval)",
    );
  }
  return { source, target, embedding: override ?? source.embed };
}

/** The LK loss of the settings (--lk-loss-type, --kl-scale, --kl-decay), null for SpecForge's KL loss. */
function lkOf(s: TrainSettings): LkLossOptions | null {
  return s.lkLossType === "none" ? null : { type: s.lkLossType, klScale: s.klScale, klDecay: s.klDecay };
}

/** The run's Muon settings (null: AdamW alone): speculators' defaults with the run's lr, momentum and decay. */
export function muonOf(s: TrainSettings): MuonSettings | null {
  if (s.optimizer !== "muon") return null;
  const lrRatio = (s.muonLr ?? 10 * s.learningRate) / s.learningRate;
  return { ...MUON_DEFAULTS, momentum: s.muonMomentum, weightDecay: s.muonWeightDecay, lrRatio };
}

/** Prints the run's plan and the step's activation memory; returns the activation bytes. */
function announce(run: Run): number {
  const { settings: s, setup, loader, schedule } = run;
  run.note(
    `training: ${setup.train.length} samples, ${loader.stepsPerEpoch} batches of ${s.batchSize} per epoch, ` +
      `${s.numEpochs} epochs, ${schedule.totalSteps} updates (warmup ${schedule.warmupSteps}), ` +
      `ttt ${s.tttLength}, aux layers [${setup.auxLayers}]`,
  );
  // The longest micro-batch the data can make: its longest sample (already cut at --max-length).
  const longest = (d: TokenizedDataset | null) =>
    d ? Array.from({ length: d.length }, (_, i) => d.sampleLength(i)).reduce((a, b) => Math.max(a, b), 0) : 0;
  const shape = {
    batch: s.batchSize,
    seqLen: Math.max(longest(setup.train), longest(setup.eval)),
    tttLength: s.tttLength,
    train: true,
    lk: lkOf(s),
    acceptance: true,
    mlpSaved: s.mlpSavedDtype,
  };
  const bytes = eagle3ActivationBytes(setup.draftConfig, shape);
  run.note(
    `draft step activations: ${(bytes / 2 ** 20).toFixed(1)} MiB per micro-batch at most ` +
      `(B ${shape.batch} × T ${shape.seqLen}, the longest sample; ttt ${shape.tttLength})`,
  );
  return bytes;
}

/** Micro-batches from the data position on, an optimizer update every accumulation window, to the limit. */
async function trainLoop(run: Run): Promise<void> {
  const { settings: s, state, loader } = run;
  if (state.update === 0) run.optimizer.zeroGrads();
  while (state.position.epoch < s.numEpochs && state.update < run.limit) {
    const batches = loader.batches(state.position.epoch, state.position.step);
    for await (const b of run.source.read(batches, "train")) {
      state.epoch = state.position.epoch;
      state.window.tokens += await run.programs.run(b, "train");
      state.microBatches++;
      state.position = loader.next(state.position);
      if (state.microBatches % s.draftAccumulationSteps !== 0) continue;
      await update(run);
      if (state.update >= run.limit) return;
    }
  }
}

/** One optimizer update, then the log, evaluation and save that fall on it. */
async function update(run: Run): Promise<void> {
  const { settings: s, state } = run;
  state.update++;
  const lr = lrAt(state.update, run.schedule);
  await averageGradients(run.world, run.draft);
  run.optimizer.update(lr);
  await run.hooks.afterUpdate?.(state.update, run.draft);
  if (state.update % s.logInterval === 0 || state.update === run.limit) await logTraining(run, lr);
  if (s.evalInterval > 0 && state.update % s.evalInterval === 0) {
    await evaluate(run);
    await writePlot(run);
  }
  if (s.saveInterval > 0 && state.update % s.saveInterval === 0) await saveRun(run);
}

/** Appends the training record of the window since the last one, and shows the progress line. */
async function logTraining(run: Run, lr: number): Promise<void> {
  const { state } = run;
  await checkFinite(run, `at the log of update ${state.update}`);
  run.programs.sums.train.reduce(run.world);
  const m = run.programs.sums.train.take();
  const rate = new Float64Array([state.takeWindow()]);
  run.world.sum(rate); // tokens/s of all ranks together
  const tokensPerSec = rate[0];
  const record: MetricsRecord = {
    ...metricsRecord("train", m, state.update, state.epoch, state.elapsed()),
    lr,
    gradNorm: await run.optimizer.lastGradNorm(),
    tokensPerSec,
  };
  state.lastTrain = record;
  await run.log.append(record);
  run.progress.show({
    step: state.update,
    totalSteps: run.limit,
    epoch: state.epoch,
    loss: record.loss,
    acc: mean(m.acc),
    tokensPerSec,
    lr,
    eta: state.secondsPerUpdate() * (run.limit - state.update),
  });
}

/** The end of a run: the last save and evaluation if they did not fall on the last update, and the plot. */
async function finish(run: Run): Promise<void> {
  const { state } = run;
  run.progress.done();
  if (state.update > 0 && state.savedAt !== state.update) await saveRun(run);
  if (state.evaluatedAt !== state.update) await evaluate(run);
  await writePlot(run);
}

/** The curves and report.html (rank 0 alone writes them). */
async function writePlot(run: Run): Promise<void> {
  if (run.world.rank !== 0) return;
  const svg = renderTrainingPlot(run.log.records, `EAGLE-3 draft of ${run.settings.targetModelPath}`);
  await writeFileAtomic(join(run.settings.outputDir, RUN_FILES.plot), svg);
  const last = run.log.records.at(-1);
  const links: { label: string; href: string }[] = [{ label: "metrics.jsonl", href: RUN_FILES.metrics }, {
    label: "curves (SVG)",
    href: RUN_FILES.plot,
  }];
  if (run.log.tensorboardPath) links.push({ label: "TensorBoard events", href: RUN_FILES.tensorboard });
  await writeFileAtomic(
    join(run.settings.outputDir, RUN_FILES.report),
    renderReportHtml({
      title: `Eaglet training: EAGLE-3 draft of ${run.settings.targetModelPath}`,
      headline: last
        ? {
          "updates": String(run.state.update),
          [`last ${last.split} loss`]: last.loss.toFixed(4),
          [`last ${last.split} acc per TTT position`]: last.acc.map((a) => a.toFixed(3)).join(" "),
        }
        : undefined,
      curvesSvg: svg,
      settings: { ...run.settings },
      links,
    }),
  );
}
