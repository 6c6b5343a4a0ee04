/**
 * A run's checkpoints (SpecForge `scripts/train_eagle3_online.py` `save_checkpoints`; the layout is
 * ./checkpoint.ts): {@link saveRun} writes the master weights, AdamW's moments, the run state and the SGLang
 * export of the draft; {@link restoreRun} puts a loaded checkpoint back into the draft, the optimizer and a
 * fresh {@link RunState}, so that the resumed run continues bit for bit.
 */
import { fromFloat32, type RawTensor, toFloat32 } from "../io/safetensors.ts";
import type { DraftExport, NamedWeight } from "../models/export.ts";
import { specForgeDefaultAuxLayers } from "../models/config.ts";
import type { Eagle3Draft, Eagle3ParamName } from "../models/eagle3.ts";
import {
  CHECKPOINT_VERSION,
  type LoadedCheckpoint,
  saveCheckpoint,
  type TrainingState,
} from "./checkpoint.ts";
import { settingsToJson } from "./config.ts";
import { checkFinite } from "./divergence.ts";
import { checkRanksAgree } from "./data_parallel.ts";
import { checkFiniteWeights } from "../models/finite_weights.ts";
import type { DraftOptimizer } from "./optimizer.ts";
import { type Run, RunState } from "./run.ts";

/** The run's draft as an SGLang export: its current weights (one sync per tensor), config and vocabulary. */
export async function draftExportOf(run: Run): Promise<DraftExport> {
  const { setup, draft } = run;
  const weights = new Map<string, NamedWeight>();
  for (const [name, w] of await draft.getWeights()) {
    weights.set(name, { values: w, shape: [...draft.params[name as Eagle3ParamName]!.shape] });
  }
  return {
    config: setup.draftConfig,
    weights,
    mapping: setup.mapping,
    defaultAuxLayers: specForgeDefaultAuxLayers(setup.targetConfig.numLayers),
  };
}

/**
 * Loads checkpoint `r` into `draft` and `optimizer` (a NaN or infinite master weight is an error naming the
 * file and tensor); returns the state the run continues from.
 */
export async function restoreRun(
  r: LoadedCheckpoint,
  draft: Eagle3Draft,
  optimizer: DraftOptimizer,
): Promise<RunState> {
  const weights = new Map<string, Float32Array>();
  for (const [name, t] of r.weights) weights.set(name, toFloat32(t, `${r.dir} ${name}`));
  draft.setWeights(weights);
  const loaded = draft.names.map((name) => ({ name, tensor: draft.params[name]!, file: r.weightsFile }));
  await checkFiniteWeights(draft.gpu, loaded, "draft");
  optimizer.loadState(r.optimizer, r.state.globalStep, r.dir);
  return RunState.resumed(r.state, r.dir);
}

/**
 * Checks the run has not diverged (nor its ranks drifted apart), then saves a checkpoint of the current update as
 * `epoch_{epoch}_step_{update}` (SpecForge's names; its `step` counts updates) and records it in the state.
 */
export async function saveRun(run: Run): Promise<void> {
  const { settings: s, state } = run;
  await checkFinite(run, `before saving update ${state.update}`);
  await checkRanksAgree(run.world, run.draft, `at update ${state.update}`);
  if (run.world.rank !== 0) { // rank 0 writes the checkpoint every rank would have written
    state.savedAt = state.update;
    return;
  }
  const exp = await draftExportOf(run);
  const raw = new Map<string, RawTensor>();
  for (const [name, w] of exp.weights) raw.set(name, fromFloat32(w.values, w.shape));
  const saved: TrainingState = {
    version: CHECKPOINT_VERSION,
    globalStep: state.update,
    microSteps: state.microBatches,
    position: state.position,
    totalSteps: run.schedule.totalSteps,
    warmupSteps: run.schedule.warmupSteps,
    rng: { seed: s.seed },
    settings: settingsToJson(s),
    fingerprint: run.setup.fingerprint,
    worldSize: run.world.size,
    elapsed: state.elapsed(),
  };
  state.lastCheckpoint = await saveCheckpoint(s.outputDir, state.epoch, {
    state: saved,
    weights: raw,
    optimizer: await run.optimizer.stateTensors(),
    export: exp,
    exportDtype: s.exportDtype,
  });
  state.savedAt = state.update;
  run.note(`saved ${state.lastCheckpoint}`);
}
