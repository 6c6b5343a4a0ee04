/**
 * DFlash training checkpoints: the layout of ./checkpoint.ts with the DFlash export in place of the EAGLE-3 one
 * (config.json + model.safetensors, servable as is by SGLang and vLLM) and the training state beside it
 * (training_state.json, training_state/training_weights.safetensors with the f32 master weights,
 * training_state/optimizer.safetensors), so that `--resume` continues bit for bit: every random choice of a
 * DFlash run (initialisation, epoch orders, anchors) is a function of the seed and of its counts.
 */
import { join } from "node:path";
import { writeDirAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { fromFloat32, type RawTensor, toFloat32, writeSafetensors } from "../io/safetensors.ts";
import { type DflashConfig, dflashConfigJson, parseDflashConfig } from "../models/dflash_config.ts";
import { dflashParamShapes, type DflashWeights } from "../models/dflash.ts";
import { writeDflashExportFiles } from "../models/dflash_export.ts";
import type { ExportDtype } from "../models/export.ts";
import {
  CHECKPOINT_FILES,
  CheckpointError,
  findLatestCheckpoint,
  type LoadedCheckpoint,
  loadTrainingState,
  TRAINING_STATE_DIR,
  type TrainingState,
} from "./checkpoint.ts";
import { RESUME_LATEST_GOOD, settingsToJson, type TrainSettings } from "./config.ts";
import {
  contractSettings,
  describeChange,
  listedNames,
  runChanges,
  type RunFingerprint,
} from "./fingerprint.ts";

/** Writes `dir` atomically (replacing a checkpoint of that name): the DFlash export and the training state. */
export async function saveDflashCheckpoint(
  dir: string,
  c: {
    config: DflashConfig;
    weights: DflashWeights;
    optimizer: Map<string, RawTensor>;
    state: TrainingState;
    exportDtype: ExportDtype;
  },
): Promise<void> {
  await writeDirAtomic(dir, async (tmp) => {
    await writeDflashExportFiles(tmp, c.config, c.weights, c.exportDtype);
    await Deno.mkdir(join(tmp, TRAINING_STATE_DIR));
    const master = new Map<string, RawTensor>();
    for (const [name, shape] of dflashParamShapes(c.config)) {
      master.set(name, fromFloat32(c.weights.get(name)!, shape));
    }
    await writeSafetensors(join(tmp, CHECKPOINT_FILES.weights), master, { format: "pt" });
    await writeSafetensors(join(tmp, CHECKPOINT_FILES.optimizer), c.optimizer, { format: "pt" });
    await writeJsonAtomic(join(tmp, CHECKPOINT_FILES.state), c.state);
  }, { overwrite: true });
}

/** What a DFlash run resumes from: the checkpoint's state and its master weights by name. */
export interface DflashResume {
  /** The checkpoint as ./checkpoint.ts reads it (no vocabulary mapping: DFlash has none). */
  checkpoint: Omit<LoadedCheckpoint, "mapping">;
  /** The f32 master weights. */
  weights: DflashWeights;
}

/**
 * The checkpoint `--resume` (the output directory's latest) or `--resume-from DIR` names, checked against the
 * run: its DFlash config equals the run's, and its settings and fingerprint differ only where
 * `--resume-allow-changed` allows. Null for a fresh run.
 */
export async function resolveDflashResume(
  s: TrainSettings,
  config: DflashConfig,
  fingerprint: RunFingerprint,
  note: (m: string) => void,
): Promise<DflashResume | null> {
  if (s.resumeFrom === RESUME_LATEST_GOOD) {
    throw new CheckpointError(`--resume-from ${RESUME_LATEST_GOOD} is not supported for DFlash drafts yet`);
  }
  const dir = s.resumeFrom ?? (s.resume ? await findLatestCheckpoint(s.outputDir) : null);
  if (dir === null) {
    if (s.resume) note(`--resume: no checkpoint in ${s.outputDir}, starting from scratch`);
    return null;
  }
  const checkpoint = await loadTrainingState(dir);
  const cfgPath = join(dir, CHECKPOINT_FILES.config);
  const saved = parseDflashConfig(JSON.parse(await Deno.readTextFile(cfgPath)), cfgPath);
  if (JSON.stringify(dflashConfigJson(saved)) !== JSON.stringify(dflashConfigJson(config))) {
    throw new CheckpointError(
      `${cfgPath}: the checkpoint's DFlash draft is not the run's (its config differs)`,
    );
  }
  const changes = runChanges(
    contractSettings(checkpoint.state.settings, 1),
    contractSettings(settingsToJson(s), 1),
    checkpoint.state.fingerprint ?? null,
    fingerprint,
  );
  const allowed = new Set(listedNames(s.resumeAllowChanged));
  const refused = changes.filter((c) => !allowed.has(c.name));
  if (refused.length > 0) {
    throw new CheckpointError(
      `${dir}: the resumed run differs from the saved one in ${
        refused.map(describeChange).join(", ")
      }; keep ` +
        `them, or name them in --resume-allow-changed ${refused.map((c) => c.name).join(",")} if you mean it`,
    );
  }
  const weights: DflashWeights = new Map();
  for (const [name, t] of checkpoint.weights) {
    weights.set(name, toFloat32(t, `${checkpoint.weightsFile}: ${name}`));
  }
  return { checkpoint, weights };
}
