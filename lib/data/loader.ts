/**
 * Batching (SpecForge `specforge/data/utils.py` `DataCollatorWithPadding`): samples are padded on the right
 * to the longest in the batch with token id 0 (not pad_token_id), attention_mask 0 and loss_mask 0. The
 * sample order follows torch's DistributedSampler + DataLoader(drop_last=True): per epoch a seeded shuffle of
 * all indices, padded by repeating from the start to a multiple of the data-parallel world size, rank r
 * taking every world-th index from r, then full batches only. The shuffle stream is Eaglet's own
 * (lib/data/random.ts), not torch's. A position (epoch, step) is all it takes to resume.
 */

import { DataError } from "./errors.ts";
import { permutation } from "./random.ts";
import type { TokenizedDataset } from "./tokenized.ts";

/** A padded batch, row-major [batchSize, seqLen]. */
export interface Batch {
  /** Rows B of the batch. */
  batchSize: number;
  /** Padded length T of every row (the longest sample, rounded up to padMultiple). */
  seqLen: number;
  /** Token ids [B, T], 0 in the padding. */
  inputIds: Int32Array;
  /** 1 for the real tokens of each row, 0 for the padding [B, T]. */
  attentionMask: Uint8Array;
  /** 1 where the token is supervised, 0 elsewhere and in the padding [B, T]. */
  lossMask: Uint8Array;
  /** Dataset index of each row. */
  sampleIndices: Int32Array;
}

/** The length {@link collate} pads the samples `indices` to: the longest, rounded up to `padMultiple`. */
export function paddedLength(dataset: TokenizedDataset, indices: ArrayLike<number>, padMultiple = 1): number {
  let t = 0;
  for (let r = 0; r < indices.length; r++) t = Math.max(t, dataset.sampleLength(indices[r]));
  return Math.ceil(t / padMultiple) * padMultiple;
}

/** Pads samples `indices` of `dataset` on the right with zeros to the longest (rounded up to `padMultiple`). */
export function collate(dataset: TokenizedDataset, indices: ArrayLike<number>, padMultiple = 1): Batch {
  const b = indices.length;
  const t = paddedLength(dataset, indices, padMultiple);
  const inputIds = new Int32Array(b * t);
  const attentionMask = new Uint8Array(b * t);
  const lossMask = new Uint8Array(b * t);
  for (let r = 0; r < b; r++) {
    const s = dataset.sample(indices[r]);
    inputIds.set(s.inputIds, r * t);
    lossMask.set(s.lossMask, r * t);
    attentionMask.fill(1, r * t, r * t + s.inputIds.length);
  }
  return {
    batchSize: b,
    seqLen: t,
    inputIds,
    attentionMask,
    lossMask,
    sampleIndices: Int32Array.from(indices),
  };
}

/** Options of `DataLoader`. */
export interface LoaderOptions {
  /** Samples per batch; only full batches are yielded (drop_last). */
  batchSize: number;
  /** Shuffle each epoch (train) or keep file order (eval). Default true. */
  shuffle?: boolean;
  /** Base seed of the per-epoch shuffles. Default 0. */
  seed?: number;
  /** Data-parallel rank of this loader (default 0). */
  rank?: number;
  /** Number of data-parallel ranks (default 1); `rank` is in 0..worldSize−1. */
  worldSize?: number;
  /** Round the padded length up to a multiple of this (sequence parallelism). Default 1. */
  padMultiple?: number;
}

/** Where a loader is: the next batch is batch `step` of epoch `epoch`. */
export interface LoaderPosition {
  /** 0-based epoch of the next batch. */
  epoch: number;
  /** 0-based index of the next batch within its epoch. */
  step: number;
}

/** Epoch-wise batches of a tokenized dataset for one data-parallel rank. */
export class DataLoader {
  /** The samples it batches. */
  readonly dataset: TokenizedDataset;
  /** The options with every default filled in. */
  readonly options: Required<LoaderOptions>;

  /** Checks the options against the dataset. */
  constructor(dataset: TokenizedDataset, options: LoaderOptions) {
    const o: Required<LoaderOptions> = {
      shuffle: true,
      seed: 0,
      rank: 0,
      worldSize: 1,
      padMultiple: 1,
      ...options,
    };
    if (!(Number.isInteger(o.batchSize) && o.batchSize > 0)) {
      throw new DataError(`batch size must be positive, got ${o.batchSize}`);
    }
    if (!(Number.isInteger(o.worldSize) && o.worldSize > 0 && o.rank >= 0 && o.rank < o.worldSize)) {
      throw new DataError(`rank ${o.rank} is not within world size ${o.worldSize}`);
    }
    if (dataset.length === 0) throw new DataError("the dataset is empty");
    this.dataset = dataset;
    this.options = o;
  }

  /** Indices this rank sees in `epoch`, before batching. */
  epochIndices(epoch: number): Int32Array {
    const n = this.dataset.length;
    const { worldSize, rank } = this.options;
    const all = this.options.shuffle
      ? permutation(n, (this.options.seed * 1000003 + epoch) >>> 0)
      : Int32Array.from({ length: n }, (_, i) => i);
    const perRank = Math.ceil(n / worldSize);
    const out = new Int32Array(perRank);
    for (let k = 0; k < perRank; k++) out[k] = all[(rank + k * worldSize) % n];
    return out;
  }

  /** Full batches per epoch (drop_last). */
  get stepsPerEpoch(): number {
    return Math.floor(Math.ceil(this.dataset.length / this.options.worldSize) / this.options.batchSize);
  }

  /** Batches of `epoch` from batch `startStep` on (to resume mid-epoch). */
  *batches(epoch: number, startStep = 0): Generator<Batch> {
    const idx = this.epochIndices(epoch);
    const bs = this.options.batchSize;
    for (let s = startStep; s < this.stepsPerEpoch; s++) {
      yield collate(this.dataset, idx.subarray(s * bs, (s + 1) * bs), this.options.padMultiple);
    }
  }

  /** The padded length of each batch of `epoch` (what {@link batches} yields, without collating). */
  batchLengths(epoch: number): number[] {
    const idx = this.epochIndices(epoch), bs = this.options.batchSize;
    return Array.from(
      { length: this.stepsPerEpoch },
      (_, s) => paddedLength(this.dataset, idx.subarray(s * bs, (s + 1) * bs), this.options.padMultiple),
    );
  }

  /** The position after `position` (next step, or the next epoch's first). */
  next(position: LoaderPosition): LoaderPosition {
    return position.step + 1 < this.stepsPerEpoch
      ? { epoch: position.epoch, step: position.step + 1 }
      : { epoch: position.epoch + 1, step: 0 };
  }
}
