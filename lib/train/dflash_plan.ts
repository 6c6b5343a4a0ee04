/**
 * The memory plan of a DFlash training run (lib/train/dflash_trainer.ts), made before anything is allocated
 * and replayed through the buffer pool's size classes (lib/models/memory_plan.ts `Replay`): the target (online
 * every layer; offline its embedding, lm_head and final norm), the draft's weights and gradients (interleaved,
 * as lib/models/dflash.ts allocates them), the optimizer's state, then per batch shape the feed (the target's
 * forward capturing the draft's layers, or the feature decoder) and the steps (lib/models/dflash_memory.ts),
 * the {@link MAX_SHAPES} most recently used kept, over the micro-batches and evaluations in the trainer's order.
 */
import { DataLoader } from "../data/loader.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import type { DflashConfig } from "../models/dflash_config.ts";
import { dflashParamShapes } from "../models/dflash.ts";
import { dflashBlocksPerSample } from "../models/dflash_blocks.ts";
import { dflashStepTensors } from "../models/dflash_memory.ts";
import { dflashRunWindowRows, dflashWindowGranule } from "../models/dflash_head.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import {
  type MemoryPlan,
  planFits,
  type PlanLimits,
  Replay,
  ShapeCache,
  type Split,
  type TargetPlanInput,
  targetSplits,
  targetWeightCategories,
} from "../models/memory_plan.ts";
import { planned, type PlannedTensor, targetForwardTensors } from "../models/target_memory.ts";
import { featureFeederTensors } from "../offline/feeder.ts";
import type { FeaturesManifest } from "../offline/format.ts";
import { draftOptimizerTensors, trainingSchedule } from "./training_plan.ts";

/** What the plan of a DFlash run is made from. */
export interface DflashPlanInput extends TargetPlanInput {
  draft: DflashConfig;
  /** The offline features' manifest; null online. */
  features: FeaturesManifest | null;
  loader: DataLoader;
  evalSet: TokenizedDataset | null;
  /** Updates the run makes (its limit) and the settings of its loop. */
  updates: number;
  numEpochs: number;
  accumulationSteps: number;
  evalInterval: number;
  evalBatches: number | null;
  /** --num-anchors. */
  numAnchors: number;
  /** --head-chunk-rows (null: chosen from the binding size). */
  headChunkRows: number | null;
  muon: boolean;
  /** --mlp-saved-dtype. */
  mlpSaved: MlpSavedDtype;
}

/** The plan of a DFlash run (see the module comment). */
export function planDflashTraining(i: DflashPlanInput): MemoryPlan {
  const replay = new Replay(i.device.maxBufferSize);
  const online = i.features === null;
  for (
    const [key, tensors] of targetWeightCategories(
      i,
      online ? { layers: true } : { layers: false, lmHead: true },
    )
  ) {
    replay.allocate(key, null, tensors);
  }
  if (!online) replay.allocate("targetEnds", null, [planned("final norm", [i.target.hiddenSize], "f32")]);
  const params = [...dflashParamShapes(i.draft)].map(([name, shape]) => ({ name, shape }));
  for (const p of params) {
    replay.allocate("draftWeights", null, [planned(p.name, p.shape, "f32")]);
    replay.allocate("gradients", null, [planned(`${p.name} grad`, p.shape, "f32")]);
  }
  replay.allocate("optimizer", null, draftOptimizerTensors(params, i.muon, i.device));
  const shapes = new ShapeCache(replay, feedOf(i), stepOf(i));
  for (const [split, batch, seqLen] of dflashRunBatches(i)) shapes.use(split, batch, seqLen);
  const plan = replay.plan();
  return { ...plan, shapes: shapes.distinct.size, headRows: largestWindow(i, plan.largestShape) };
}

/** The head's window on the largest batch shape's R rows; null when it holds them all. */
function largestWindow(i: DflashPlanInput, shape: { batch: number; seqLen: number }): number | null {
  const R = shape.batch * dflashBlocksPerSample(i.numAnchors, shape.seqLen) * i.draft.blockSize;
  const W = dflashRunWindowRows(R, i.draft, i.headChunkRows, i.device.maxStorageBufferBindingSize);
  return W < R ? W : null;
}

/**
 * The plan of a run and the head's window request it was made with, as EAGLE's lib/train/training_plan.ts
 * `planRun` chooses it: --head-chunk-rows (`requested`); else the windows the logits' binding allows when that
 * plan fits the device; else the largest window of whole granules (./dflash_head.ts `dflashWindowGranule`)
 * that fits, halving from below the largest shape's rows down to one granule. When none fits, the first plan
 * (lib/models/memory_plan.ts `checkPlanFits` then refuses it, naming its largest part).
 */
export function planDflashWindows(
  i: Omit<DflashPlanInput, "headChunkRows">,
  requested: number | null,
  limits: PlanLimits,
): { plan: MemoryPlan; headChunkRows: number | null } {
  const at = (headChunkRows: number | null) => ({
    plan: planDflashTraining({ ...i, headChunkRows }),
    headChunkRows,
  });
  const first = at(requested);
  if (requested !== null || planFits(first.plan, limits)) return first;
  const g = dflashWindowGranule(i.draft.blockSize), { batch, seqLen } = first.plan.largestShape;
  const rows = first.plan.headRows ?? batch * dflashBlocksPerSample(i.numAnchors, seqLen) * i.draft.blockSize;
  for (let w = Math.floor((rows - 1) / g) * g; w >= g; w = Math.floor(w / 2 / g) * g) {
    const windowed = at(w);
    if (planFits(windowed.plan, limits)) return windowed;
  }
  return first;
}

/** A batch shape's feed: the target forward capturing the draft's layers, or the features' decoder. */
function feedOf(i: DflashPlanInput) {
  const splits = { ...targetSplits(i), layerPrograms: 1 };
  const auxCount = i.draft.targetLayerIds.length;
  return (batch: number, seqLen: number): PlannedTensor[] =>
    i.features
      ? featureFeederTensors(i.features, batch, seqLen, 0, [], false, true)
      : targetForwardTensors(i.target, batch, seqLen, { aux: true, auxCount }, splits);
}

/** A batch shape's step of a split. */
function stepOf(i: DflashPlanInput) {
  const splits = targetSplits(i);
  return (split: Split, batch: number, seqLen: number): PlannedTensor[] => {
    const blocks = dflashBlocksPerSample(i.numAnchors, seqLen);
    const rows = batch * blocks * i.draft.blockSize;
    return dflashStepTensors(i.draft, {
      batches: batch,
      seq: seqLen,
      blocks,
      train: split === "train",
      headRows: dflashRunWindowRows(rows, i.draft, i.headChunkRows, i.device.maxStorageBufferBindingSize),
      embedBlockRows: splits.embedBlockRows,
      lmHeadBlockRows: splits.lmHeadBlockRows,
      alignment: i.device.minStorageBufferOffsetAlignment,
      binding: i.device.maxStorageBufferBindingSize,
      mlpSaved: i.mlpSaved,
    });
  };
}

/**
 * The micro-batches of the run in the trainer's order (lib/train/dflash_trainer.ts `train`, `#runWindow`,
 * `#evaluate`, `#finish`): each epoch's batches, an evaluation every --eval-interval updates and one at the
 * end unless the last update had one. Batches the trainer skips (no anchor fits) are planned as if they ran.
 */
export function* dflashRunBatches(i: DflashPlanInput): Generator<[Split, number, number]> {
  const batch = i.loader.options.batchSize;
  const evalPass = function* (): Generator<[Split, number, number]> {
    if (!i.evalSet) return;
    const lengths = new DataLoader(i.evalSet, { batchSize: batch, shuffle: false, seed: 0 }).batchLengths(0);
    for (const T of lengths.slice(0, i.evalBatches ?? lengths.length)) yield ["eval", batch, T];
  };
  yield* trainingSchedule(i, evalPass, i.numEpochs);
}
