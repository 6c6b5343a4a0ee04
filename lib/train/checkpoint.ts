/**
 * Training checkpoints (SpecForge `scripts/train_eagle3_online.py` `save_checkpoints`), one directory per
 * save, `{output_dir}/epoch_{e}_step_{s}/` (the naming of SpecForge's merged script `scripts/train_eagle3.py`;
 * `s` counts optimizer updates), holding:
 *
 *   config.json + model.safetensors   the SGLang export of the weights at that step (lib/models/export.ts), so
 *                                     every checkpoint can be served as is; the only safetensors file of
 *                                     the directory, since SGLang's and vLLM's loaders read every
 *                                     `*.safetensors` of a model directory without an index (not its
 *                                     subdirectories; SpecForge keeps its training state in a .pt for the
 *                                     same reason)
 *   training_state.json               update and micro-batch counts, epoch, data position (the next
 *                                     micro-batch), RNG state, schedule, the run's settings
 *   training_state/                   what no serving loader should see:
 *     training_weights.safetensors    the f32 master weights of every trainable tensor (bit-exact resume;
 *                                     the export may be bf16)
 *     optimizer.safetensors           AdamW's moments, `<param>.exp_avg` / `<param>.exp_avg_sq`, f32
 *
 * The directory is written under a temporary name and renamed when complete (lib/io/atomic.ts), so a crash
 * or a kill mid-save never leaves a half checkpoint: {@link findLatestCheckpoint} only sees complete ones.
 * The frozen embedding is not saved (it is the target's, reloaded from it), as in SpecForge.
 */
import { join } from "node:path";
import { pathExists, writeDirAtomic, writeJsonAtomic } from "../io/atomic.ts";
import {
  type RawTensor,
  SafetensorsError,
  SafetensorsFile,
  toFloat32,
  writeSafetensors,
} from "../io/safetensors.ts";
import {
  type DraftExport,
  exportDraft,
  type ExportDtype,
  type ExportOptions,
  type NamedWeight,
  writeDraftExportFiles,
} from "../models/export.ts";
import { loadDraftConfig } from "../models/draft_config.ts";
import type { LoaderPosition } from "../data/loader.ts";
import { loadVocabMapping, type VocabMapping } from "../data/vocab.ts";
import type { RunFingerprint } from "./fingerprint.ts";

/**
 * Version of the training state: its JSON layout and what its data position means. 2: epoch orders are
 * drawn from mulberry32 (lib/data/random.ts); a version-1 position indexes another order, so resuming it
 * would silently train on other samples, and it is refused.
 */
export const CHECKPOINT_VERSION = 2;

/** The subdirectory of a checkpoint that holds the training-only tensors (out of serving loaders' glob). */
export const TRAINING_STATE_DIR = "training_state";

/** File names inside a checkpoint directory (relative paths). */
export const CHECKPOINT_FILES = {
  state: "training_state.json",
  weights: `${TRAINING_STATE_DIR}/training_weights.safetensors`,
  optimizer: `${TRAINING_STATE_DIR}/optimizer.safetensors`,
  model: "model.safetensors",
  config: "config.json",
} as const;

/** A bad or incomplete checkpoint; the message names the file. */
export class CheckpointError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "CheckpointError";
}

/** The run state saved with each checkpoint. */
export interface TrainingState {
  /** Layout version of training_state.json; loading checks it equals CHECKPOINT_VERSION. */
  version: number;
  /** Optimizer updates done. */
  globalStep: number;
  /** Micro-batches done. */
  microSteps: number;
  /** Where the data loader continues: the next micro-batch is batch `step` of epoch `epoch`. */
  position: LoaderPosition;
  /** Optimizer updates the learning-rate schedule spans. */
  totalSteps: number;
  /** Updates of the learning-rate warmup. */
  warmupSteps: number;
  /**
   * Randomness: every random choice of a run (draft init, epoch shuffles) is a pure function of the seed and
   * of the position, so the seed is the whole RNG state.
   */
  rng: { seed: number };
  /** The run's settings (snake_case, as train-online's YAML). */
  settings: Record<string, unknown>;
  /** Content hashes of the run's inputs (./fingerprint.ts); absent in checkpoints saved before them. */
  fingerprint?: RunFingerprint;
  /** Data-parallel ranks of the run that saved it (absent: 1); the data position counts global batches. */
  worldSize?: number;
  /** Seconds of training before this save (summed over resumed runs). */
  elapsed: number;
}

/** `epoch_{epoch}_step_{step}`. */
export function checkpointName(epoch: number, step: number): string {
  return `epoch_${epoch}_step_${step}`;
}

const NAME = /^epoch_(\d+)_step_(\d+)$/;

/** Everything a save writes. */
export interface CheckpointContents {
  state: TrainingState;
  /** f32 master weights by name. */
  weights: Map<string, RawTensor>;
  /** Optimizer moments by name. */
  optimizer: Map<string, RawTensor>;
  /** The SGLang export of the same weights. */
  export: DraftExport;
  exportDtype: ExportDtype;
}

/**
 * Writes `{outputDir}/epoch_{e}_step_{s}` atomically (replacing a checkpoint of the same name) and returns
 * its path. `e` is the epoch of the last micro-batch trained.
 */
export async function saveCheckpoint(
  outputDir: string,
  epoch: number,
  c: CheckpointContents,
): Promise<string> {
  const dir = join(outputDir, checkpointName(epoch, c.state.globalStep));
  await writeDirAtomic(dir, async (tmp) => {
    await writeDraftExportFiles(tmp, c.export, c.exportDtype);
    await Deno.mkdir(join(tmp, TRAINING_STATE_DIR));
    await writeSafetensors(join(tmp, CHECKPOINT_FILES.weights), c.weights, { format: "pt" });
    await writeSafetensors(join(tmp, CHECKPOINT_FILES.optimizer), c.optimizer, { format: "pt" });
    await writeJsonAtomic(join(tmp, CHECKPOINT_FILES.state), c.state);
  }, { overwrite: true });
  return dir;
}

/** The checkpoints of `outputDir`, newest first (most updates, then the latest epoch); [] when it is absent. */
export async function listCheckpoints(outputDir: string): Promise<string[]> {
  const found: Array<{ dir: string; step: number; epoch: number }> = [];
  try {
    for await (const e of Deno.readDir(outputDir)) {
      const m = NAME.exec(e.name);
      if (e.isDirectory && m) {
        found.push({ dir: join(outputDir, e.name), step: Number(m[2]), epoch: Number(m[1]) });
      }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return found.sort((a, b) => b.step - a.step || b.epoch - a.epoch).map((c) => c.dir);
}

/** The checkpoint of `outputDir` with the most updates (then the latest epoch), or null when there is none. */
export async function findLatestCheckpoint(outputDir: string): Promise<string | null> {
  return (await listCheckpoints(outputDir))[0] ?? null;
}

/**
 * The newest checkpoint of `outputDir` that loads ({@link loadCheckpoint}), skipping `skip`; each one that
 * does not load is noted with why. Null when none loads.
 */
export async function findIntactCheckpoint(
  outputDir: string,
  note: (message: string) => void,
  skip: string | null = null,
): Promise<LoadedCheckpoint | null> {
  for (const dir of await listCheckpoints(outputDir)) {
    if (dir === skip) continue;
    try {
      return await loadCheckpoint(dir);
    } catch (e) {
      if (!(e instanceof CheckpointError || e instanceof SafetensorsError)) throw e;
      note(`skipping ${dir}: ${e.message}`);
    }
  }
  return null;
}

/** What {@link loadCheckpoint} reads back. */
export interface LoadedCheckpoint {
  /** The checkpoint directory read. */
  dir: string;
  /** training_state.json, parsed and checked. */
  state: TrainingState;
  /** training_state/training_weights.safetensors: the f32 master weight of every trainable tensor, by name. */
  weights: Map<string, RawTensor>;
  /** The path of that file (training_state/training_weights.safetensors, or a flat checkpoint's). */
  weightsFile: string;
  /** training_state/optimizer.safetensors: AdamW's moments, `<param>.exp_avg` and `<param>.exp_avg_sq`, f32. */
  optimizer: Map<string, RawTensor>;
  /** The draft vocabulary mapping (d2t/t2d) read from the checkpoint's model.safetensors. */
  mapping: VocabMapping;
}

async function readAll(path: string): Promise<Map<string, RawTensor>> {
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(path);
  } catch (e) {
    throw new CheckpointError(`${path}: ${(e as Error).message}`);
  }
  try {
    const out = new Map<string, RawTensor>();
    for (const name of f.names) out.set(name, await f.read(name));
    return out;
  } finally {
    f.close();
  }
}

/**
 * The path of a training-state file: under training_state/, or at the top of a checkpoint written before
 * that subdirectory existed (same content, still resumable).
 */
async function trainingFile(dir: string, file: string): Promise<string> {
  const path = join(dir, file);
  const flat = join(dir, file.slice(TRAINING_STATE_DIR.length + 1));
  if (await pathExists(path) || !(await pathExists(flat))) return path;
  return flat;
}

/** Reads an EAGLE-3 checkpoint directory; a missing or malformed file is named. */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  const training = await loadTrainingState(dir);
  const mapping = await loadVocabMapping(join(dir, CHECKPOINT_FILES.model)).catch((e) => {
    throw new CheckpointError(`${join(dir, CHECKPOINT_FILES.model)}: ${(e as Error).message}`);
  });
  return { ...training, mapping };
}

/**
 * Reads what any draft type's checkpoint holds for resuming: training_state.json (version and counts
 * checked), the master weights and the optimizer state; a missing or malformed file is named.
 */
export async function loadTrainingState(dir: string): Promise<Omit<LoadedCheckpoint, "mapping">> {
  const statePath = join(dir, CHECKPOINT_FILES.state);
  let state: TrainingState;
  try {
    state = JSON.parse(await Deno.readTextFile(statePath));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new CheckpointError(`${statePath}: missing (not a training checkpoint directory?)`);
    }
    throw new CheckpointError(`${statePath}: ${(e as Error).message}`);
  }
  if (state?.version !== CHECKPOINT_VERSION) {
    throw new CheckpointError(
      `${statePath}: version ${state?.version}, expected ${CHECKPOINT_VERSION} (a checkpoint of another ` +
        `Eaglet version: its data position does not carry over; start the run again)`,
    );
  }
  for (const k of ["globalStep", "microSteps", "totalSteps", "warmupSteps"] as const) {
    if (!Number.isSafeInteger(state[k]) || state[k] < 0) throw new CheckpointError(`${statePath}: bad ${k}`);
  }
  const p = state.position;
  if (!p || !Number.isSafeInteger(p.epoch) || !Number.isSafeInteger(p.step)) {
    throw new CheckpointError(`${statePath}: bad position`);
  }
  const weightsFile = await trainingFile(dir, CHECKPOINT_FILES.weights);
  const weights = await readAll(weightsFile);
  const optimizer = await readAll(await trainingFile(dir, CHECKPOINT_FILES.optimizer));
  return { dir, state, weights, weightsFile, optimizer };
}

/**
 * Re-exports a training checkpoint as an SGLang (or vLLM, `format`) directory `outDir` in `dtype` (`deno task export`): the f32
 * master weights, the checkpoint's config.json (draft config, eagle_config included) and its d2t/t2d, checked
 * on write. `vocabMapping` replaces d2t/t2d (sizes must match).
 */
export async function exportCheckpoint(
  checkpointDir: string,
  outDir: string,
  opts: ExportOptions & { vocabMapping?: VocabMapping } = {},
): Promise<void> {
  const ckpt = await loadCheckpoint(checkpointDir);
  const config = await loadDraftConfig(join(checkpointDir, CHECKPOINT_FILES.config));
  const weights = new Map<string, NamedWeight>();
  for (const [name, t] of ckpt.weights) weights.set(name, { values: toFloat32(t, name), shape: t.shape });
  await exportDraft(outDir, { config, weights, mapping: opts.vocabMapping ?? ckpt.mapping }, opts);
}

/** The target a checkpoint was trained against (its run's target_model_path), or null when not recorded. */
export async function checkpointTarget(checkpointDir: string): Promise<string | null> {
  const file = join(checkpointDir, CHECKPOINT_FILES.state);
  let state: Partial<TrainingState>;
  try {
    state = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    throw new CheckpointError(`${file}: ${(e as Error).message}`);
  }
  const path = state.settings?.target_model_path;
  return typeof path === "string" && path !== "" ? path : null;
}
