/**
 * The offline batch source (SpecForge `scripts/train_eagle3_offline.py`): each batch's samples are read from
 * the files prepare-hidden-states wrote (lib/offline/dataset.ts, as `specforge/data/preprocessing.py`
 * `OfflineEagle3Dataset.process_data` reads them), the next batch's files while the GPU runs the current one,
 * and a {@link FeatureFeeder} per batch shape decodes them on the GPU into exactly the inputs the online
 * target forward produces. Only the target's embedding (and its lm_head, for hidden-state teachers) is loaded.
 */
import type { Batch } from "../../data/loader.ts";
import type { RowSplitMatrix, TargetEnds } from "../../models/target.ts";
import { type FeatureSet, readFeatures } from "../../offline/dataset.ts";
import { FeatureFeeder } from "../../offline/feeder.ts";
import type { FeatureSample } from "../../offline/format.ts";
import type { Gpu } from "../../gpu/device.ts";
import {
  type BatchFeed,
  type BatchSource,
  type SourcedBatch,
  type Split,
  withLookahead,
} from "../batch_source.ts";

/** A batch with its samples' stored features. */
export interface FeatureBatch extends SourcedBatch {
  /** The features of each row's sample, in row order. */
  readonly features: FeatureSample[];
}

/** The feature decoder of one batch shape as a {@link BatchFeed}. */
class DecoderFeed implements BatchFeed<FeatureBatch> {
  constructor(readonly feeder: FeatureFeeder) {}

  get inputs() {
    return this.feeder.inputs;
  }

  get teacherSource() {
    return this.feeder.teacherSource;
  }

  feed(b: FeatureBatch): number[] {
    return this.feeder.feed(b.features);
  }

  destroy(): void {
    this.feeder.destroy();
  }
}

/** Batches read from feature directories (training, and optionally evaluation, stored alike). */
export class OfflineSource implements BatchSource<FeatureBatch> {
  /**
   * `sets`: the feature sets the batches index (evaluation's null when there is none); `ends`: the target's
   * embedding and, for hidden-state teachers, its lm_head (owned by the source from here on);
   * `draftToTarget`: the draft vocabulary (ascending target ids); `windowedTeacher`: the teacher logits are
   * made by the steps window by window (lib/offline/feeder.ts `FeatureFeeder.teacherSource`).
   */
  constructor(
    readonly gpu: Gpu,
    readonly sets: { train: FeatureSet; eval: FeatureSet | null },
    readonly ends: TargetEnds,
    readonly draftToTarget: Int32Array,
    readonly windowedTeacher = false,
  ) {}

  /** The target's embedding (the draft's frozen embedding by default). */
  get embed(): RowSplitMatrix {
    return this.ends.embed;
  }

  read(batches: Iterable<Batch>, split: Split): AsyncIterable<FeatureBatch> {
    const set = this.sets[split];
    if (!set) throw new Error(`offline source: no ${split} features`);
    return withLookahead(
      batches,
      async (batch) => ({ batch, features: await readFeatures(set, batch.sampleIndices) }),
    );
  }

  async createFeed(batch: number, seqLen: number): Promise<BatchFeed<FeatureBatch>> {
    const head = this.ends.lmHeadOrNull ? this.ends : null;
    const manifest = this.sets.train.manifest;
    return new DecoderFeed(
      await FeatureFeeder.create(
        this.gpu,
        manifest,
        batch,
        seqLen,
        this.draftToTarget,
        head,
        this.windowedTeacher,
      ),
    );
  }

  destroy(): void {
    this.ends.destroy();
  }
}
