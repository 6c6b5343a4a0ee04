/**
 * The resolution of a run's settings before its first micro-batch: the target's config, the resume
 * checkpoint and its contract, the draft config and its aux layers, the data (tokenized online, the features'
 * tokens offline), the draft vocabulary, and the draft's frozen embedding. Each step is a function; each
 * error names the setting or the file. Sources: SpecForge `scripts/train_eagle3_online.py` /
 * `train_eagle3_offline.py` (their set-up before the loop).
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { type HubOptions, resolveModelPath } from "../io/hub.ts";
import { SafetensorsCheckpoint, SafetensorsError } from "../io/safetensors.ts";
import { Tensor } from "../tensor.ts";
import { type BuildResult, buildTokenizedDataset } from "../data/build.ts";
import { templates } from "../data/templates.ts";
import { loadTokenizer } from "../data/tokenizer.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import {
  countSupervisedTokens,
  loadVocabMapping,
  selectDraftVocab,
  type VocabMapping,
} from "../data/vocab.ts";
import {
  ConfigError,
  defaultAuxLayers,
  loadTargetConfig,
  resolveWeightNames,
  type TargetConfig,
} from "../models/config.ts";
import {
  checkDraftFitsTarget,
  deriveDraftConfig,
  type DraftConfig,
  loadDraftConfig,
} from "../models/draft_config.ts";
import { type FeatureSet, openFeatureSet } from "../offline/dataset.ts";
import { FeatureFileError, type FeaturesManifest, fileSha256, readManifest } from "../offline/format.ts";
import {
  CheckpointError,
  findIntactCheckpoint,
  findLatestCheckpoint,
  loadCheckpoint,
  type LoadedCheckpoint,
} from "./checkpoint.ts";
import {
  contractSettings,
  describeChange,
  jsonSha256,
  listedNames,
  runChanges,
  type RunFingerprint,
} from "./fingerprint.ts";
import {
  checkMlpSavedDtype,
  DEFAULT_EMBEDDING_KEY,
  RESUME_LATEST_GOOD,
  settingsToJson,
  type TrainSettings,
} from "./config.ts";

/** Prints one note line for the user. */
export type Note = (message: string) => void;

/** Everything a run needs before its first micro-batch. */
export interface RunSetup {
  /** Offline: the feature sets the batches are read from; null online (the target runs on every batch). */
  offline: { train: FeatureSet; eval: FeatureSet | null } | null;
  /** The target's checkpoint directory (resolved from a hub id if need be). */
  targetDir: string;
  /** The target's config.json. */
  targetConfig: TargetConfig;
  /** The draft config, its aux layers filled in. */
  draftConfig: DraftConfig;
  /** The target layers whose hidden states the draft reads. */
  auxLayers: number[];
  /** Training samples. */
  train: TokenizedDataset;
  /** Evaluation samples, null when there are none. */
  eval: TokenizedDataset | null;
  /** The draft ↔ target vocabulary mapping. */
  mapping: VocabMapping;
  /** The checkpoint the run continues from, null for a fresh run. */
  resume: LoadedCheckpoint | null;
  /** Content hashes of the run's inputs, saved in its checkpoints and compared on resume. */
  fingerprint: RunFingerprint;
}

/** Resolves the settings `s` into a {@link RunSetup} (reads configs, data, features and the checkpoint). */
export async function setUpRun(
  s: TrainSettings,
  hub: HubOptions,
  note: Note,
  worldSize = 1,
): Promise<RunSetup> {
  const targetDir = await resolveModelPath(s.targetModelPath, hub);
  const targetConfig = await loadTargetConfig(join(targetDir, "config.json"));
  const resume = await resolveResume(s, note);
  let draftConfig = await resolveDraftConfig(s, targetConfig, note);
  const auxLayers = await resolveAuxLayers(s, draftConfig, targetConfig, note);
  draftConfig = { ...draftConfig, auxLayerIds: [...auxLayers] };
  checkDraftFitsTarget(draftConfig, targetConfig);
  checkMlpSavedDtype(s, draftConfig.intermediateSize);
  const data = s.trainHiddenStatesPath
    ? await openFeatures(s, targetConfig, targetDir, auxLayers, note)
    : await tokenizeData(s, targetDir, note);
  if (data.offline?.train.manifest.storage.teacherFormat === "none") {
    throw new FeatureFileError(
      `${s.trainHiddenStatesPath}: features stored without a teacher (for a DFlash draft); an EAGLE-3 draft ` +
        `needs one (prepare-hidden-states --teacher-format topk or hidden-f32/hidden-bf16)`,
    );
  }
  checkTokenIds(data.train, data.eval, targetConfig);
  const fingerprint: RunFingerprint = {
    ...data.fingerprint,
    target_config: await fileSha256(join(targetDir, "config.json")),
    draft_config: jsonSha256(draftConfig),
  };
  if (resume) checkResumedRun(s, worldSize, resume, fingerprint, note);
  const mapping = await resolveVocab(s, resume, data.train, draftConfig, targetConfig, note);
  return { ...data, targetDir, targetConfig, draftConfig, auxLayers, mapping, resume, fingerprint };
}

/**
 * The checkpoint to continue from: --resume-from's directory, or with --resume the latest in the output
 * directory (an error naming the newest intact one when the latest does not load), or with `--resume-from
 * latest-good` the newest that loads.
 */
async function resolveResume(s: TrainSettings, note: Note): Promise<LoadedCheckpoint | null> {
  if (s.resumeFrom === RESUME_LATEST_GOOD) {
    const good = await findIntactCheckpoint(s.outputDir, note);
    if (!good) {
      throw new CheckpointError(`--resume-from ${RESUME_LATEST_GOOD}: no checkpoint in ${s.outputDir} loads`);
    }
    return good;
  }
  if (s.resumeFrom) return await loadCheckpoint(s.resumeFrom);
  if (!s.resume) return null;
  const dir = await findLatestCheckpoint(s.outputDir);
  if (!dir) {
    note(`--resume: no checkpoint in ${s.outputDir}, starting from scratch`);
    return null;
  }
  try {
    return await loadCheckpoint(dir);
  } catch (e) {
    if (!(e instanceof CheckpointError || e instanceof SafetensorsError)) throw e;
    const good = await findIntactCheckpoint(s.outputDir, () => {}, dir);
    throw new CheckpointError(
      `${e.message}; ` +
        (good
          ? `the newest intact checkpoint is ${good.dir} (continue from it with --resume-from ${RESUME_LATEST_GOOD})`
          : `no other checkpoint in ${s.outputDir} loads`),
    );
  }
}

/**
 * Refuses a resumed run that differs from its checkpoint's in a setting of RESUME_CONTRACT (the global batch:
 * per rank × `worldSize` ranks, so the rank count may change) or a fingerprint item, unless the user named it in --resume-allow-changed (then it is noted); the error names every change.
 */
function checkResumedRun(
  s: TrainSettings,
  worldSize: number,
  resume: LoadedCheckpoint,
  fingerprint: RunFingerprint,
  note: Note,
): void {
  const saved = resume.state.fingerprint ?? null;
  if (!saved) note(`${resume.dir} was saved before run fingerprints: its data and configs are not compared`);
  const changes = runChanges(
    contractSettings(resume.state.settings, resume.state.worldSize ?? 1),
    contractSettings(settingsToJson(s), worldSize),
    saved,
    fingerprint,
  );
  const allowed = new Set(listedNames(s.resumeAllowChanged));
  const refused = changes.filter((c) => !allowed.has(c.name));
  for (const c of changes.filter((c) => allowed.has(c.name))) {
    note(`resuming with a changed ${describeChange(c)}, as --resume-allow-changed allows`);
  }
  if (refused.length === 0) return;
  throw new CheckpointError(
    `${resume.dir}: the resumed run differs from the saved one in ${
      refused.map(describeChange).join(", ")
    }; ` +
      `keep them, or name them in --resume-allow-changed ${
        refused.map((c) => c.name).join(",")
      } if you mean it`,
  );
}

/**
 * The draft config: given (--draft-model-config, --draft-vocab-size overriding its vocabulary), or derived
 * from the target (as SpecForge's example configs, e.g. `configs/llama3-8B-eagle3.json`, follow theirs).
 */
async function resolveDraftConfig(s: TrainSettings, target: TargetConfig, note: Note): Promise<DraftConfig> {
  let cfg: DraftConfig;
  if (s.draftModelConfig) {
    cfg = await loadDraftConfig(s.draftModelConfig, s.normOutputSemantics);
    if (s.draftVocabSize !== null && s.draftVocabSize !== cfg.draftVocabSize) {
      note(`--draft-vocab-size ${s.draftVocabSize} overrides the draft config's ${cfg.draftVocabSize}`);
      cfg = { ...cfg, draftVocabSize: s.draftVocabSize };
    }
  } else {
    const eagle31 = s.draftPreset === "eagle3.1-lk";
    cfg = deriveDraftConfig(target, { draftVocabSize: s.draftVocabSize ?? undefined, eagle31 });
    note(
      `no --draft-model-config: derived ${eagle31 ? "an EAGLE-3.1" : "an EAGLE-3"} draft from the target ` +
        `(--draft-preset ${s.draftPreset}; hidden ${cfg.hiddenSize}, ` +
        `intermediate ${cfg.intermediateSize}, heads ${cfg.numHeads}/${cfg.numKvHeads}, ` +
        `draft vocab ${cfg.draftVocabSize})`,
    );
  }
  if (cfg.draftVocabSize > target.vocabSize) {
    throw new ConfigError(
      `draft_vocab_size ${cfg.draftVocabSize} exceeds the target's vocab_size ${target.vocabSize}`,
    );
  }
  return cfg;
}

/** The aux layers: --aux-layers > the draft config's > (offline) the features' > the target's default. */
async function resolveAuxLayers(
  s: TrainSettings,
  draft: DraftConfig,
  target: TargetConfig,
  note: Note,
): Promise<number[]> {
  const captured = s.trainHiddenStatesPath ? (await readManifest(s.trainHiddenStatesPath)).auxLayers : null;
  const chosen = s.auxLayers ?? draft.auxLayerIds ?? captured;
  if (chosen) return chosen;
  const fallback = defaultAuxLayers(target.numLayers);
  if (fallback.message) note(fallback.message);
  return fallback.layers;
}

/** The data of a run and the fingerprint items it determines (data, tokenizer, template). */
export type RunData = Pick<RunSetup, "offline" | "train" | "eval"> & { fingerprint: RunFingerprint };

/** Online data: tokenized with the target's tokenizer and the chat template, through the cache. */
export async function tokenizeData(s: TrainSettings, targetDir: string, note: Note): Promise<RunData> {
  if (!s.trainDataPath) throw new ConfigError("--train-data-path is required for online training");
  const template = templates.get(s.chatTemplate);
  const tokenizer = await loadTokenizer(targetDir);
  const build = async (path: string) =>
    checkNotEmpty(
      path,
      await buildTokenizedDataset({
        dataPath: path,
        tokenizer,
        templateName: s.chatTemplate,
        template,
        maxLength: s.maxLength,
        isPreformatted: s.isPreformatted,
        trainOnlyLastTurn: s.trainOnlyLastTurn,
        cacheDir: s.cacheDir,
        log: note,
      }),
    );
  const train = await build(s.trainDataPath);
  const evalSet = s.evalDataPath ? await build(s.evalDataPath) : null;
  const fingerprint: RunFingerprint = {
    train_data: train.inputs.data.sha256,
    tokenizer: jsonSha256(train.inputs.tokenizer),
    chat_template: jsonSha256(train.inputs.template),
  };
  if (evalSet) fingerprint.eval_data = evalSet.inputs.data.sha256;
  return { offline: null, train: train.dataset, eval: evalSet?.dataset ?? null, fingerprint };
}

/** A build that kept no sample is an error naming the file and why its records were dropped. */
function checkNotEmpty(path: string, built: BuildResult): BuildResult {
  const st = built.stats;
  if (st.samples > 0) return built;
  throw new ConfigError(
    `${path}: no sample left to train on (${st.records} records; ${st.droppedUnsupervised} without ` +
      `supervised tokens or of a single token at max_length ${built.inputs.maxLength})`,
  );
}

/**
 * Offline data: the feature directories, checked against the target and the layers the draft reads
 * (`layersFlag` names the flag that chooses them, for the error); tokens and masks from their files.
 */
export async function openFeatures(
  s: TrainSettings,
  targetConfig: TargetConfig,
  targetDir: string,
  auxLayers: number[],
  note: Note,
  layersFlag = "--aux-layers",
): Promise<RunData> {
  const open = async (dir: string) => {
    const set = await openFeatureSet(dir, { maxLength: s.maxLength });
    await checkFeaturesFitTarget(set.manifest, dir, targetConfig, targetDir, auxLayers, layersFlag);
    if (set.missing > 0) {
      note(`${dir}: ${set.missing} of ${set.manifest.data.numSamples} samples have no file`);
    }
    return set;
  };
  const train = await open(s.trainHiddenStatesPath!);
  const evalSet = s.evalHiddenStatesPath ? await open(s.evalHiddenStatesPath) : null;
  const storage = (set: FeatureSet) => JSON.stringify(set.manifest.storage);
  if (evalSet && storage(evalSet) !== storage(train)) {
    throw new FeatureFileError(
      `${s.evalHiddenStatesPath}: stored as ${storage(evalSet)}, the training features as ` +
        `${storage(train)}; prepare both with the same storage flags`,
    );
  }
  if (s.evalDataPath && !evalSet) {
    note("--eval-data-path is not used offline; give --eval-hidden-states-path for evaluation");
  }
  const fingerprint: RunFingerprint = { train_data: tokensSha256(train.dataset) };
  if (evalSet) fingerprint.eval_data = tokensSha256(evalSet.dataset);
  return {
    offline: { train, eval: evalSet },
    train: train.dataset,
    eval: evalSet?.dataset ?? null,
    fingerprint,
  };
}

/** The sha256 of a dataset's samples (offsets, token ids, loss mask): what offline features train on. */
function tokensSha256(d: TokenizedDataset): string {
  const h = createHash("sha256");
  for (const a of [d.offsets, d.inputIds, d.lossMask]) {
    h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  }
  return h.digest("hex");
}

/**
 * Checks that features were captured from this target with the aux layers this run trains with; the error
 * names the features directory and both values.
 */
async function checkFeaturesFitTarget(
  m: FeaturesManifest,
  dir: string,
  cfg: TargetConfig,
  targetDir: string,
  auxLayers: number[],
  layersFlag: string,
): Promise<void> {
  const pairs: Array<[string, unknown, unknown]> = [
    ["hidden_size", m.target.hiddenSize, cfg.hiddenSize],
    ["vocab_size", m.target.vocabSize, cfg.vocabSize],
    ["num_hidden_layers", m.target.numLayers, cfg.numLayers],
  ];
  for (const [key, stored, now] of pairs) {
    if (stored !== now) {
      throw new FeatureFileError(
        `${dir}: features of a target with ${key} ${stored}, but ${targetDir} has ${key} ${now}`,
      );
    }
  }
  if (m.target.configSha256 !== await fileSha256(join(targetDir, "config.json"))) {
    throw new FeatureFileError(
      `${dir}: features were captured from a target whose config.json differs from ${targetDir}'s ` +
        `(captured from ${m.target.path})`,
    );
  }
  if (m.auxLayers.length !== auxLayers.length || m.auxLayers.some((l, i) => l !== auxLayers[i])) {
    throw new FeatureFileError(
      `${dir}: features hold aux layers [${m.auxLayers}], the run trains with [${auxLayers}] ` +
        `(drop ${layersFlag}, or re-run prepare-hidden-states with these layers)`,
    );
  }
}

/** Every token id of the data must be a target token. */
function checkTokenIds(
  train: TokenizedDataset,
  evalSet: TokenizedDataset | null,
  target: TargetConfig,
): void {
  for (const [name, d] of [["train", train], ["eval", evalSet]] as const) {
    if (!d) continue;
    const max = d.inputIds.reduce((m, t) => Math.max(m, t), 0);
    if (max >= target.vocabSize) {
      throw new ConfigError(
        `${name} data has token id ${max}, outside the target's vocab_size ${target.vocabSize}`,
      );
    }
  }
}

/**
 * The draft vocabulary (SpecForge `specforge/data/preprocessing.py` `generate_vocab_mapping_file`): from the
 * resumed checkpoint, a given file, or the supervised-token counts of the training data.
 */
async function resolveVocab(
  s: TrainSettings,
  resume: LoadedCheckpoint | null,
  train: TokenizedDataset,
  draft: DraftConfig,
  target: TargetConfig,
  note: Note,
): Promise<VocabMapping> {
  let mapping: VocabMapping;
  const Vd = draft.draftVocabSize, V = target.vocabSize;
  if (resume) {
    mapping = resume.mapping;
  } else if (s.vocabMappingPath) {
    mapping = await loadVocabMapping(s.vocabMappingPath, { draftVocabSize: Vd, targetVocabSize: V });
  } else {
    const counter = countSupervisedTokens(Array.from({ length: train.length }, (_, i) => train.sample(i)));
    mapping = selectDraftVocab(counter, Vd, V);
    note(
      `draft vocabulary: ${Vd} of ${V} tokens (${counter.distinct} distinct supervised tokens in the data)`,
    );
  }
  if (mapping.draftVocabSize !== Vd || mapping.targetVocabSize !== V) {
    throw new ConfigError(
      `vocab mapping ${mapping.draftVocabSize} → ${mapping.targetVocabSize} does not match draft_vocab_size ${Vd} ` +
        `and the target's vocab_size ${V}`,
    );
  }
  return mapping;
}

/**
 * The draft's frozen embedding when --embedding-key names another tensor than the one the target model uses
 * (then that tensor is read, checked against [V, H] and uploaded as f32); null to share the target's. The
 * default key falls back to the target's own embedding when the checkpoint does not store it (tied models
 * saved with lm_head.weight only).
 */
export async function embeddingOverride(
  gpu: Gpu,
  setup: RunSetup,
  key: string,
  note: Note,
): Promise<Tensor | null> {
  const ckpt = await SafetensorsCheckpoint.open(setup.targetDir);
  try {
    const cfg = setup.targetConfig;
    const names = resolveWeightNames(cfg, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, setup.targetDir);
    if (key === names.embed) return null;
    if (!ckpt.has(key)) {
      if (key === DEFAULT_EMBEDDING_KEY) {
        note(`the target stores no ${key}; the draft embedding is the target's ${names.embed}`);
        return null;
      }
      throw new ConfigError(
        `--embedding-key ${key}: the target checkpoint ${setup.targetDir} has no such tensor`,
      );
    }
    const shape = ckpt.info(key).shape;
    const want = [cfg.vocabSize, setup.draftConfig.hiddenSize];
    if (shape.length !== 2 || shape[0] !== want[0] || shape[1] !== want[1]) {
      throw new ConfigError(
        `--embedding-key ${key}: shape [${shape}], the draft needs [${want}] (vocab_size × hidden_size)`,
      );
    }
    return Tensor.fromArray(gpu, await ckpt.readFloat32(key), shape, "f32", `draft embedding ${key}`);
  } finally {
    ckpt.close();
  }
}
