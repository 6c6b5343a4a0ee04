/**
 * Where the draft step's inputs come from. The trainer's loop knows batches (lib/data/loader.ts: the order
 * and the resumable position stay in the DataLoader) and prebuilt steps (lib/models/eagle3.ts); a
 * {@link BatchSource} turns a {@link Batch} into the step's GPU inputs. Online (./sources/online.ts) the frozen
 * target runs on the batch; offline (./sources/offline.ts) the batch's feature files are read and decoded.
 * A later draft type (other inputs) or a data-parallel rank (its share of the global order, chosen by its
 * DataLoader) plugs in as another source.
 *
 * A source works in two phases, so that slow host work overlaps with the GPU: {@link BatchSource.read} does
 * the host side of each batch (file reads), the next batch's started before the current one is handed out;
 * {@link BatchFeed.feed}, on the per-shape program the source built with {@link BatchSource.createFeed},
 * writes and submits the GPU side without a sync.
 */
import type { Batch } from "../data/loader.ts";
import type { Eagle3StepInputs, TeacherSource } from "../models/eagle3.ts";

/** Which set a batch comes from: training batches and evaluation batches may be read from different files. */
export type Split = "train" | "eval";

/** A batch with whatever its source read for it on the host (nothing more online). */
export interface SourcedBatch {
  /** The padded batch (tokens, masks, dataset indices). */
  readonly batch: Batch;
}

/** The program of one batch shape (B, T) that fills the step inputs it exposes. */
export interface BatchFeed<S extends SourcedBatch = SourcedBatch> {
  /** The step inputs this feed writes (bound into the steps with buildEagle3Step's `inputs`). */
  readonly inputs: Partial<Eagle3StepInputs>;
  /**
   * The teacher logits' producer instead of a `teacherLogits` input (buildEagle3Step's `teacherSource`: the
   * draft head's windows make their teacher rows, the [B·T, Vd] tensor never exists); null or absent: none.
   */
  readonly teacherSource?: TeacherSource | null;
  /**
   * Writes `b`'s inputs and submits the program (no sync; a streamed target awaits its layer reads); returns
   * each sample's valid length.
   */
  feed(b: S): number[] | Promise<number[]>;
  /** Frees the program and its tensors. */
  destroy(): void;
}

/** Produces the draft step's inputs for batches; see the module comment. */
export interface BatchSource<S extends SourcedBatch = SourcedBatch> {
  /** `batches` of `split` with their host data, the next batch's read started before the current is yielded. */
  read(batches: Iterable<Batch>, split: Split): AsyncIterable<S>;
  /** Builds the feed of batches of shape `batch` × `seqLen` (the caller owns and destroys it). */
  createFeed(batch: number, seqLen: number): Promise<BatchFeed<S>>;
  /** Frees what the source holds (the target, or its ends); not the feeds it created. */
  destroy(): void;
}

/**
 * The batches with what `load` returns for each, the next batch's load started before the current one is
 * handed out (so reading files overlaps with the GPU work of the current batch).
 */
export async function* withLookahead<T>(
  batches: Iterable<Batch>,
  load: (b: Batch) => Promise<T>,
): AsyncGenerator<T> {
  const it = batches[Symbol.iterator]();
  let cur = it.next();
  let pending = cur.done ? null : load(cur.value);
  while (!cur.done) {
    const next = it.next();
    const nextPending = next.done ? null : load(next.value);
    nextPending?.catch(() => {}); // awaited on the next round; a consumer that stops early drops it
    yield await pending!;
    cur = next;
    pending = nextPending;
  }
}

/**
 * The loss mask the step gets: the data's, with each sample's last token unsupervised. That token has no next
 * token inside the sample, so its teacher would be the target's prediction at a padding position (or the
 * zero-filled row past the batch). SpecForge's offline loader does the same (`loss_mask[-1] = 0` in
 * `specforge/data/preprocessing.py` `OfflineEagle3Dataset.process_data`); its online path trains that row
 * against the padding; Eaglet follows the offline rule in both modes, which also makes online and offline
 * training identical.
 */
export function supervisedMask(
  lossMask: ArrayLike<number>,
  lengths: number[],
  seqLen: number,
): Float32Array<ArrayBuffer> {
  const out = Float32Array.from(lossMask);
  lengths.forEach((len, b) => {
    if (len > 0) out[b * seqLen + len - 1] = 0;
  });
  return out;
}
