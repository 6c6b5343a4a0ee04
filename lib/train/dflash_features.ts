/**
 * Where a DFlash run's target features come from: the frozen target run on every micro-batch (online,
 * SpecForge's `OnlineDFlashModel`: the hidden states of `target_layer_ids` from the target's forward) or the
 * files prepare-hidden-states wrote for the same layers (offline: lib/offline/format.ts, decoded on the GPU by
 * lib/offline/feeder.ts `FeatureFeeder.createAuxOnly`). Either way the draft's step reads one [nb·S, K·H]
 * f32 tensor, and the source also holds the target parts the step needs: the embedding (block inputs), the
 * lm_head (the loss's logits) and the final norm (the draft's norm starts from it). Offline, only those parts
 * of the target are loaded (lib/models/target.ts `TargetEnds`).
 */
import type { Batch } from "../data/loader.ts";
import type { Tensor } from "../tensor.ts";
import type { RowSplitMatrix } from "../ops/row_split.ts";
import { type TargetEnds, type TargetForward, TargetModel } from "../models/target.ts";
import type { Gpu } from "../gpu/device.ts";
import type { FeatureSet } from "../offline/dataset.ts";
import { readFeatures } from "../offline/dataset.ts";
import { FeatureFeeder } from "../offline/feeder.ts";
import type { Split } from "./batch_source.ts";
import { batchLengths } from "./sources/online.ts";

/** The features of batches of one shape (nb × S). */
export interface DflashFeed {
  /** The target features [nb·S, K·H] the step reads. */
  readonly features: Tensor;
  /** Writes batch `b`'s inputs and submits the work that fills {@link DflashFeed.features} (no sync). */
  feed(b: Batch, split: Split): Promise<void>;
  /** Frees the feed's programs and tensors. */
  destroy(): void;
}

/** A DFlash run's source of target features and the frozen target parts its step reads. */
export interface DflashSource {
  /** The target's embedding (the block inputs). */
  readonly embed: RowSplitMatrix;
  /** The target's lm_head, as row blocks when it does not bind whole (the loss's logits). */
  readonly lmHead: RowSplitMatrix;
  /** The target's final norm weight. */
  readonly finalNorm: Tensor;
  /** The feed of batches of nb × S. */
  createFeed(nb: number, S: number): Promise<DflashFeed>;
  /** Frees the target parts. */
  destroy(): void;
}

/** Online: the target's forward captures the draft's layers on every micro-batch. */
export class OnlineDflashSource implements DflashSource {
  constructor(readonly target: TargetModel) {}

  /** Loads the target of `dir`, capturing `layers` (the draft's target_layer_ids). */
  static async load(gpu: Gpu, dir: string, layers: number[]): Promise<OnlineDflashSource> {
    return new OnlineDflashSource(await TargetModel.load(gpu, dir, { auxLayers: layers, anyAuxCount: true }));
  }

  get lmHead(): RowSplitMatrix {
    return this.target.lmHead;
  }

  get embed(): RowSplitMatrix {
    return this.target.embed;
  }

  get finalNorm(): Tensor {
    return this.target.finalNorm;
  }

  async createFeed(nb: number, S: number): Promise<DflashFeed> {
    const forward: TargetForward = await this.target.forward(nb, S, { aux: true });
    return {
      features: forward.aux!,
      feed: (b: Batch) => {
        forward.run(b.inputIds as Int32Array<ArrayBuffer>, batchLengths(b));
        return Promise.resolve();
      },
      destroy: () => forward.destroy(),
    };
  }

  destroy(): void {
    this.target.destroy();
  }
}

/** Offline: each batch's samples are read from the feature files and decoded on the GPU. */
export class OfflineDflashSource implements DflashSource {
  /** `ends`: the target's embedding, lm_head and final norm (owned by the source from here on). */
  constructor(
    readonly gpu: Gpu,
    readonly sets: { train: FeatureSet; eval: FeatureSet | null },
    readonly ends: TargetEnds,
  ) {}

  get lmHead(): RowSplitMatrix {
    return this.ends.lmHead;
  }

  get embed(): RowSplitMatrix {
    return this.ends.embed;
  }

  get finalNorm(): Tensor {
    return this.ends.finalNormOrNull!;
  }

  async createFeed(nb: number, S: number): Promise<DflashFeed> {
    const feeder = await FeatureFeeder.createAuxOnly(this.gpu, this.sets.train.manifest, nb, S);
    return {
      features: feeder.aux,
      feed: async (b: Batch, split: Split) => {
        const set = this.sets[split];
        if (!set) throw new Error(`offline DFlash source: no ${split} features`);
        feeder.feed(await readFeatures(set, b.sampleIndices));
      },
      destroy: () => feeder.destroy(),
    };
  }

  destroy(): void {
    this.ends.destroy();
  }
}
