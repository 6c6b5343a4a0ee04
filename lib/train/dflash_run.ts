/**
 * One DFlash run's state and loop (./dflash_trainer.ts resolves, plans and opens it): the draft, its optimizer
 * and metrics, the programs of each batch shape, the host's block inputs of each micro-batch (random anchors,
 * labels, weights: lib/models/dflash_blocks.ts), the optimizer windows with the loss's global normalisation,
 * evaluation, checkpoints and resume (SpecForge `OnlineDFlashModel` in
 * specforge/algorithms/common/dflash_family_model.py, specforge/training/controller.py).
 */
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { mulberry32 } from "../data/random.ts";
import { type Batch, DataLoader } from "../data/loader.ts";
import { ConfigError } from "../models/config.ts";
import type { DflashConfig } from "../models/dflash_config.ts";
import type { DflashFeed, DflashSource } from "./dflash_features.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import type { RunFingerprint } from "./fingerprint.ts";
import { CHECKPOINT_VERSION } from "./checkpoint.ts";
import { type DflashResume, saveDflashCheckpoint } from "./dflash_checkpoint.ts";
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
import { MetricsLog, type MetricsRecord, type ProgressPrinter } from "./metrics.ts";
import { renderTrainingPlot } from "./plot.ts";
import { batchLengths } from "./sources/online.ts";
import { muonOf } from "./trainer.ts";
import { TrainingDivergedError } from "./divergence.ts";
import { MAX_SHAPES } from "../models/memory_plan.ts";

/** What a DFlash run's loop did (./dflash_trainer.ts adds the memory figures). */
export interface DflashRunResult {
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
}

/** The run's loader (its batches' order) and its update limit, as {@link DflashRun} makes them. */
export function loopOf(
  s: TrainSettings,
  train: TokenizedDataset,
): { loader: DataLoader; total: number; limit: number } {
  const loader = new DataLoader(train, { batchSize: s.batchSize, shuffle: true, seed: s.seed });
  const total = s.totalSteps ?? s.numEpochs * Math.ceil(loader.stepsPerEpoch / s.draftAccumulationSteps);
  return { loader, total, limit: Math.min(total, s.maxNumSteps ?? Infinity) };
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
export class DflashRun {
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

  result(): DflashRunResult {
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
      mlpSaved: this.s.mlpSavedDtype,
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
