/**
 * DFlash training online (SpecForge `specforge train` with a DFlash strategy: `OnlineDFlashModel` in
 * specforge/algorithms/common/dflash_family_model.py, its controller's global normalisation in
 * specforge/training/controller.py): the frozen target runs on every micro-batch and its outputs at the
 * draft's `target_layer_ids` feed the draft's step (lib/models/dflash_step.ts) directly; random anchors,
 * block inputs, labels and weights are computed on the host from the batch's tokens and loss mask
 * (lib/models/dflash_blocks.ts). The gradient of an optimizer window is that of Σ numerators / Σ
 * denominators over its micro-batches: the denominators are known on the host before the window runs, so each
 * micro-batch's loss gradient is scaled by 1/Σ den and nothing is read back between micro-batches. Metrics per
 * block slot stay in GPU sums until a log interval. Checkpoints are DFlash directories SGLang and vLLM load
 * (lib/models/dflash_export.ts).
 *
 * Checkpoints hold the training state beside the export (./dflash_checkpoint.ts), and `--resume` continues
 * bit for bit. Offline (`train-offline`), the features of the draft's target layers come from the files
 * prepare-hidden-states wrote (./dflash_features.ts); stored f32, the run equals the online one bit for bit.
 * Before anything loads, the run's memory plan (./dflash_plan.ts) is checked against the device; --dry-run
 * prints it (lib/train/task.ts). Not yet for DFlash: several ranks, a streamed target; each is refused by name.
 */
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { claimOutputDir } from "../io/lock.ts";
import { resolveModelPath } from "../io/hub.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { mulberry32 } from "../data/random.ts";
import { type Batch, DataLoader } from "../data/loader.ts";
import { loadTokenizer } from "../data/tokenizer.ts";
import { ConfigError, loadTargetConfig, type TargetConfig } from "../models/config.ts";
import { TargetEnds } from "../models/target.ts";
import {
  deriveDflashConfig,
  type DflashConfig,
  dflashConfigJson,
  parseDflashConfig,
} from "../models/dflash_config.ts";
import { fileSha256, readManifest } from "../offline/format.ts";
import type { FeatureSet } from "../offline/dataset.ts";
import {
  type DflashFeed,
  type DflashSource,
  OfflineDflashSource,
  OnlineDflashSource,
} from "./dflash_features.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import { jsonSha256, type RunFingerprint } from "./fingerprint.ts";
import { CHECKPOINT_VERSION } from "./checkpoint.ts";
import { type DflashResume, resolveDflashResume, saveDflashCheckpoint } from "./dflash_checkpoint.ts";
import { DflashDraft } from "../models/dflash.ts";
import { DflashStep } from "../models/dflash_step.ts";
import { dflashRunWindowRows } from "../models/dflash_head.ts";
import {
  type DflashBlockInputs,
  dflashBlockInputs,
  dflashBlocksPerSample,
  dflashDecayedWeights,
  sampleDflashAnchors,
} from "../models/dflash_blocks.ts";
import { dflashBlockRow0, dflashRanges } from "../ops/dflash_attention.ts";
import { isDpace, SLOT_SUM_COLS } from "../ops/dflash_loss.ts";
import { DraftOptimizer } from "./optimizer.ts";
import { lrAt, type LrSchedule, warmupStepsFor } from "./schedule.ts";
import { settingsToJson, type TrainSettings } from "./config.ts";
import { MetricsLog, type MetricsRecord, ProgressPrinter } from "./metrics.ts";
import { renderTrainingPlot } from "./plot.ts";
import { batchLengths } from "./sources/online.ts";
import { openFeatures, tokenizeData } from "./setup.ts";
import { muonOf, type TrainOptions } from "./trainer.ts";
import { TrainingDivergedError } from "./divergence.ts";
import { planDflashWindows } from "./dflash_plan.ts";
import { planLimits } from "./training_plan.ts";
import {
  checkPlanFits,
  MAX_SHAPES,
  type MemoryPlan,
  type PlanLimits,
  withTargetPlanInput,
} from "../models/memory_plan.ts";
import { formatBytes } from "../gpu/device_memory.ts";

/** What a DFlash run did. */
export interface DflashTrainResult {
  /** Optimizer updates done. */
  updates: number;
  /** The last checkpoint (a DFlash directory), null if none. */
  checkpoint: string | null;
  /** The last training record. */
  lastTrain: MetricsRecord | null;
  /** The last evaluation record. */
  lastEval: MetricsRecord | null;
  /** The draft's config. */
  config: DflashConfig;
  /** The buffer pool's peak bytes over the run. */
  peakBytes: number;
  /** The memory plan's peak bytes (lib/train/dflash_plan.ts). */
  plannedPeakBytes: number;
}

/** Refuses what DFlash training does not do yet, by flag. */
function checkDflashSettings(s: TrainSettings, worldSize: number): void {
  const refuse = (what: string) => {
    throw new ConfigError(`--draft-type dflash: ${what} is not supported for DFlash drafts yet`);
  };
  if (worldSize > 1) refuse("training on several ranks");
  if (s.targetMemoryBudget !== null && !s.trainHiddenStatesPath) {
    refuse("a streamed target (--target-memory-budget)"); // offline, the target's layers are not loaded
  }
}

/**
 * The draft config: --draft-model-config's (a DFlash config.json), else derived from the target with the
 * run's settings, its target layers --target-layer-ids', else (offline) the features' `captured` layers, else
 * SpecForge's default; the mask token as SpecForge's `resolve_mask_token_id` falls back (the first embedding
 * row past the tokenizer's vocabulary, the pad token, eos).
 */
async function resolveDflashConfig(
  s: TrainSettings,
  target: TargetConfig,
  targetDir: string,
  captured: number[] | null,
): Promise<DflashConfig> {
  if (s.draftModelConfig) {
    const cfg = parseDflashConfig(
      JSON.parse(await Deno.readTextFile(s.draftModelConfig)),
      s.draftModelConfig,
    );
    if (cfg.hiddenSize !== target.hiddenSize || cfg.vocabSize !== target.vocabSize) {
      throw new ConfigError(
        `${s.draftModelConfig}: hidden_size ${cfg.hiddenSize} and vocab_size ${cfg.vocabSize} must be the target's ` +
          `(${target.hiddenSize}, ${target.vocabSize}): a DFlash draft uses its embedding and lm_head`,
      );
    }
    return cfg;
  }
  let mask = s.maskTokenId;
  if (mask === null) {
    const tokenizer = await loadTokenizer(targetDir);
    mask = tokenizer.vocabSize < target.vocabSize
      ? tokenizer.vocabSize
      : target.padTokenId ?? target.eosTokenIds[0] ?? null;
    if (mask === null) {
      throw new ConfigError(
        "--mask-token-id: the target has no unused embedding row, pad or eos token to use",
      );
    }
  }
  return deriveDflashConfig(target, {
    layers: s.numDraftLayers,
    blockSize: s.blockSize,
    targetLayerIds: s.targetLayerIds ?? captured ?? undefined,
    maskTokenId: mask,
    slidingWindow: s.slidingWindow,
  });
}

/** Runs DFlash training online as the settings say; see the module comment. */
export async function trainDflashOnline(gpu: Gpu, o: TrainOptions): Promise<DflashTrainResult> {
  if (o.settings.trainHiddenStatesPath) {
    throw new ConfigError(
      "--train-hidden-states-path is for train-offline (train-online runs the target itself)",
    );
  }
  return await trainDflash(gpu, o);
}

/**
 * Runs DFlash training offline (--train-hidden-states-path, --eval-hidden-states-path: directories
 * prepare-hidden-states --draft-type dflash wrote); only the target's embedding, lm_head and final norm load.
 */
export async function trainDflashOffline(gpu: Gpu, o: TrainOptions): Promise<DflashTrainResult> {
  if (!o.settings.trainHiddenStatesPath) {
    throw new ConfigError(
      "train-offline needs --train-hidden-states-path (a prepare-hidden-states --draft-type dflash directory)",
    );
  }
  return await trainDflash(gpu, o);
}

async function trainDflash(gpu: Gpu, o: TrainOptions): Promise<DflashTrainResult> {
  const s = o.settings, progress = o.progress ?? new ProgressPrinter();
  checkDflashSettings(s, o.world?.size ?? 1);
  const lock = await claimOutputDir(s.outputDir, "train", { note: (m) => progress.note(m) });
  try {
    return await trainLocked(gpu, s, o, progress);
  } finally {
    progress.done();
    await lock.release();
  }
}

/** What a run resolves before loading anything: the target, the draft config and the data. */
interface Resolved {
  targetDir: string;
  targetConfig: TargetConfig;
  cfg: DflashConfig;
  data: Awaited<ReturnType<typeof tokenizeData>> | Awaited<ReturnType<typeof openFeatures>>;
}

async function resolveRun(s: TrainSettings, o: TrainOptions, note: (m: string) => void): Promise<Resolved> {
  const targetDir = await resolveModelPath(s.targetModelPath, o.hub);
  const targetConfig = await loadTargetConfig(join(targetDir, "config.json"));
  const offline = s.trainHiddenStatesPath;
  const captured = offline ? (await readManifest(offline)).auxLayers : null;
  const cfg = await resolveDflashConfig(s, targetConfig, targetDir, captured);
  const data = offline
    ? await openFeatures(s, targetConfig, targetDir, cfg.targetLayerIds, note, LAYERS_FLAG)
    : await tokenizeData(s, targetDir, note);
  return { targetDir, targetConfig, cfg, data };
}

/** The run's loader (its batches' order) and its update limit, as {@link DflashRun} makes them. */
function loopOf(
  s: TrainSettings,
  train: TokenizedDataset,
): { loader: DataLoader; total: number; limit: number } {
  const loader = new DataLoader(train, { batchSize: s.batchSize, shuffle: true, seed: s.seed });
  const total = s.totalSteps ?? s.numEpochs * Math.ceil(loader.stepsPerEpoch / s.draftAccumulationSteps);
  return { loader, total, limit: Math.min(total, s.maxNumSteps ?? Infinity) };
}

/** A run's memory plan, the device's limits and the head's window request the plan chose (./dflash_plan.ts). */
interface RunPlan {
  plan: MemoryPlan;
  limits: PlanLimits;
  headChunkRows: number | null;
}

/** The memory plan of a resolved run, its head window chosen to fit the device (./dflash_plan.ts). */
async function planOf(gpu: Gpu, s: TrainSettings, r: Resolved): Promise<RunPlan> {
  const { loader, limit } = loopOf(s, r.data.train);
  const limits = planLimits(gpu, s);
  const chosen = await withTargetPlanInput(gpu, r.targetDir, r.targetConfig, (target) =>
    planDflashWindows(
      {
        ...target,
        draft: r.cfg,
        features: r.data.offline?.train.manifest ?? null,
        loader,
        evalSet: r.data.eval,
        updates: limit,
        numEpochs: s.numEpochs,
        accumulationSteps: s.draftAccumulationSteps,
        evalInterval: s.evalInterval,
        evalBatches: s.evalBatches,
        numAnchors: s.numAnchors,
        muon: s.optimizer === "muon",
      },
      s.headChunkRows,
      limits,
    ));
  return { ...chosen, limits };
}

/** The note of the head's window the run uses (the plan's, on its largest batch shape). */
function headNote(s: TrainSettings, p: RunPlan): string {
  const rows = p.plan.headRows ?? null;
  if (rows === null) return "draft head (lm_head, loss, their backward): every row of a batch at once";
  const why = s.headChunkRows !== null
    ? "--head-chunk-rows"
    : p.headChunkRows !== null
    ? "a batch's logits at once would not fit the device"
    : "a batch's logits would not bind as one storage buffer";
  return `draft head (lm_head, loss, their backward): windows of ${rows} rows (${why})`;
}

/** --dry-run: the memory plan of a DFlash run (online or offline) and the limits it is checked against. */
export async function planDflashRun(
  gpu: Gpu,
  o: TrainOptions,
): Promise<RunPlan> {
  const s = o.settings, progress = o.progress ?? new ProgressPrinter();
  checkDflashSettings(s, o.world?.size ?? 1);
  return await planOf(gpu, s, await resolveRun(s, o, (m) => progress.note(m)));
}

async function trainLocked(
  gpu: Gpu,
  s: TrainSettings,
  o: TrainOptions,
  progress: ProgressPrinter,
): Promise<DflashTrainResult> {
  const note = (m: string) => progress.note(m);
  const resolved = await resolveRun(s, o, note), { targetDir, cfg, data } = resolved;
  note(
    `DFlash draft: ${cfg.numLayers} layer(s) [${cfg.layerTypes}], block ${cfg.blockSize}, target layers ` +
      `[${cfg.targetLayerIds}], mask token ${cfg.maskTokenId}; loss ${s.lossType}` +
      (s.lossDecayGamma !== null && !isDpace(s.lossType) ? `, decay γ ${s.lossDecayGamma}` : ""),
  );
  const runPlan = await planOf(gpu, s, resolved), { plan, limits } = runPlan;
  checkPlanFits(plan, limits);
  const top = [...plan.categories].sort((a, b) => b.bytes - a.bytes)[0];
  note(
    `memory plan: ${formatBytes(plan.peakBytes)} of GPU buffers at most; the largest part: ${top.name}, ` +
      `${formatBytes(top.bytes)} (--dry-run lists every part)`,
  );
  note(headNote(s, runPlan));
  const fingerprint: RunFingerprint = {
    ...data.fingerprint,
    target_config: await fileSha256(join(targetDir, "config.json")),
    draft_config: jsonSha256(dflashConfigJson(cfg)),
  };
  const resume = await resolveDflashResume(s, cfg, fingerprint, note);
  const source = data.offline
    ? await offlineSource(gpu, data.offline, targetDir)
    : await OnlineDflashSource.load(gpu, targetDir, cfg.targetLayerIds);
  let run: DflashRun | null = null;
  try {
    const sets = { train: data.train, eval: data.eval, fingerprint };
    run = new DflashRun(gpu, s, cfg, source, sets, progress, runPlan.headChunkRows);
    await run.open(resume);
    await run.train();
    return { ...run.result(), peakBytes: gpu.pool.peakBytes, plannedPeakBytes: plan.peakBytes };
  } finally {
    run?.destroy();
    source.destroy();
  }
}

/** The flags that choose a DFlash draft's target layers, named when stored features hold others. */
const LAYERS_FLAG = "--target-layer-ids (or the --draft-model-config's dflash_config.target_layer_ids)";

/** The offline source: the feature sets and the target's embedding, lm_head and final norm. */
async function offlineSource(
  gpu: Gpu,
  sets: { train: FeatureSet; eval: FeatureSet | null },
  targetDir: string,
): Promise<OfflineDflashSource> {
  const ends = await TargetEnds.load(gpu, targetDir, { lmHead: true, finalNorm: true });
  try {
    return new OfflineDflashSource(gpu, sets, ends);
  } catch (e) {
    ends.destroy();
    throw e;
  }
}

/** The programs of one batch shape: the features' feed, the training step and (lazily) the evaluation step. */
interface Shape {
  feed: DflashFeed;
  train: DflashStep | null;
  eval: DflashStep | null;
}

/** A micro-batch's host inputs, ready to write. */
interface Prepared {
  batch: Batch;
  lengths: number[];
  inputs: DflashBlockInputs;
  omega: Float32Array<ArrayBuffer>;
  full: Uint32Array<ArrayBuffer>;
  /** The sliding layers' ranges; null when every layer is full. */
  sliding: Uint32Array<ArrayBuffer> | null;
  /** The loss denominator: Σ ω (`dflash`) or the samples (D-PACE). */
  den: number;
}

/** A DFlash run's state and loop. */
class DflashRun {
  readonly draft: DflashDraft;
  optimizer!: DraftOptimizer;
  log!: MetricsLog;
  readonly loader: DataLoader;
  readonly schedule: LrSchedule;
  readonly limit: number;
  /** The kept shapes' programs, least recently used first. */
  readonly #shapes = new Map<string, Shape>();
  /** The metric sums of freed shapes' steps, by split, until taken. */
  readonly #held: Record<"train" | "eval", Float64Array>;
  update = 0;
  epoch = 0;
  microBatches = 0;
  checkpoint: string | null = null;
  lastTrain: MetricsRecord | null = null;
  lastEval: MetricsRecord | null = null;
  #window = { den: 0, tokens: 0, started: performance.now() };
  #started = performance.now();
  #savedAt = -1;
  #position = { epoch: 0, step: 0 };
  /** Seconds of training before a resume. */
  #elapsedBefore = 0;

  constructor(
    readonly gpu: Gpu,
    readonly s: TrainSettings,
    readonly cfg: DflashConfig,
    readonly source: DflashSource,
    readonly data: { train: TokenizedDataset; eval: TokenizedDataset | null; fingerprint: RunFingerprint },
    readonly progress: ProgressPrinter,
    /** The head's window request: --head-chunk-rows, or the plan's choice (./dflash_plan.ts). */
    readonly headChunkRows: number | null,
  ) {
    this.draft = DflashDraft.create(gpu, cfg, { seed: s.seed });
    const slots = cfg.blockSize * SLOT_SUM_COLS;
    this.#held = { train: new Float64Array(slots), eval: new Float64Array(slots) };
    const loop = loopOf(s, data.train);
    this.loader = loop.loader;
    if (this.loader.stepsPerEpoch === 0) {
      throw new ConfigError(
        `${s.trainDataPath}: ${data.train.length} samples make no full batch of ${s.batchSize}`,
      );
    }
    const total = loop.total;
    this.schedule = {
      base: s.learningRate,
      warmupSteps: warmupStepsFor(total, s.warmupRatio),
      totalSteps: total,
    };
    this.limit = loop.limit;
  }

  /** The optimizer, the metrics log, and the weights: from `resume`, else initialised. */
  async open(resume: DflashResume | null): Promise<void> {
    if (!resume && this.s.initHeadFromTarget) {
      // The draft's logits come from the target's lm_head: start its final norm where the target's is (as
      // the target's forward applies it), so that its first logits have the target's scale.
      const weights = await this.draft.getWeights();
      weights.set("norm.weight", await this.source.finalNorm.readFloat());
      this.draft.setWeights(weights);
    }
    const params = this.draft.entries().map(([name, param, grad]) => ({ name, param, grad }));
    this.optimizer = await DraftOptimizer.create(this.gpu, params, {
      maxGradNorm: this.s.maxGradNorm,
      muon: muonOf(this.s),
    });
    if (resume) {
      const { state, dir } = resume.checkpoint;
      this.draft.setWeights(resume.weights);
      this.optimizer.loadState(resume.checkpoint.optimizer, state.globalStep, dir);
      this.update = state.globalStep;
      this.microBatches = state.microSteps;
      this.#position = { ...state.position };
      this.epoch = state.position.epoch;
      this.#elapsedBefore = state.elapsed;
      this.#savedAt = this.update;
      this.checkpoint = dir;
      this.progress.note(`resumed from ${dir}: update ${this.update}, epoch ${state.position.epoch}`);
    }
    this.log = await MetricsLog.open(
      join(this.s.outputDir, "metrics.jsonl"),
      resume ? this.update : null,
      {},
    );
  }

  result(): Omit<DflashTrainResult, "peakBytes" | "plannedPeakBytes"> {
    const { update: updates, checkpoint, lastTrain, lastEval, cfg: config } = this;
    return { updates, checkpoint, lastTrain, lastEval, config };
  }

  destroy(): void {
    for (const sh of this.#shapes.values()) {
      sh.feed.destroy();
      sh.train?.destroy();
      sh.eval?.destroy();
    }
    this.optimizer?.destroy();
    this.draft.destroy();
    this.log?.close();
  }

  /**
   * The programs of batches of `b`'s shape: its feed and its step of `split`, built on first use; the
   * {@link MAX_SHAPES} most recently used shapes keep theirs (lib/train/step_programs.ts, as the memory plan
   * replays it), the least recently used being freed (its metric sums kept on the host).
   */
  async #shape(b: Batch, split: "train" | "eval"): Promise<{ feed: DflashFeed; step: DflashStep }> {
    const key = `${b.batchSize}x${b.seqLen}`;
    let sh = this.#shapes.get(key);
    if (sh) this.#shapes.delete(key);
    else {
      if (this.#shapes.size >= MAX_SHAPES) await this.#evict();
      sh = { feed: await this.source.createFeed(b.batchSize, b.seqLen), train: null, eval: null };
    }
    this.#shapes.set(key, sh);
    sh[split] ??= await DflashStep.build(this.draft, {
      batches: b.batchSize,
      seq: b.seqLen,
      blocks: dflashBlocksPerSample(this.s.numAnchors, b.seqLen),
      lossType: this.s.lossType,
      dpaceAlpha: this.s.dpaceAlpha,
      embedding: this.source.embed,
      lmHead: this.source.lmHead,
      headRows: this.#headRows(b),
      features: sh.feed.features,
    }, split === "train");
    return { feed: sh.feed, step: sh[split]! };
  }

  /** Frees the least recently used shape's programs, its steps' sums added to the host's first. */
  async #evict(): Promise<void> {
    const [key, old] = this.#shapes.entries().next().value!;
    for (const split of ["train", "eval"] as const) {
      const step = old[split];
      if (step && step.runs > 0) (await step.sums.readFloat()).forEach((x, i) => this.#held[split][i] += x);
      step?.destroy();
    }
    old.feed.destroy();
    this.#shapes.delete(key);
  }

  /**
   * Rows of the head's window for batches of `b`'s shape: --head-chunk-rows or the plan's choice, else every
   * row when their logits bind as one storage buffer, else the most that do (lib/models/dflash_head.ts).
   */
  #headRows(b: Batch): number {
    const R = b.batchSize * dflashBlocksPerSample(this.s.numAnchors, b.seqLen) * this.cfg.blockSize;
    return dflashRunWindowRows(
      R,
      this.cfg,
      this.headChunkRows,
      this.gpu.limits.maxStorageBufferBindingSize,
    );
  }

  /** The host side of micro-batch `b`: anchors drawn from `rand`, block inputs, ranges; null when no anchor fits. */
  #prepare(b: Batch, rand: () => number): Prepared | null {
    const { batchSize: nb, seqLen: S } = b, cfg = this.cfg;
    const uniform = Float32Array.from({ length: nb * (S - 1) }, rand);
    const N = dflashBlocksPerSample(this.s.numAnchors, S);
    const blocks = sampleDflashAnchors(uniform, b.lossMask, nb, S, this.s.numAnchors, cfg.blockSize, N);
    if (blocks === null) return null;
    const inputs = dflashBlockInputs(cfg, blocks, b.inputIds, b.lossMask, S);
    const gamma = isDpace(this.s.lossType) ? null : this.s.lossDecayGamma;
    const omega = dflashDecayedWeights(inputs.weights, cfg.blockSize, gamma);
    const R0 = dflashBlockRow0(
      nb * S,
      cfg.numKvHeads * cfg.headDim,
      this.gpu.limits.minStorageBufferOffsetAlignment,
    );
    const den = isDpace(this.s.lossType) ? nb : omega.reduce((a, x) => a + x, 0);
    return {
      batch: b,
      lengths: batchLengths(b),
      inputs,
      omega,
      full: dflashRanges(blocks, S, null, R0).table,
      sliding: cfg.slidingWindow === null ? null : dflashRanges(blocks, S, cfg.slidingWindow, R0).table,
      den,
    };
  }

  /** Writes `m`'s inputs and submits the features' work and the step (no sync). */
  async #submit(m: Prepared, split: "train" | "eval", gradScale: number): Promise<DflashStep> {
    const { feed, step } = await this.#shape(m.batch, split);
    const inp = step.inputs;
    inp.noiseIds.write(m.inputs.noiseIds);
    inp.labels.write(m.inputs.labels);
    inp.weights.write(m.inputs.weights);
    inp.omega.write(m.omega);
    inp.gradScale.write(Float32Array.of(gradScale));
    inp.cos.write(m.inputs.cos);
    inp.sin.write(m.inputs.sin);
    inp.fullRanges.write(m.full);
    if (m.sliding) inp.slidingRanges.write(m.sliding);
    await feed.feed(m.batch, split);
    step.run();
    return step;
  }

  /** Micro-batches in windows of --draft-accumulation-steps, an update after each, to the limit. */
  async train(): Promise<void> {
    const s = this.s, window: Prepared[] = [];
    this.optimizer.zeroGrads();
    while (this.#position.epoch < s.numEpochs && this.update < this.limit) {
      for (const b of this.loader.batches(this.#position.epoch, this.#position.step)) {
        this.epoch = this.#position.epoch;
        this.#position = this.loader.next(this.#position);
        const rand = mulberry32((s.seed * 0x9e3779b1 + this.microBatches++) >>> 0);
        const m = this.#prepare(b, rand);
        if (m === null) {
          this.progress.note(
            `a batch of epoch ${this.epoch} has no two consecutive supervised tokens: skipped`,
          );
          continue;
        }
        window.push(m);
        if (window.length < s.draftAccumulationSteps) continue;
        await this.#runWindow(window.splice(0));
        if (this.update >= this.limit) break;
      }
      if (this.update >= this.limit) break;
    }
    await this.#finish();
  }

  async #runWindow(window: Prepared[]): Promise<void> {
    const den = window.reduce((a, m) => a + m.den, 0);
    for (const m of window) {
      await this.#submit(m, "train", den > 0 ? 1 / den : 0);
      this.#window.tokens += m.lengths.reduce((a, x) => a + x, 0);
    }
    this.#window.den += den;
    this.update++;
    const lr = lrAt(this.update, this.schedule);
    this.optimizer.update(lr);
    const s = this.s;
    if (this.update % s.logInterval === 0 || this.update === this.limit) await this.#logTrain(lr);
    if (s.evalInterval > 0 && this.update % s.evalInterval === 0) await this.#evaluate();
    if (s.saveInterval > 0 && this.update % s.saveInterval === 0) await this.#save();
  }

  /** Reads and zeroes the sums of every step of `split`: per slot [Σ w·ce, Σ w, Σ correct, Σ ω·ce]. */
  async #takeSums(split: "train" | "eval"): Promise<Float64Array> {
    const sums = Float64Array.from(this.#held[split]);
    this.#held[split].fill(0);
    for (const sh of this.#shapes.values()) {
      const step = split === "train" ? sh.train : sh.eval;
      if (!step || step.runs === 0) continue;
      (await step.sums.readFloat()).forEach((x, i) => sums[i] += x);
      step.resetSums();
    }
    return sums;
  }

  async #logTrain(lr: number): Promise<void> {
    const sums = await this.#takeSums("train");
    const seconds = (performance.now() - this.#window.started) / 1000;
    const record: MetricsRecord = {
      ...slotRecord("train", sums, this.#window.den, this.cfg.blockSize),
      step: this.update,
      epoch: this.epoch,
      elapsed: this.#elapsed(),
      lr,
      gradNorm: await this.optimizer.lastGradNorm(),
      tokensPerSec: this.#window.tokens / seconds,
    };
    if (!Number.isFinite(record.loss) || !Number.isFinite(record.gradNorm!)) {
      this.#diverged(`the loss is ${record.loss} and the gradient norm ${record.gradNorm}`, "at its log");
    }
    this.#window = { den: 0, tokens: 0, started: performance.now() };
    this.lastTrain = record;
    await this.log.append(record);
    const perUpdate = (performance.now() - this.#started) / 1000 / this.update;
    this.progress.show({
      step: this.update,
      totalSteps: this.limit,
      epoch: this.epoch,
      loss: record.loss,
      acc: record.acc.reduce((a, x) => a + x, 0) / record.acc.length,
      tokensPerSec: record.tokensPerSec!,
      lr,
      eta: perUpdate * (this.limit - this.update),
    });
  }

  /** The loss and per-slot accuracies over the evaluation set (anchors from a fixed stream: comparable). */
  async #evaluate(): Promise<void> {
    if (!this.data.eval) return;
    const loader = new DataLoader(this.data.eval, { batchSize: this.s.batchSize, shuffle: false, seed: 0 });
    const rand = mulberry32(this.s.seed ^ 0x5bd1e995);
    let den = 0, n = 0;
    for (const b of loader.batches(0)) {
      if (this.s.evalBatches !== null && n >= this.s.evalBatches) break;
      const m = this.#prepare(b, rand);
      if (m === null) continue;
      await this.#submit(m, "eval", 0);
      den += m.den;
      n++;
    }
    if (n === 0) return;
    const record: MetricsRecord = {
      ...slotRecord("eval", await this.#takeSums("eval"), den, this.cfg.blockSize),
      step: this.update,
      epoch: this.epoch,
      elapsed: this.#elapsed(),
    };
    this.lastEval = record;
    await this.log.append(record);
    this.progress.note(
      `eval at update ${this.update}: loss ${record.loss.toFixed(4)}, acc per block slot ` +
        record.acc.map((a) => a.toFixed(3)).join(" "),
    );
  }

  /** Seconds of training, those before a resume included. */
  #elapsed(): number {
    return this.#elapsedBefore + (performance.now() - this.#started) / 1000;
  }

  /** Throws {@link TrainingDivergedError} naming the last good checkpoint. */
  #diverged(what: string, when: string): never {
    throw new TrainingDivergedError(
      `${what} by update ${this.update} (${when}); stopping. ` +
        (this.checkpoint ? `The last good checkpoint is ${this.checkpoint}.` : "No checkpoint was written."),
    );
  }

  /** Before a save: the training sums since the last log and the last gradient norm are finite (one sync each). */
  async #checkFinite(): Promise<void> {
    const finite = (sums: ArrayLike<number>) => Array.prototype.every.call(sums, Number.isFinite);
    if (!finite(this.#held.train)) this.#diverged("the loss is NaN or infinite", "before saving");
    for (const sh of this.#shapes.values()) {
      if (sh.train && !finite(await sh.train.sums.readFloat())) {
        this.#diverged("the loss is NaN or infinite", "before saving");
      }
    }
    const norm = await this.optimizer.lastGradNorm();
    if (!Number.isFinite(norm)) this.#diverged(`the gradient norm is ${norm}`, "before saving");
  }

  async #save(): Promise<void> {
    await this.#checkFinite();
    const dir = join(this.s.outputDir, `epoch_${this.epoch}_step_${this.update}`);
    await saveDflashCheckpoint(dir, {
      config: this.cfg,
      weights: await this.draft.getWeights(),
      optimizer: await this.optimizer.stateTensors(),
      exportDtype: this.s.exportDtype,
      state: {
        version: CHECKPOINT_VERSION,
        globalStep: this.update,
        microSteps: this.microBatches,
        position: this.#position,
        totalSteps: this.schedule.totalSteps,
        warmupSteps: this.schedule.warmupSteps,
        rng: { seed: this.s.seed },
        settings: settingsToJson(this.s),
        fingerprint: this.data.fingerprint,
        elapsed: this.#elapsed(),
      },
    });
    this.progress.note(`saved ${dir}`);
    this.checkpoint = dir;
    this.#savedAt = this.update;
  }

  async #finish(): Promise<void> {
    this.progress.done();
    if (this.update > 0 && this.#savedAt !== this.update) await this.#save();
    if (this.lastEval?.step !== this.update) await this.#evaluate();
    const svg = renderTrainingPlot(this.log.records, `DFlash draft of ${this.s.targetModelPath}`);
    await writeFileAtomic(join(this.s.outputDir, "training_curves.svg"), svg);
  }
}

/**
 * A metrics record of per-slot sums: loss Σ ω·CE / Σ den (the objective); per slot k = 1..B−1 the mean CE
 * (ploss_k) and SpecForge's accuracy Σ [argmax = y]·[w > 0.5] / Σ w (acc_k).
 */
function slotRecord(split: "train" | "eval", sums: Float64Array, den: number, B: number) {
  let num = 0;
  const ploss: number[] = [], acc: number[] = [];
  for (let k = 0; k < B; k++) {
    const [wce, w, correct, oce] = sums.subarray(k * SLOT_SUM_COLS, (k + 1) * SLOT_SUM_COLS);
    num += oce;
    if (k === 0) continue;
    ploss.push(w > 0 ? wce / w : 0);
    acc.push(w > 0 ? correct / w : 0);
  }
  return { split, loss: den > 0 ? num / den : 0, ploss, acc };
}
