/**
 * The online batch source: the frozen target runs on every micro-batch (SpecForge `scripts/train_eagle3_online.py`;
 * the target's side is `specforge/modeling/target/eagle3_target_model.py`), and its outputs are bound
 * directly as the draft step's inputs: the aux hidden states, the logits of the draft vocabulary, the
 * full-vocabulary argmax, the ids and the lengths. Nothing is copied and nothing is read back.
 */
import type { Batch } from "../../data/loader.ts";
import type { RowSplitMatrix, TargetForward, TargetModel } from "../../models/target.ts";
import type { StreamedForward, StreamedTarget } from "../../models/target_stream.ts";
import type { BatchFeed, BatchSource, SourcedBatch } from "../batch_source.ts";
import type { TeacherSource } from "../../models/eagle3.ts";
import { headTeacher } from "../../models/teacher_source.ts";

/** Each row's count of real tokens (attention mask ones). */
export function batchLengths(batch: Batch): number[] {
  const lengths: number[] = [];
  for (let r = 0; r < batch.batchSize; r++) {
    let n = 0;
    for (let t = 0; t < batch.seqLen; t++) n += batch.attentionMask[r * batch.seqLen + t];
    lengths.push(n);
  }
  return lengths;
}

/**
 * The target forward of one batch shape as a {@link BatchFeed}: its subset logits are the teacher, or (with a
 * `teacherSource`) its final hidden states and the head's rows of the draft vocabulary make them window by
 * window.
 */
class TargetFeed implements BatchFeed {
  constructor(
    readonly forward: TargetForward | StreamedForward,
    readonly teacherSource: TeacherSource | null,
  ) {}

  get inputs() {
    const f = this.forward;
    return {
      aux: f.aux!,
      ids: f.ids,
      lengths: f.lengths,
      ...(this.teacherSource ? {} : { teacherLogits: f.subsetLogits! }),
      teacherArgmax: f.vocabArgmax!,
      teacherMaxSum: f.vocabMaxSum!,
    };
  }

  async feed({ batch }: SourcedBatch): Promise<number[]> {
    const lengths = batchLengths(batch);
    await this.forward.run(batch.inputIds as Int32Array<ArrayBuffer>, lengths);
    return lengths;
  }

  destroy(): void {
    this.forward.destroy();
  }
}

/**
 * Batches run through the target, resident or streamed through layer slots (which this source owns from
 * construction on).
 */
export class OnlineSource implements BatchSource {
  /**
   * `draftToTarget`: the draft vocabulary (ascending target ids) whose logits the teacher is; with
   * `windowedTeacher` (the draft head in windows of rows), the steps make the teacher logits per window from
   * the forward's final hidden states, and the forward does not hold them for the whole batch.
   */
  constructor(
    readonly target: TargetModel | StreamedTarget,
    readonly draftToTarget: Int32Array,
    readonly windowedTeacher = false,
  ) {}

  /** The target's embedding (the draft's frozen embedding by default). */
  get embed(): RowSplitMatrix {
    return this.target.embed;
  }

  async *read(batches: Iterable<Batch>): AsyncGenerator<SourcedBatch> {
    for (const batch of batches) yield { batch };
  }

  async createFeed(batch: number, seqLen: number): Promise<BatchFeed> {
    const windowed = this.windowedTeacher;
    const forward = await this.target.forward(batch, seqLen, {
      aux: true,
      ...(windowed ? { finalHidden: true } : { subsetIds: this.draftToTarget }),
      vocabStats: true,
    });
    const teacher = windowed
      ? headTeacher(forward.finalHidden!, await this.target.subsetHead(this.draftToTarget))
      : null;
    return new TargetFeed(forward, teacher);
  }

  destroy(): void {
    this.target.destroy();
  }
}
