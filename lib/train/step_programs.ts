/**
 * The programs of each batch shape a run meets. Batches are padded to their longest sample (SpecForge
 * `specforge/data/utils.py` `DataCollatorWithPadding`; the loss denominator B·T depends on it), so each
 * distinct (B, T) gets its own feed (the {@link BatchSource}'s target forward or feature decoder) and draft
 * steps (training and evaluation, lib/models/eagle3.ts) bound to the feed's output tensors, built on first use
 * and kept for the {@link MAX_SHAPES} most recently used shapes. Metrics stay in each step's GPU accumulators
 * until {@link StepPrograms.collect} reads them (one sync per step) into host sums.
 */
import type { World } from "../dist/world.ts";
import { MAX_SHAPES } from "../models/memory_plan.ts";
import type { Tensor } from "../tensor.ts";
import type { VocabMapping } from "../data/vocab.ts";
import type { LkLossOptions } from "../ops/lk_loss.ts";
import type { RowSplitMatrix } from "../ops/row_split.ts";
import { buildEagle3Step, type Eagle3Draft, type Eagle3Step } from "../models/eagle3.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import { type Eagle3Metrics, eagle3MetricsFrom, METRIC_COLS } from "../models/eagle3_metrics.ts";
import {
  type BatchFeed,
  type BatchSource,
  type SourcedBatch,
  type Split,
  supervisedMask,
} from "./batch_source.ts";

/** At most this many batch shapes keep their programs (the least recently used is freed). */

/** Metric sums read from the GPU accumulators, kept on the host until a record is taken. */
export class MetricSums {
  readonly #sums: Float64Array;
  #microBatches = 0;

  /** Sums of `tttLength` TTT positions, whose losses are weighted `stepDecay`^k. */
  constructor(readonly tttLength: number, readonly stepDecay: number) {
    this.#sums = new Float64Array(tttLength * METRIC_COLS);
  }

  /** Adds `step`'s accumulated sums (one sync) and zeroes its accumulators; nothing when it has not run. */
  async collect(step: Eagle3Step): Promise<void> {
    if (step.runs === 0) return;
    const raw = await step.metrics.readFloat();
    for (let i = 0; i < raw.length; i++) this.#sums[i] += raw[i];
    this.#microBatches += step.runs;
    step.resetMetrics();
  }

  /** The metrics of everything collected since the last take, and a fresh window. */
  take(): Eagle3Metrics {
    const m = eagle3MetricsFrom(this.#sums, this.tttLength, this.#microBatches, this.stepDecay);
    this.#sums.fill(0);
    this.#microBatches = 0;
    return m;
  }

  /**
   * Sums the host sums and micro-batch counts over the ranks of `world`, in place (numerators and
   * denominators alike, so the ratios {@link take} forms are those of the union of the ranks' batches).
   */
  reduce(world: World): void {
    if (world.size === 1) return;
    const n = this.#sums.length;
    const all = new Float64Array(n + 1);
    all.set(this.#sums);
    all[n] = this.#microBatches;
    world.sum(all);
    this.#sums.set(all.subarray(0, n));
    this.#microBatches = all[n];
  }

  /** Whether every sum (losses included) is finite. */
  finite(): boolean {
    return this.#sums.every(Number.isFinite);
  }
}

/** What the draft steps are built with, besides the shape. */
export interface StepSettings {
  /** The draft the steps train. */
  draft: Eagle3Draft;
  /** K: TTT positions. */
  tttLength: number;
  /** The draft's frozen embedding. */
  embedding: Tensor | RowSplitMatrix;
  /** The draft ↔ target vocabulary mapping. */
  vocab: VocabMapping;
  /** Micro-batches per optimizer update (the training step's loss is divided by it). */
  accumulationSteps: number;
  /** γ: TTT position k's loss is weighted γ^k (SpecForge's 0.8). */
  stepDecay: number;
  /** Rows of the draft head's windows (null: a batch's rows at once; lib/models/eagle3_head_loss.ts). */
  headRows: number | null;
  /** The LK loss the training steps use (null: the KL loss). */
  lk: LkLossOptions | null;
  /** The dtype the training steps keep the MLP's gate and up in (--mlp-saved-dtype). */
  mlpSaved: MlpSavedDtype;
}

interface Shape<S extends SourcedBatch> {
  feed: BatchFeed<S>;
  steps: Record<Split, Eagle3Step | null>;
}

/** The per-shape feeds and draft steps of a run (see the module comment), and their metric sums. */
export class StepPrograms<S extends SourcedBatch = SourcedBatch> {
  readonly #shapes = new Map<string, Shape<S>>();
  /** Host sums of the training and evaluation metrics collected so far (see {@link collect}). */
  readonly sums: Record<Split, MetricSums>;

  /** Steps of `settings` fed by `source`'s feeds. */
  constructor(readonly source: BatchSource<S>, readonly settings: StepSettings) {
    const { tttLength, stepDecay } = settings;
    this.sums = { train: new MetricSums(tttLength, stepDecay), eval: new MetricSums(tttLength, stepDecay) };
  }

  /**
   * Runs one micro-batch of `split` (training: forward, backward into the draft's gradients; evaluation:
   * forward and metrics), no sync. Returns its tokens (the samples' valid lengths summed).
   */
  async run(b: S, split: Split): Promise<number> {
    const shape = await this.#shape(b.batch.batchSize, b.batch.seqLen);
    const step = shape.steps[split] ??= await this.#buildStep(
      shape.feed,
      b.batch.batchSize,
      b.batch.seqLen,
      split,
    );
    const lengths = await shape.feed.feed(b);
    step.lossMask.write(supervisedMask(b.batch.lossMask, lengths, b.batch.seqLen));
    step.run();
    return lengths.reduce((a, c) => a + c, 0);
  }

  /** Moves the metrics of every `split` step into {@link sums}[split] (one sync per step that ran). */
  async collect(split: Split): Promise<void> {
    for (const shape of this.#shapes.values()) {
      const step = shape.steps[split];
      if (step) await this.sums[split].collect(step);
    }
  }

  /** Frees every feed and step. */
  destroy(): void {
    for (const shape of this.#shapes.values()) this.#free(shape);
    this.#shapes.clear();
  }

  async #shape(batch: number, seqLen: number): Promise<Shape<S>> {
    const key = `${batch}x${seqLen}`;
    const hit = this.#shapes.get(key);
    if (hit) {
      this.#shapes.delete(key);
      this.#shapes.set(key, hit); // most recently used last
      return hit;
    }
    if (this.#shapes.size >= MAX_SHAPES) {
      const [oldKey, old] = this.#shapes.entries().next().value!;
      for (const split of ["train", "eval"] as const) {
        const step = old.steps[split];
        if (step) await this.sums[split].collect(step);
      }
      this.#free(old);
      this.#shapes.delete(oldKey);
    }
    const shape: Shape<S> = {
      feed: await this.source.createFeed(batch, seqLen),
      steps: { train: null, eval: null },
    };
    this.#shapes.set(key, shape);
    return shape;
  }

  #buildStep(feed: BatchFeed<S>, batch: number, seqLen: number, split: Split): Promise<Eagle3Step> {
    const s = this.settings;
    return buildEagle3Step(s.draft, {
      batch,
      seqLen,
      tttLength: s.tttLength,
      embedding: s.embedding,
      vocab: s.vocab,
      train: split === "train",
      accumulationSteps: s.accumulationSteps,
      stepDecay: s.stepDecay,
      headRows: s.headRows,
      lk: s.lk,
      mlpSaved: s.mlpSaved,
      inputs: feed.inputs,
      teacherSource: feed.teacherSource ?? null,
    });
  }

  #free(shape: Shape<S>): void {
    shape.steps.train?.destroy();
    shape.steps.eval?.destroy();
    shape.feed.destroy();
  }
}
