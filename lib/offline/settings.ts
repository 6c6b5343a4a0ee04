/**
 * The settings of `prepare-hidden-states` (SpecForge's `scripts/prepare_hidden_states.py` argparse, plus
 * Eaglet's storage options), declared once as flags (lib/flags.ts), and their mapping onto
 * {@link PrepareOptions} for {@link prepareHiddenStates}. A library caller writes
 * `prepareHiddenStatesOptions({ targetModelPath, dataPath, outputPath, maxLength: 128 })`; the CLI parses the
 * same table.
 */
import { DEVICE_MEMORY_FLAG, parseByteSize, TARGET_MEMORY_BUDGET_FLAG } from "../gpu/device_memory.ts";
import { type FlagTable, type Settings, type SettingsInput, settingsOf } from "../flags.ts";
import type { HubOptions } from "../io/hub.ts";
import { CHAT_TEMPLATE_FLAG } from "../data/prepare.ts";
import { AUX_FORMATS, DEFAULT_FILE_GROUP_SIZE, TEACHER_FORMATS } from "./format.ts";
import { DEFAULT_STORAGE, type PrepareOptions } from "./prepare.ts";

/** Every flag of `prepare-hidden-states`. */
export const PREPARE_HIDDEN_STATES_FLAGS = {
  "target-model-path": { kind: "string", required: true, help: "target: HF model dir or hub id" },
  "data-path": {
    kind: "string",
    required: true,
    help: "prepared data (.jsonl/.json/.parquet: conversations, text or pre-tokenized)",
  },
  "output-path": { kind: "string", required: true, help: "features directory to write or complete" },
  "chat-template": CHAT_TEMPLATE_FLAG,
  "max-length": { kind: "int", default: 2048, min: 1, help: "tokens kept per sample" },
  "num-samples": { kind: "int", min: 0, help: "only the first N processed samples (default: all)" },
  "batch-size": { kind: "int", default: 8, min: 1, help: "samples per target forward" },
  "shard": {
    kind: "string",
    default: null,
    arg: "i/N",
    help: "this process writes rows r with r % N == i (default: 0/1; under mpirun, rank/ranks)",
    check: (s: string): string | null => /^\d+\/\d+$/.test(s) ? null : "i/N",
  },
  "aux-layers": {
    kind: "ints",
    min: 0,
    length: 3,
    help: "three target layer ids, e.g. 1,15,28 (default: the draft config's, else [1, N/2-1, N-4])",
  },
  "draft-model-config": {
    kind: "string",
    help: "draft config.json whose eagle_config (DFlash: dflash_config.target_layer_ids) names the layers",
  },
  "draft-type": {
    kind: "choice",
    choices: ["eagle3", "dflash"],
    default: "eagle3",
    help: "the draft the features are for: eagle3 (three --aux-layers) or dflash (its --target-layer-ids, " +
      "any count; no teacher by default)",
  },
  "target-layer-ids": {
    kind: "ints",
    min: 0,
    help:
      "dflash: target layers to capture, ascending (default: the --draft-model-config's, else SpecForge's " +
      "build_target_layer_ids for --num-draft-layers)",
  },
  "num-draft-layers": {
    kind: "int",
    default: 1,
    min: 1,
    help: "dflash: the draft's decoder layers, for the default --target-layer-ids",
  },
  "aux-format": {
    kind: "choice",
    choices: AUX_FORMATS,
    default: DEFAULT_STORAGE.auxFormat,
    help: "aux hidden states (int8/int4: grouped, one bf16 scale per group)",
  },
  "group-size": {
    kind: "int",
    default: DEFAULT_STORAGE.groupSize,
    min: 1,
    help: "values per int8/int4 scale",
  },
  "teacher-format": {
    kind: "choice",
    choices: TEACHER_FORMATS,
    default: null,
    help: "the final hidden state (SpecForge's), the top-k next-token log-probs, or none (a DFlash draft's " +
      `loss needs no teacher) (default: ${DEFAULT_STORAGE.teacherFormat}; dflash: none)`,
  },
  "topk": { kind: "int", default: DEFAULT_STORAGE.topk, min: 1, max: 64, help: "k of the topk teacher" },
  "cache-dir": { kind: "string", default: "./cache", help: "preprocessing cache ('' disables it)" },
  "is-preformatted": { kind: "bool", help: 'records are {"text": ...} already rendered' },
  "file-group-size": {
    kind: "int",
    default: DEFAULT_FILE_GROUP_SIZE,
    min: 1,
    help: "files per rows_* folder",
  },
  "dry-run": {
    kind: "bool",
    help: "print the memory plan (bytes by category at the peak, against the device's limits) and exit, " +
      "loading no weight and writing no feature",
  },
  "device-memory": DEVICE_MEMORY_FLAG,
  "target-memory-budget": TARGET_MEMORY_BUDGET_FLAG,
} as const satisfies FlagTable;

/** The settings of `prepare-hidden-states`, each flag under its camelCase name. */
export type PrepareHiddenStatesSettings = Settings<typeof PREPARE_HIDDEN_STATES_FLAGS>;

/** What a library caller gives {@link prepareHiddenStatesOptions}: the required settings and any others. */
export type PrepareHiddenStatesInput = SettingsInput<typeof PREPARE_HIDDEN_STATES_FLAGS>;

/** Where hub ids are resolved and where progress lines go (not flags). */
export interface PrepareContext {
  /** How hub ids are resolved (e.g. `hubOptionsFromEnv(Deno.env.toObject())`). */
  hub: HubOptions;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/**
 * {@link PrepareOptions} of parsed settings: `--shard i/N` split (without it, this rank's share of an
 * `mpirun` job: rank/ranks of `world`), the storage grouped, '' cache dir off.
 */
export function toPrepareOptions(
  s: PrepareHiddenStatesSettings,
  ctx: PrepareContext,
  world: { rank: number; size: number } = { rank: 0, size: 1 },
): PrepareOptions {
  const [index, count] = (s.shard ?? `${world.rank}/${world.size}`).split("/").map(Number);
  return {
    targetModelPath: s.targetModelPath,
    dataPath: s.dataPath,
    outputPath: s.outputPath,
    chatTemplate: s.chatTemplate,
    maxLength: s.maxLength,
    storage: {
      auxFormat: s.auxFormat,
      groupSize: s.groupSize,
      teacherFormat: s.teacherFormat ?? (s.draftType === "dflash" ? "none" : DEFAULT_STORAGE.teacherFormat),
      topk: s.topk,
    },
    numSamples: s.numSamples,
    batchSize: s.batchSize,
    shard: { index, count },
    auxLayers: s.auxLayers,
    draftModelConfig: s.draftModelConfig,
    draftType: s.draftType as "eagle3" | "dflash",
    targetLayerIds: s.targetLayerIds,
    numDraftLayers: s.numDraftLayers,
    cacheDir: s.cacheDir || null,
    isPreformatted: s.isPreformatted,
    fileGroupSize: s.fileGroupSize,
    deviceMemory: s.deviceMemory === null ? null : parseByteSize(s.deviceMemory),
    targetMemoryBudget: s.targetMemoryBudget === null ? null : parseByteSize(s.targetMemoryBudget),
    hub: ctx.hub,
    log: ctx.log ?? (() => {}),
  };
}

/**
 * The {@link PrepareOptions} of a library caller's settings (camelCase flag names; defaults filled, values
 * checked as the CLI checks them), ready for {@link prepareHiddenStates}.
 */
export function prepareHiddenStatesOptions(
  input: PrepareHiddenStatesInput,
  ctx: PrepareContext,
): PrepareOptions {
  return toPrepareOptions(settingsOf(PREPARE_HIDDEN_STATES_FLAGS, input), ctx);
}
