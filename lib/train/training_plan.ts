/**
 * The memory plan of a training run (lib/models/memory_plan.ts), made before anything is allocated: the target
 * (or, offline, its ends), the teacher head, the draft's weights, gradients and AdamW moments, then each batch
 * shape's feed (the target forward online, the feature decoder offline, lib/offline/feeder.ts) and draft steps
 * (lib/models/eagle3_activations.ts), over the batches of every epoch and evaluation in the order
 * lib/train/trainer.ts meets them. {@link planRun} makes it from a resolved run and the checkpoint's headers.
 */
import type { Gpu } from "../gpu/device.ts";
import { parseByteSize } from "../gpu/device_memory.ts";
import { REDUCE_CHUNK } from "../../kernels/reduce.ts";
import { type DataLoader, paddedLength } from "../data/loader.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import type { DraftConfig } from "../models/draft_config.ts";
import { eagle3ParamNames, eagle3ParamShapes, teacherWindowRows } from "../models/eagle3.ts";
import type { Eagle3StepShape } from "../models/eagle3_activations.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import { eagle3StepTensors } from "../models/eagle3_activations.ts";
import {
  blockRowsOf,
  linearBlockRows,
  type MemoryPlan,
  type PlanCategoryKey,
  planFits,
  type PlanLimits,
  planLimitsOf,
  Replay,
  ShapeCache,
  type Split,
  type TargetPlanInput,
  targetSplits,
  targetStreamSlots,
  targetWeightCategories,
  withTargetPlanInput,
} from "../models/memory_plan.ts";
import {
  planned,
  type PlannedTensor,
  streamProgramCount,
  targetForwardTensors,
  type TargetSplits,
  uploadDtype,
} from "../models/target_memory.ts";
import { ADAMW_STATE_SIZE } from "../ops/adamw.ts";
import { type BindingLimits, isMuonMatrix, muonScratchShapes } from "../ops/muon.ts";
import { HEAD_WINDOW_ALIGN } from "../models/eagle3_head_loss.ts";
import type { LkLossOptions } from "../ops/lk_loss.ts";
import { featureFeederTensors } from "../offline/feeder.ts";
import type { FeaturesManifest } from "../offline/format.ts";
import type { TrainSettings } from "./config.ts";
import { evalBatchIndices } from "./evaluate.ts";
import type { RunSetup } from "./setup.ts";
import { promptsFromSamples, resolveSpeculativeConfig } from "../eval/speculative.ts";
import { EvalReplay, evalSplits, SpeculativeReplay } from "../eval/eval_plan.ts";

/** What the plan of a training run is made from. */
export interface TrainingPlanInput extends TargetPlanInput {
  /** The draft config. */
  draft: DraftConfig;
  /** The offline features' manifest, null online. */
  features: FeaturesManifest | null;
  /** Whether --embedding-key loads its own f32 embedding for the draft. */
  embeddingOverride: boolean;
  /** Online with --target-memory-budget: the streamed target's layer slots (null: every layer resident). */
  streamSlots?: number | null;
  /** The rank's loader (batch size, shuffles) and the evaluation set. */
  loader: DataLoader;
  /** The evaluation set (null: no evaluation). */
  evalSet: TokenizedDataset | null;
  /** Optimizer updates the run will make, and the settings that shape the loop. */
  updates: number;
  /** TTT positions. */
  tttLength: number;
  /** Micro-batches per update. */
  accumulationSteps: number;
  /** Updates between evaluations (0: at the end only). */
  evalInterval: number;
  /** Batches per evaluation (null: the whole set). */
  evalBatches: number | null;
  /** The LK loss (null: the KL loss). */
  lk: LkLossOptions | null;
  /** Muon for the hidden matrices (default false: AdamW for every parameter). */
  muon?: boolean;
  /** Rows of the draft head's windows (default null: a batch's rows at once). */
  headRows?: number | null;
  /** The dtype the training steps keep the MLP's gate and up in (default f32). */
  mlpSaved?: MlpSavedDtype;
  /**
   * --eval-spec-samples: the greedy chain speculative decoding at each evaluation (lib/train/evaluate.ts
   * `measureTau`), its prompts' lengths, steps and new tokens; null or absent: none.
   */
  evalSpec?: { promptLengths: number[]; numSteps: number; maxNewTokens: number } | null;
}

/** The plan of a training run (see the module comment). */
export function planTraining(i: TrainingPlanInput): MemoryPlan {
  const replay = new Replay(i.device.maxBufferSize);
  for (const [key, tensors] of fixedTensors(i)) replay.allocate(key, null, tensors);
  const layerPrograms = i.streamSlots ? streamProgramCount(i.target, i.streamSlots) : 1;
  const splits = { ...targetSplits(i), layerPrograms };
  const shapes = new ShapeCache(replay, trainingFeed(i, splits), trainingStep(i, splits));
  const tau = tauReplay(i, replay);
  for (const [split, batch, seqLen] of runBatches(i)) {
    if (split !== "tau") shapes.use(split, batch, seqLen);
    else tau?.();
  }
  return { ...replay.plan(), shapes: shapes.distinct.size, headRows: i.headRows ?? null };
}

/**
 * The speculative decoding of an evaluation's tau (lib/eval/eval_plan.ts `SpeculativeReplay`, in one
 * category): a decoder over the prompts, then freed; null without --eval-spec-samples.
 */
function tauReplay(i: TrainingPlanInput, replay: Replay): (() => void) | null {
  const e = i.evalSpec;
  if (!e) return null;
  const spec = resolveSpeculativeConfig({ numSteps: e.numSteps, topk: 1 });
  const r = new EvalReplay(replay, "evalSpec"), splits = evalSplits(i);
  return () => {
    const decoder = new SpeculativeReplay(r, { ...i, spec, maxNewTokens: e.maxNewTokens }, splits);
    for (const L of e.promptLengths) decoder.generate(L);
    decoder.destroy();
  };
}

/** The tensors allocated once, by category, in the trainer's order. */
function fixedTensors(i: TrainingPlanInput): Array<[PlanCategoryKey, PlannedTensor[]]> {
  const { target: cfg, draft } = i;
  const online = i.features === null;
  const lmHead = online || i.features!.storage.teacherFormat !== "topk";
  const parts = online
    ? { layers: true as const, slots: i.streamSlots ?? undefined }
    : { layers: false as const, lmHead };
  const out = targetWeightCategories(i, parts);
  out.push(
    ["teacherHead", lmHead ? teacherHeadTensors(i) : []],
    [
      "draftEmbedding",
      i.embeddingOverride ? [planned("draft embedding", [cfg.vocabSize, draft.hiddenSize], "f32")] : [],
    ],
  );
  const shapes = eagle3ParamShapes(draft);
  const params = eagle3ParamNames(draft).map((n) => ({ name: n, shape: shapes[n]! }));
  const each = (suffix: string) => params.map((p) => planned(`${p.name}${suffix}`, p.shape, "f32"));
  out.push(["draftWeights", each("")], ["gradients", each(" grad")], [
    "optimizer",
    draftOptimizerTensors(params, i.muon ?? false, i.device),
  ]);
  return out;
}

/**
 * Everything lib/train/optimizer.ts `DraftOptimizer` allocates for `params`, in its order: the state
 * ({@link optimizerStateTensors}), the gradient norm², the step state and the norm's partial sums.
 */
export function draftOptimizerTensors(
  params: { name: string; shape: number[] }[],
  muon: boolean,
  limits: BindingLimits,
): PlannedTensor[] {
  const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  const partials = params.reduce((n, p) => n + Math.ceil(size(p.shape) / REDUCE_CHUNK), 0);
  return [
    ...optimizerStateTensors(params, muon, limits),
    planned("grad norm²", [1], "f32"),
    planned("step state", [ADAMW_STATE_SIZE], "f32"),
    planned("grad norm partials", [Math.max(1, partials)], "f32"),
  ];
}

/**
 * The state of lib/train/optimizer.ts `DraftOptimizer`, in its order: Muon's shared scratch (with Muon), then
 * per parameter AdamW's two moments or Muon's momentum.
 */
function optimizerStateTensors(
  params: { name: string; shape: number[] }[],
  muon: boolean,
  limits: BindingLimits,
): PlannedTensor[] {
  const isMuon = (p: { name: string; shape: number[] }) => muon && isMuonMatrix(p.name, p.shape);
  const scratch = muonScratchShapes(params.filter(isMuon).map((p) => p.shape), limits);
  return [
    ...scratch.map(([label, shape]) => planned(label, shape, "f32")),
    ...params.flatMap((p) =>
      isMuon(p)
        ? [planned(`${p.name}.momentum_buffer`, p.shape, "f32")]
        : [planned(`${p.name}.exp_avg`, p.shape, "f32"), planned(`${p.name}.exp_avg_sq`, p.shape, "f32")]
    ),
  ];
}

/** The lm_head rows of the draft vocabulary, in the lm_head's dtype, split to fit one binding. */
function teacherHeadTensors(i: TrainingPlanInput): PlannedTensor[] {
  const dtype = uploadDtype(i.weights.stored(i.weights.names.lmHead).dtype, i.device.shaderF16);
  return subsetBlockRows(i).map((n, b) =>
    planned(`lm_head subset block ${b}`, [n, i.target.hiddenSize], dtype)
  );
}

/** The row counts of the teacher head's blocks. */
function subsetBlockRows(i: TrainingPlanInput): number[] {
  const head = i.weights.stored(i.weights.names.lmHead);
  return blockRowsOf(i, i.draft.draftVocabSize, i.target.hiddenSize, head.dtype, "lm_head subset");
}

/** The draft's split matrices (f32 weights and gradients) and whether its frozen embedding is in blocks. */
function draftSplits(
  i: TrainingPlanInput,
  target: TargetSplits,
): { embedSplit: boolean; matrixBlockRows: number[] } {
  const shapes = eagle3ParamShapes(i.draft);
  const matrixBlockRows = eagle3ParamNames(i.draft).map((n) => shapes[n]!).filter((s) => s.length === 2)
    .flatMap(([rows, cols]) => linearBlockRows(i, rows, cols, [4, 4]));
  return { embedSplit: !i.embeddingOverride && target.embedBlockRows.length > 1, matrixBlockRows };
}

/**
 * The micro-batches of the run in order, as (split, batch, padded length): each epoch's training batches,
 * an evaluation pass every `evalInterval` updates (its batches, then "tau", where --eval-spec-samples decodes),
 * and the last one when it did not fall on the last update (lib/train/trainer.ts `trainLoop`, `update`,
 * `finish`).
 */
function* runBatches(i: TrainingPlanInput): Generator<["train" | "eval" | "tau", number, number]> {
  const batch = i.loader.options.batchSize;
  const evalPass = function* (): Generator<["eval" | "tau", number, number]> {
    if (!i.evalSet) return;
    for (const idx of evalBatchIndices(i.evalSet.length, batch, i.evalBatches)) {
      yield ["eval", idx.length, paddedLength(i.evalSet, idx)];
    }
    yield ["tau", 0, 0];
  };
  yield* trainingSchedule(i, evalPass);
}

/**
 * A training loop's micro-batches, as (split, batch, padded length): each epoch's training batches (up to
 * `numEpochs`), `evalPass` every `evalInterval` updates and once at the end unless the last update had one.
 */
export function* trainingSchedule<E>(
  i: { loader: DataLoader; updates: number; accumulationSteps: number; evalInterval: number },
  evalPass: () => Generator<E>,
  numEpochs = Infinity,
): Generator<["train", number, number] | E> {
  const batch = i.loader.options.batchSize;
  let updates = 0, micro = 0, evaluatedAt = -1;
  for (let epoch = 0; epoch < numEpochs && updates < i.updates; epoch++) {
    for (const seqLen of i.loader.batchLengths(epoch)) {
      yield ["train", batch, seqLen];
      if (++micro % i.accumulationSteps !== 0) continue;
      updates++;
      if (i.evalInterval > 0 && updates % i.evalInterval === 0) {
        yield* evalPass();
        evaluatedAt = updates;
      }
      if (updates >= i.updates) break;
    }
  }
  if (evaluatedAt !== updates) yield* evalPass();
}

/**
 * Whether the steps make the teacher logits per head window (lib/models/teacher_source.ts): whenever the
 * draft head runs in windows (lib/train/trainer.ts `openSource`).
 */
function windowedTeacher(i: TrainingPlanInput): boolean {
  return (i.headRows ?? null) !== null;
}

/** The feed of a training run's batch shape: the target's forward online, the feature decoder offline. */
function trainingFeed(i: TrainingPlanInput, splits: TargetSplits) {
  const windowed = windowedTeacher(i);
  const subset = windowed ? undefined : { size: i.draft.draftVocabSize, blockRows: subsetBlockRows(i) };
  return (batch: number, seqLen: number): PlannedTensor[] =>
    i.features
      ? featureFeederTensors(i.features, batch, seqLen, i.draft.draftVocabSize, subsetBlockRows(i), windowed)
      : targetForwardTensors(i.target, batch, seqLen, { aux: true, subset, vocabStats: true }, splits);
}

/**
 * A step's teacher window when it makes the teacher logits (`teacherWindowRows` rows of the draft vocabulary)
 * and, from the target's hidden states, the column blocks of the lm_head subset's row blocks when it is split
 * (lib/ops/row_split.ts).
 */
function teacherWindowTensors(i: TrainingPlanInput, shape: Eagle3StepShape): PlannedTensor[] {
  if (!windowedTeacher(i)) return [];
  const topk = i.features?.storage.teacherFormat === "topk";
  const rows = teacherWindowRows(shape), blocks = topk ? [] : subsetBlockRows(i);
  return [
    planned("teacher logits window", [rows, i.draft.draftVocabSize], "f32"),
    ...(blocks.length > 1 ? [...new Set(blocks)].map((n) => planned("head rows", [rows, n], "f32")) : []),
  ];
}

/** The draft step of a training run's batch shape and split. */
function trainingStep(i: TrainingPlanInput, splits: TargetSplits) {
  const draft = draftSplits(i, splits);
  return (split: Split, batch: number, seqLen: number): PlannedTensor[] => {
    const shape = {
      batch,
      seqLen,
      tttLength: i.tttLength,
      train: split === "train",
      lk: i.lk,
      acceptance: true,
      headRows: Math.min(batch * seqLen, i.headRows ?? Infinity),
      mlpSaved: i.mlpSaved,
    };
    return [...eagle3StepTensors(i.draft, shape, draft), ...teacherWindowTensors(i, shape)];
  };
}

/**
 * The plan of a run that will make `updates` updates with batches from `loader`, and the rows of the draft
 * head's windows (lib/models/eagle3_head_loss.ts): --head-chunk-rows; else every row of a batch when that
 * fits the device; else the largest window that does, halving from what one storage binding holds down to
 * 64 rows (when none fits, the plan of every row, which {@link checkPlanFits} refuses naming its largest part).
 */
export function planRun(
  gpu: Gpu,
  s: TrainSettings,
  setup: RunSetup,
  loader: DataLoader,
  updates: number,
  lk: LkLossOptions | null,
): Promise<MemoryPlan> {
  const limits = planLimits(gpu, s);
  return withTargetPlanInput(gpu, setup.targetDir, setup.targetConfig, (target, has) => {
    const streamSlots = setup.offline ? null : targetStreamSlots(
      target,
      s.targetMemoryBudget === null ? null : parseByteSize(s.targetMemoryBudget),
    );
    const plan = (headRows: number | null) =>
      planTraining({
        ...target,
        draft: setup.draftConfig,
        features: setup.offline?.train.manifest ?? null,
        embeddingOverride: s.embeddingKey !== target.weights.names.embed && has(s.embeddingKey),
        streamSlots,
        loader,
        evalSet: setup.eval,
        updates,
        tttLength: s.tttLength,
        accumulationSteps: s.draftAccumulationSteps,
        evalInterval: s.evalInterval,
        evalBatches: s.evalBatches,
        lk,
        muon: s.optimizer === "muon",
        headRows,
        mlpSaved: s.mlpSavedDtype,
        evalSpec: evalSpecOf(s, setup, streamSlots),
      });
    if (s.headChunkRows !== null) return plan(s.headChunkRows);
    const whole = plan(null), rowBytes = 4 * setup.draftConfig.draftVocabSize;
    const maxRows = whole.largestShape.batch * whole.largestShape.seqLen;
    // A window's teacher rows reach ttt-length rows past it; one binding must hold them.
    const fits = (p: MemoryPlan, rows: number) =>
      rows * rowBytes <= limits.maxStorageBufferBindingSize && planFits(p, limits);
    if (fits(whole, maxRows)) return whole;
    const align = (n: number) => Math.floor(n / HEAD_WINDOW_ALIGN) * HEAD_WINDOW_ALIGN;
    const bindingRows = Math.floor(limits.maxStorageBufferBindingSize / rowBytes) - s.tttLength;
    for (
      let rows = align(Math.min(bindingRows, maxRows - 1));
      rows >= HEAD_WINDOW_ALIGN;
      rows = align(rows / 2)
    ) {
      const windowed = plan(rows);
      if (fits(windowed, rows + s.tttLength)) return windowed;
    }
    return whole;
  });
}

/**
 * What --eval-spec-samples decodes at each evaluation (lib/train/evaluate.ts `measureTau`): the first eval
 * samples' prompts, online with a resident target (a streamed one measures no tau); null when nothing is.
 */
function evalSpecOf(
  s: TrainSettings,
  setup: RunSetup,
  streamSlots: number | null,
): TrainingPlanInput["evalSpec"] {
  const evalSet = setup.eval;
  if (s.evalSpecSamples === 0 || setup.offline || streamSlots !== null || !evalSet) return null;
  const samples = Array.from(
    { length: Math.min(s.evalSpecSamples, evalSet.length) },
    (_, i) => evalSet.sample(i),
  );
  const prompts = promptsFromSamples(samples, Math.max(1, s.maxLength - s.evalSpecNewTokens));
  return {
    promptLengths: prompts.map((p) => p.length),
    numSteps: s.evalSpecSteps,
    maxNewTokens: s.evalSpecNewTokens,
  };
}

/** The limits of `gpu` with the memory --device-memory names (or the host's, for a CPU adapter). */
export function planLimits(gpu: Gpu, s: TrainSettings): PlanLimits {
  return planLimitsOf(gpu, s.deviceMemory === null ? null : parseByteSize(s.deviceMemory));
}
