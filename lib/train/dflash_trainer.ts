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
 * This module resolves, plans and opens a run; its state and loop are ./dflash_run.ts.
 */
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { claimOutputDir } from "../io/lock.ts";
import { resolveModelPath } from "../io/hub.ts";
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
import { OfflineDflashSource, OnlineDflashSource } from "./dflash_features.ts";
import { jsonSha256, type RunFingerprint } from "./fingerprint.ts";
import { resolveDflashResume } from "./dflash_checkpoint.ts";
import { isDpace } from "../ops/dflash_loss.ts";
import { checkMlpSavedDtype, type TrainSettings } from "./config.ts";
import { ProgressPrinter } from "./metrics.ts";
import { openFeatures, tokenizeData } from "./setup.ts";
import type { TrainOptions } from "./trainer.ts";
import { planDflashWindows } from "./dflash_plan.ts";
import { DflashRun, type DflashRunResult, loopOf } from "./dflash_run.ts";
import { planLimits } from "./training_plan.ts";
import {
  checkPlanFits,
  type MemoryPlan,
  type PlanLimits,
  withTargetPlanInput,
} from "../models/memory_plan.ts";
import { formatBytes } from "../gpu/device_memory.ts";

/** What a DFlash run did. */
export interface DflashTrainResult extends DflashRunResult {
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
  checkMlpSavedDtype(s, cfg.intermediateSize);
  const data = offline
    ? await openFeatures(s, targetConfig, targetDir, cfg.targetLayerIds, note, LAYERS_FLAG)
    : await tokenizeData(s, targetDir, note);
  return { targetDir, targetConfig, cfg, data };
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
        mlpSaved: s.mlpSavedDtype,
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
