/**
 * EAGLE-3 training, online and offline (reference/specforge-spec.md §4, SpecForge's `train_eagle3_online.py`
 * and `train_eagle3_offline.py`). Online, the frozen target runs on every micro-batch to produce the draft's
 * inputs on the GPU (aux hidden states, the logits of the draft vocabulary, the full-vocabulary argmax);
 * offline, lib/offline/feeder.ts decodes the same inputs from prepare-hidden-states' files. Then the draft's
 * prebuilt step (lib/models/eagle3.ts) runs the TTT unroll forward and backward into the accumulated
 * gradients, and every `draft_accumulation_steps` micro-batches the optimizer (./optimizer.ts) clips and updates with the learning rate of ./schedule.ts.
 *
 * Counting: `step` is the number of optimizer updates (SpecForge [H]; [M] logs the same numbers). Micro-batches
 * form one stream across epochs, so an accumulation window may span an epoch boundary, as in [C]/[M] where
 * the micro-step counter runs across epochs. The schedule's total is `--total-steps`, else
 * `num_epochs · ceil(batches per epoch / accumulation)` (SpecForge's formula); --max-num-steps stops early
 * without changing it. Log, eval and save intervals count updates.
 *
 * Shapes: batches are padded to their longest sample (§1.6; the loss denominator B·T depends on it), so each
 * distinct (B, T) gets its own target-forward (or feature-decoder) and draft-step programs, built on first use
 * and kept in a small cache. Their output tensors are bound directly as the draft step's inputs: nothing is
 * copied and nothing is read back between micro-batches. Metrics stay in GPU accumulators and are read every
 * log interval (one sync).
 *
 * Safety: a non-finite loss or gradient norm stops the run with {@link TrainingDivergedError} before anything
 * is saved, so the last checkpoint on disk is the last good one. Checked at every log interval and before
 * every save.
 */
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { type HubOptions, resolveModelPath } from "../io/hub.ts";
import { fromFloat32, type RawTensor, SafetensorsCheckpoint, toFloat32 } from "../io/safetensors.ts";
import { Tensor } from "../tensor.ts";
import type { NamedWeight } from "../io/export.ts";
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
import { TargetEnds, type TargetForward, TargetModel } from "../models/target.ts";
import {
  buildEagle3Step,
  draftEmbedding,
  Eagle3Draft,
  type Eagle3Metrics,
  eagle3MetricsFrom,
  type Eagle3Step,
  type Eagle3StepInputs,
} from "../models/eagle3.ts";
import { buildTokenizedDataset } from "../data/build.ts";
import { type Batch, collate, DataLoader, type LoaderPosition } from "../data/loader.ts";
import { templates } from "../data/templates.ts";
import { loadTokenizer } from "../data/tokenizer.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import {
  countSupervisedTokens,
  loadVocabMapping,
  saveVocabMapping,
  selectDraftVocab,
  type VocabMapping,
} from "../data/vocab.ts";
import { AdamWOptimizer } from "./optimizer.ts";
import { lrAt, warmupStepsFor } from "./schedule.ts";
import { settingsToJson, TRAIN_OPTIONS, type TrainSettings } from "./config.ts";
import {
  CHECKPOINT_VERSION,
  CheckpointError,
  findLatestCheckpoint,
  loadCheckpoint,
  type LoadedCheckpoint,
  saveCheckpoint,
  type TrainingState,
} from "./checkpoint.ts";
import { mean, MetricsLog, type MetricsRecord, ProgressPrinter } from "./metrics.ts";
import { renderTrainingPlot } from "./plot.ts";
import { evaluateAcceptance, promptsFromSamples } from "../eval/speculative.ts";
import { type FeatureSet, openFeatureSet, readFeatures } from "../offline/dataset.ts";
import { FeatureFeeder } from "../offline/feeder.ts";
import {
  FeatureFileError,
  type FeatureSample,
  type FeaturesManifest,
  fileSha256,
  readManifest,
} from "../offline/format.ts";

/** The loss or the gradient norm became NaN or infinite; the message names the update. */
export class TrainingDivergedError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "TrainingDivergedError";
}

/** Files a run writes in its output directory besides the checkpoints. */
export const RUN_FILES = {
  metrics: "metrics.jsonl",
  plot: "training_curves.svg",
  vocabMapping: "vocab_mapping.safetensors",
} as const;

/** Optional observers of a run (monitoring, tests). */
export interface TrainHooks {
  /** Called after optimizer update `step` was queued (the draft's tensors hold its result once it runs). */
  afterUpdate?: (step: number, draft: Eagle3Draft) => void | Promise<void>;
}

/** Options of {@link trainOnline}. */
export interface TrainOnlineOptions {
  /** The run's settings, e.g. from {@link parseTrainArgs} (which checks them with {@link checkSettings}). */
  settings: TrainSettings;
  /** How hub ids are resolved and downloaded (from the environment, in the CLI). */
  hub: HubOptions;
  /** Progress output (default: stdout, a bar on a terminal). */
  progress?: ProgressPrinter;
  /** Observers called during the run (none by default). */
  hooks?: TrainHooks;
}

/** What a run did. */
export interface TrainOnlineResult {
  /** Optimizer updates done (including those before a resume). */
  globalStep: number;
  /** The last checkpoint written (also an SGLang directory), null if none. */
  checkpoint: string | null;
  /** The last training record, null when none was logged. */
  lastTrain: MetricsRecord | null;
  /** The last evaluation record, null when no evaluation ran. */
  lastEval: MetricsRecord | null;
  /** The draft config the run trained (derived from the target or loaded). */
  draftConfig: DraftConfig;
  /** The draft ↔ target vocabulary mapping the run used. */
  mapping: VocabMapping;
}

/** SpecForge's default aux layers of an N-layer target, [1, N/2−1, N−4] (SGLang's default capture). */
export function specForgeDefaultAuxLayers(numLayers: number): number[] {
  return [1, Math.floor(numLayers / 2) - 1, numLayers - 4];
}

/** The settings that must not change across a resume (the continuation would not be the same run). */
const RESUME_CONTRACT = [
  "batch_size",
  "draft_accumulation_steps",
  "ttt_length",
  "seed",
  "learning_rate",
  "warmup_ratio",
  "num_epochs",
  "total_steps",
  "max_length",
  "max_grad_norm",
] as const;

/** Everything a run needs before its first step. */
interface Prepared {
  /** Online: the target runs on every batch; offline: features are read from prepare-hidden-states' files. */
  offline: { train: FeatureSet; eval: FeatureSet | null } | null;
  targetDir: string;
  targetConfig: TargetConfig;
  draftConfig: DraftConfig;
  auxLayers: number[];
  train: TokenizedDataset;
  eval: TokenizedDataset | null;
  mapping: VocabMapping;
  resume: LoadedCheckpoint | null;
}

async function prepare(s: TrainSettings, hub: HubOptions, note: (m: string) => void): Promise<Prepared> {
  const targetDir = await resolveModelPath(s.targetModelPath, hub);
  const targetConfig = await loadTargetConfig(join(targetDir, "config.json"));

  let resume: LoadedCheckpoint | null = null;
  if (s.resumeFrom) {
    resume = await loadCheckpoint(s.resumeFrom);
  } else if (s.resume) {
    const dir = await findLatestCheckpoint(s.outputDir);
    if (dir) resume = await loadCheckpoint(dir);
    else note(`--resume: no checkpoint in ${s.outputDir}, starting from scratch`);
  }
  if (resume) {
    const saved = resume.state.settings;
    const now = settingsToJson(s);
    for (const key of RESUME_CONTRACT) {
      if (JSON.stringify(saved[key]) !== JSON.stringify(now[key])) {
        throw new CheckpointError(
          `${resume.dir}: the run was saved with ${key} = ${JSON.stringify(saved[key])}, resumed with ` +
            `${JSON.stringify(now[key])}; a resumed run must keep it`,
        );
      }
    }
  }

  // Draft config: given, or derived from the target (§6.3); the aux layers: flag > config > target default.
  let draftConfig: DraftConfig;
  if (s.draftModelConfig) {
    draftConfig = await loadDraftConfig(s.draftModelConfig);
    if (s.draftVocabSize !== null && s.draftVocabSize !== draftConfig.draftVocabSize) {
      note(
        `--draft-vocab-size ${s.draftVocabSize} overrides the draft config's ${draftConfig.draftVocabSize}`,
      );
      draftConfig = { ...draftConfig, draftVocabSize: s.draftVocabSize };
    }
  } else {
    draftConfig = deriveDraftConfig(targetConfig, { draftVocabSize: s.draftVocabSize ?? undefined });
    note(
      `no --draft-model-config: derived a draft from the target (hidden ${draftConfig.hiddenSize}, ` +
        `intermediate ${draftConfig.intermediateSize}, heads ${draftConfig.numHeads}/${draftConfig.numKvHeads}, ` +
        `draft vocab ${draftConfig.draftVocabSize})`,
    );
  }
  if (draftConfig.draftVocabSize > targetConfig.vocabSize) {
    throw new ConfigError(
      `draft_vocab_size ${draftConfig.draftVocabSize} exceeds the target's vocab_size ${targetConfig.vocabSize}`,
    );
  }
  // Offline, the layers the features were captured from are the default.
  const captured = s.trainHiddenStatesPath ? (await readManifest(s.trainHiddenStatesPath)).auxLayers : null;
  const fallback = defaultAuxLayers(targetConfig.numLayers);
  const auxLayers = s.auxLayers ?? draftConfig.auxLayerIds ?? captured ?? fallback.layers;
  if (!s.auxLayers && !draftConfig.auxLayerIds && !captured && fallback.message) note(fallback.message);
  draftConfig = { ...draftConfig, auxLayerIds: [...auxLayers] };
  checkDraftFitsTarget(draftConfig, targetConfig);

  // Data: online (§1) tokenized with the target's tokenizer and the chat template, through the cache;
  // offline (§5.2) the tokens and masks stored with the features.
  let train: TokenizedDataset, evalSet: TokenizedDataset | null = null;
  let offline: Prepared["offline"] = null;
  if (s.trainHiddenStatesPath) {
    const open = async (dir: string) => {
      const set = await openFeatureSet(dir, { maxLength: s.maxLength });
      await checkFeaturesFitTarget(set.manifest, dir, targetConfig, targetDir, auxLayers);
      if (set.missing > 0) {
        note(`${dir}: ${set.missing} of ${set.manifest.data.numSamples} samples have no file`);
      }
      return set;
    };
    const trainSet = await open(s.trainHiddenStatesPath);
    const evalFeatures = s.evalHiddenStatesPath ? await open(s.evalHiddenStatesPath) : null;
    const storage = (set: FeatureSet) => JSON.stringify(set.manifest.storage);
    if (evalFeatures && storage(evalFeatures) !== storage(trainSet)) {
      throw new FeatureFileError(
        `${s.evalHiddenStatesPath}: stored as ${storage(evalFeatures)}, the training features as ` +
          `${storage(trainSet)}; prepare both with the same storage flags`,
      );
    }
    if (s.evalDataPath && !evalFeatures) {
      note("--eval-data-path is not used offline; give --eval-hidden-states-path for evaluation");
    }
    offline = { train: trainSet, eval: evalFeatures };
    train = trainSet.dataset;
    evalSet = evalFeatures?.dataset ?? null;
  } else {
    if (!s.trainDataPath) throw new ConfigError("--train-data-path is required for online training");
    const template = templates.get(s.chatTemplate);
    const tokenizer = await loadTokenizer(targetDir);
    const build = async (path: string) =>
      (await buildTokenizedDataset({
        dataPath: path,
        tokenizer,
        templateName: s.chatTemplate,
        template,
        maxLength: s.maxLength,
        isPreformatted: s.isPreformatted,
        trainOnlyLastTurn: s.trainOnlyLastTurn,
        cacheDir: s.cacheDir,
        log: note,
      })).dataset;
    train = await build(s.trainDataPath);
    evalSet = s.evalDataPath ? await build(s.evalDataPath) : null;
  }
  for (const [name, d] of [["train", train], ["eval", evalSet]] as const) {
    if (!d) continue;
    const max = d.inputIds.reduce((m, t) => Math.max(m, t), 0);
    if (max >= targetConfig.vocabSize) {
      throw new ConfigError(
        `${name} data has token id ${max}, outside the target's vocab_size ${targetConfig.vocabSize}`,
      );
    }
  }

  // Draft vocabulary (§1.7): from the checkpoint, a given file, or the supervised-token counts.
  let mapping: VocabMapping;
  const Vd = draftConfig.draftVocabSize, V = targetConfig.vocabSize;
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
  return { offline, targetDir, targetConfig, draftConfig, auxLayers, train, eval: evalSet, mapping, resume };
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
  if (!sameIds(m.auxLayers, auxLayers)) {
    throw new FeatureFileError(
      `${dir}: features hold aux layers [${m.auxLayers}], the run trains with [${auxLayers}] ` +
        `(drop --aux-layers, or re-run prepare-hidden-states with these layers)`,
    );
  }
}

/**
 * The programs of one batch shape: what produces the step's inputs (the target forward online, the feature
 * decoder offline) and the draft's train and eval steps bound to them.
 */
interface ShapePrograms {
  key: string;
  batch: number;
  seqLen: number;
  forward: TargetForward | null;
  feeder: FeatureFeeder | null;
  inputs: Partial<Eagle3StepInputs>;
  train: Eagle3Step | null;
  eval: Eagle3Step | null;
  /** Micro-batches run since the step's metrics were last collected. */
  trainRuns: number;
  evalRuns: number;
}

/** Metric sums read from the GPU accumulators, kept on the host until a record is taken. */
class MetricSums {
  readonly sums: Float64Array;
  runs = 0;
  constructor(readonly k: number) {
    this.sums = new Float64Array(k * 4);
  }
  /** Adds the sums of `step`'s accumulators over its `runs` micro-batches (one sync) and zeroes them. */
  async collect(step: Eagle3Step, runs: number): Promise<void> {
    if (runs === 0) return;
    const raw = await step.metrics.readFloat();
    for (let i = 0; i < raw.length; i++) this.sums[i] += raw[i];
    this.runs += runs;
    step.resetMetrics();
  }
  /** The metrics of everything collected since the last take, and a fresh window. */
  take(): Eagle3Metrics {
    const m = eagle3MetricsFrom(this.sums, this.k, this.runs);
    this.sums.fill(0);
    this.runs = 0;
    return m;
  }
  /** Whether every sum (losses included) is finite. */
  finite(): boolean {
    return this.sums.every(Number.isFinite);
  }
}

/** At most this many batch shapes keep their programs (the least recently used is freed). */
const MAX_SHAPES = 4;

/**
 * Runs online training as the settings say: prepares data, draft config and vocabulary, trains with
 * checkpoints, evaluations, metrics and plots in the output directory, and returns what it did.
 */
export function trainOnline(gpu: Gpu, o: TrainOnlineOptions): Promise<TrainOnlineResult> {
  if (o.settings.trainHiddenStatesPath) {
    throw new ConfigError(
      "--train-hidden-states-path is for train-offline (train-online runs the target itself)",
    );
  }
  return train(gpu, o);
}

/**
 * Runs offline training (SpecForge's train_eagle3_offline.py, §5.2): the same step as {@link trainOnline},
 * fed from the features prepare-hidden-states wrote (--train-hidden-states-path, --eval-hidden-states-path)
 * instead of a target forward; only the target's embedding (and its lm_head for hidden-state teachers) is
 * loaded. Files for the next batch are read while the GPU runs the current one.
 */
export function trainOffline(gpu: Gpu, o: TrainOnlineOptions): Promise<TrainOnlineResult> {
  if (!o.settings.trainHiddenStatesPath) {
    throw new ConfigError(
      "train-offline needs --train-hidden-states-path (a prepare-hidden-states directory)",
    );
  }
  return train(gpu, o);
}

async function train(gpu: Gpu, o: TrainOnlineOptions): Promise<TrainOnlineResult> {
  const s = o.settings;
  const progress = o.progress ?? new ProgressPrinter();
  const note = (m: string) => progress.note(m);
  await Deno.mkdir(s.outputDir, { recursive: true });
  const prep = await prepare(s, o.hub, note);
  const K = s.tttLength;
  const B = s.batchSize;
  const accum = s.draftAccumulationSteps;

  const loader = new DataLoader(prep.train, { batchSize: B, shuffle: true, seed: s.seed });
  if (loader.stepsPerEpoch === 0) {
    throw new ConfigError(`${s.trainDataPath}: ${prep.train.length} samples make no full batch of ${B}`);
  }
  const totalSteps = s.totalSteps ?? s.numEpochs * Math.ceil(loader.stepsPerEpoch / accum);
  const warmupSteps = warmupStepsFor(totalSteps, s.warmupRatio);
  const schedule = { base: s.learningRate, warmupSteps, totalSteps };

  const offline = prep.offline;
  const target = offline ? null : await TargetModel.load(gpu, prep.targetDir, {
    auxLayers: sameIds(prep.auxLayers, defaultAuxLayers(prep.targetConfig.numLayers).layers)
      ? undefined
      : prep.auxLayers,
  });
  const ends = offline
    ? await TargetEnds.load(gpu, prep.targetDir, {
      lmHead: offline.train.manifest.storage.teacherFormat !== "topk",
    })
    : null;
  const ownedEmbedding = await embeddingOverride(gpu, prep, s.embeddingKey, note);
  const embedding = ownedEmbedding ?? draftEmbedding((target ?? ends!).embed);
  if (offline && s.evalSpecSamples > 0) {
    note(
      "--eval-spec-samples: offline training has no target forward; tau is not measured (use deno task eval)",
    );
  }
  const draft = Eagle3Draft.create(gpu, prep.draftConfig, { seed: s.seed });
  const optimizer = await AdamWOptimizer.create(
    gpu,
    draft.entries().map(([name, param, grad]) => ({ name, param, grad })),
    { maxGradNorm: s.maxGradNorm },
  );
  const shapes = new Map<string, ShapePrograms>();
  const trainSums = new MetricSums(K);
  let metricsLog: MetricsLog | null = null;

  try {
    let globalStep = 0, microSteps = 0, elapsedBefore = 0;
    let position: LoaderPosition = { epoch: 0, step: 0 };
    if (prep.resume) {
      const r = prep.resume;
      const weights = new Map<string, Float32Array>();
      for (const [name, t] of r.weights) weights.set(name, toFloat32(t, `${r.dir} ${name}`));
      draft.setWeights(weights);
      optimizer.loadState(r.optimizer, r.state.globalStep, r.dir);
      ({ globalStep, microSteps, position } = r.state);
      elapsedBefore = r.state.elapsed;
      note(`resumed from ${r.dir}: update ${globalStep}, epoch ${position.epoch}, batch ${position.step}`);
    }
    await saveVocabMapping(join(s.outputDir, RUN_FILES.vocabMapping), prep.mapping);
    metricsLog = await MetricsLog.open(join(s.outputDir, RUN_FILES.metrics), prep.resume ? globalStep : null);
    const log = metricsLog;
    note(
      `training: ${prep.train.length} samples, ${loader.stepsPerEpoch} batches of ${B} per epoch, ` +
        `${s.numEpochs} epochs, ${totalSteps} updates (warmup ${warmupSteps}), ttt ${K}, aux layers [${prep.auxLayers}]`,
    );

    const programs = async (b: number, t: number): Promise<ShapePrograms> => {
      const key = `${b}x${t}`;
      let e = shapes.get(key);
      if (e) {
        shapes.delete(key);
        shapes.set(key, e); // most recently used last
        return e;
      }
      if (shapes.size >= MAX_SHAPES) {
        const [oldKey, old] = shapes.entries().next().value!;
        if (old.train) await trainSums.collect(old.train, old.trainRuns);
        old.train?.destroy();
        old.eval?.destroy();
        old.forward?.destroy();
        old.feeder?.destroy();
        shapes.delete(oldKey);
      }
      let forward: TargetForward | null = null, feeder: FeatureFeeder | null = null;
      let inputs: Partial<Eagle3StepInputs>;
      if (target) {
        forward = await target.forward(b, t, {
          aux: true,
          subsetIds: prep.mapping.draftToTarget,
          vocabStats: true,
        });
        inputs = {
          aux: forward.aux!,
          ids: forward.ids,
          lengths: forward.lengths,
          teacherLogits: forward.subsetLogits!,
          teacherArgmax: forward.vocabArgmax!,
        };
      } else {
        const m = offline!.train.manifest;
        feeder = await FeatureFeeder.create(
          gpu,
          m,
          b,
          t,
          prep.mapping.draftToTarget,
          ends!.lmHeadOrNull ? ends : null,
        );
        inputs = feeder.inputs;
      }
      e = {
        key,
        batch: b,
        seqLen: t,
        forward,
        feeder,
        inputs,
        train: null,
        eval: null,
        trainRuns: 0,
        evalRuns: 0,
      };
      shapes.set(key, e);
      return e;
    };
    const stepFor = async (e: ShapePrograms, train: boolean): Promise<Eagle3Step> => {
      const existing = train ? e.train : e.eval;
      if (existing) return existing;
      const step = await buildEagle3Step(draft, {
        batch: e.batch,
        seqLen: e.seqLen,
        tttLength: K,
        embedding,
        vocab: prep.mapping,
        train,
        accumulationSteps: accum,
        inputs: e.inputs,
      });
      if (train) e.train = step;
      else e.eval = step;
      return step;
    };
    /** Runs one micro-batch (offline: with its samples' features); returns its tokens. */
    const runBatch = async (
      batch: Batch,
      train: boolean,
      features: FeatureSample[] | null,
    ): Promise<number> => {
      const e = await programs(batch.batchSize, batch.seqLen);
      const step = await stepFor(e, train);
      let lengths: number[];
      if (e.forward) {
        lengths = [];
        for (let r = 0; r < batch.batchSize; r++) {
          let n = 0;
          for (let t = 0; t < batch.seqLen; t++) n += batch.attentionMask[r * batch.seqLen + t];
          lengths.push(n);
        }
        e.forward.run(batch.inputIds as Int32Array<ArrayBuffer>, lengths);
      } else {
        lengths = e.feeder!.feed(features!);
      }
      step.lossMask.write(supervisedMask(batch.lossMask, lengths, batch.seqLen));
      step.run();
      if (train) e.trainRuns++;
      else e.evalRuns++;
      return lengths.reduce((a, b) => a + b, 0);
    };
    const collectTrain = async () => {
      for (const e of shapes.values()) {
        if (e.train) await trainSums.collect(e.train, e.trainRuns);
        e.trainRuns = 0;
      }
    };
    /** Stops the run when the loss since the last log, or the last gradient norm, is not finite. */
    const checkFinite = async (when: string) => {
      await collectTrain();
      const norm = globalStep > 0 ? await optimizer.lastGradNorm() : 0;
      const bad = !trainSums.finite()
        ? "the loss is NaN or infinite"
        : !Number.isFinite(norm)
        ? `the gradient norm is ${norm}`
        : null;
      if (bad) {
        throw new TrainingDivergedError(
          `${bad} by update ${globalStep} (${when}); stopping. ` +
            (lastCheckpoint
              ? `The last good checkpoint is ${lastCheckpoint}.`
              : "No checkpoint was written."),
        );
      }
    };

    let lastCheckpoint: string | null = prep.resume?.dir ?? null;
    let lastTrain: MetricsRecord | null = null, lastEval: MetricsRecord | null = null;
    let lastEpoch = position.epoch;
    const t0 = performance.now();
    const elapsed = () => elapsedBefore + (performance.now() - t0) / 1000;
    let windowStart = performance.now(), windowTokens = 0;
    const startStep = globalStep;

    // Real (greedy, chain) speculative decoding with the live draft on the first eval prompts: the
    // acceptance length a server would see, next to the simulated one from acc_k.
    const measureTau = async (target: TargetModel, evalSet: TokenizedDataset): Promise<number> => {
      const samples = Array.from(
        { length: Math.min(s.evalSpecSamples, evalSet.length) },
        (_, i) => evalSet.sample(i),
      );
      const prompts = promptsFromSamples(samples, Math.max(1, s.maxLength - s.evalSpecNewTokens));
      const stats = await evaluateAcceptance(target, draft, prompts, {
        numSteps: s.evalSpecSteps,
        topk: 1,
        maxNewTokens: s.evalSpecNewTokens,
        draftToTarget: prep.mapping.draftToTarget,
        seed: s.seed,
      });
      return stats.tau;
    };
    const evaluate = async (): Promise<void> => {
      if (!prep.eval) return;
      const sums = new MetricSums(K);
      const n = prep.eval.length;
      let batches = 0;
      for (let i = 0; i < n; i += B) {
        if (s.evalBatches !== null && batches >= s.evalBatches) break;
        const idx = Int32Array.from({ length: Math.min(B, n - i) }, (_, j) => i + j);
        const features = offline ? await readFeatures(offline.eval!, idx) : null;
        await runBatch(collate(prep.eval, idx), false, features);
        batches++;
      }
      for (const e of shapes.values()) {
        if (e.eval) await sums.collect(e.eval, e.evalRuns);
        e.evalRuns = 0;
      }
      const m = sums.take();
      lastEval = recordOf("eval", m, globalStep, lastEpoch, elapsed());
      if (s.evalSpecSamples > 0 && target) lastEval.tau = await measureTau(target, prep.eval);
      await log.append(lastEval);
      note(
        `eval @ update ${globalStep}: loss ${lastEval.loss.toFixed(4)} ` +
          `acc ${m.acc.map((a) => a.toFixed(3)).join(" ")} simulated acc len ${
            m.simulatedAcceptLength.toFixed(3)
          }` + (lastEval.tau === undefined ? "" : ` tau ${lastEval.tau.toFixed(3)}`),
      );
    };
    const writePlot = async () => {
      await writeFileAtomic(
        join(s.outputDir, RUN_FILES.plot),
        renderTrainingPlot(log.records, `EAGLE-3 draft of ${s.targetModelPath}`),
      );
    };
    const save = async (): Promise<void> => {
      await checkFinite(`before saving update ${globalStep}`);
      const weights = await draft.getWeights();
      const shapesByName = new Map<string, number[]>(
        draft.entries().map(([name, p]) => [name, [...p.shape]]),
      );
      const raw = new Map<string, RawTensor>();
      const named = new Map<string, NamedWeight>();
      for (const [name, w] of weights) {
        raw.set(name, fromFloat32(w, shapesByName.get(name)!));
        named.set(name, { values: w, shape: shapesByName.get(name)! });
      }
      const state: TrainingState = {
        version: CHECKPOINT_VERSION,
        globalStep,
        microSteps,
        position,
        totalSteps,
        warmupSteps,
        rng: { seed: s.seed },
        settings: settingsToJson(s),
        elapsed: elapsed(),
      };
      lastCheckpoint = await saveCheckpoint(s.outputDir, lastEpoch, {
        state,
        weights: raw,
        optimizer: await optimizer.stateTensors(),
        export: {
          config: prep.draftConfig,
          weights: named,
          mapping: prep.mapping,
          defaultAuxLayers: specForgeDefaultAuxLayers(prep.targetConfig.numLayers),
        },
        exportDtype: s.exportDtype,
      });
      note(`saved ${lastCheckpoint}`);
    };

    const limit = Math.min(totalSteps, s.maxNumSteps ?? Infinity);
    let savedAt = prep.resume ? globalStep : -1, evaluatedAt = -1;
    if (globalStep === 0) optimizer.zeroGrads();
    training: while (position.epoch < s.numEpochs && globalStep < limit) {
      const batches = loader.batches(position.epoch, position.step);
      const load = offline ? (b: Batch) => readFeatures(offline.train, b.sampleIndices) : null;
      for await (const [batch, features] of withLookahead(batches, load)) {
        lastEpoch = position.epoch;
        windowTokens += await runBatch(batch, true, features);
        microSteps++;
        position = loader.next(position);
        if (microSteps % accum !== 0) continue;
        globalStep++;
        const lr = lrAt(globalStep, schedule);
        optimizer.update(lr);
        await o.hooks?.afterUpdate?.(globalStep, draft);
        if (globalStep % s.logInterval === 0 || globalStep === limit) {
          await checkFinite(`at the log of update ${globalStep}`);
          const m = trainSums.take();
          const now = performance.now();
          const secs = (now - windowStart) / 1000;
          lastTrain = {
            ...recordOf("train", m, globalStep, lastEpoch, elapsed()),
            lr,
            gradNorm: await optimizer.lastGradNorm(),
            tokensPerSec: windowTokens / Math.max(secs, 1e-9),
          };
          await log.append(lastTrain);
          const perUpdate = (elapsed() - elapsedBefore) / Math.max(1, globalStep - startStep);
          progress.show({
            step: globalStep,
            totalSteps: limit,
            epoch: lastEpoch,
            loss: lastTrain.loss,
            acc: mean(m.acc),
            tokensPerSec: lastTrain.tokensPerSec!,
            lr,
            eta: perUpdate * (limit - globalStep),
          });
          windowStart = performance.now();
          windowTokens = 0;
        }
        if (s.evalInterval > 0 && globalStep % s.evalInterval === 0) {
          await evaluate();
          evaluatedAt = globalStep;
          await writePlot();
        }
        if (s.saveInterval > 0 && globalStep % s.saveInterval === 0) {
          await save();
          savedAt = globalStep;
        }
        if (globalStep >= limit) break training;
      }
    }
    progress.done();
    if (globalStep > 0 && savedAt !== globalStep) await save();
    if (evaluatedAt !== globalStep) await evaluate();
    await writePlot();
    return {
      globalStep,
      checkpoint: lastCheckpoint,
      lastTrain,
      lastEval,
      draftConfig: prep.draftConfig,
      mapping: prep.mapping,
    };
  } finally {
    progress.done();
    metricsLog?.close();
    for (const e of shapes.values()) {
      e.train?.destroy();
      e.eval?.destroy();
      e.forward?.destroy();
      e.feeder?.destroy();
    }
    optimizer.destroy();
    draft.destroy();
    ownedEmbedding?.destroy();
    target?.destroy();
    ends?.destroy();
  }
}

/**
 * The draft's frozen embedding when --embedding-key names another tensor than the one the target model uses
 * (then that tensor is read, checked against [V, H] and uploaded as f32); null to share the target's. The
 * default key falls back to the target's own embedding when the checkpoint does not store it (tied models
 * saved with lm_head.weight only).
 */
async function embeddingOverride(
  gpu: Gpu,
  prep: Prepared,
  key: string,
  note: (m: string) => void,
): Promise<Tensor | null> {
  const ckpt = await SafetensorsCheckpoint.open(prep.targetDir);
  try {
    const cfg = prep.targetConfig;
    const names = resolveWeightNames(cfg, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, prep.targetDir);
    if (key === names.embed) return null;
    if (!ckpt.has(key)) {
      if (key === TRAIN_OPTIONS["embedding-key"].default) {
        note(`the target stores no ${key}; the draft embedding is the target's ${names.embed}`);
        return null;
      }
      throw new ConfigError(
        `--embedding-key ${key}: the target checkpoint ${prep.targetDir} has no such tensor`,
      );
    }
    const shape = ckpt.info(key).shape;
    const want = [cfg.vocabSize, prep.draftConfig.hiddenSize];
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

/**
 * The loss mask the step gets: the data's, with each sample's last token unsupervised. That token has no next
 * token inside the sample, so its teacher would be the target's prediction at a padding position (or the
 * zero-filled row past the batch). SpecForge's offline loader does the same (`loss_mask[-1] = 0`, §5.2); its
 * online path trains that row against the padding; Eaglet follows the offline rule in both modes, which also
 * makes online and offline training identical.
 */
export function supervisedMask(
  lossMask: ArrayLike<number>,
  lengths: number[],
  seqLen: number,
): Float32Array<ArrayBuffer> {
  const out = Float32Array.from(lossMask);
  lengths.forEach((len, b) => {
    if (len > 0) out[b * seqLen + len - 1] = 0;
  });
  return out;
}

/**
 * The batches with what `load` returns for each, the next batch's load started before the current one is
 * handed out (so reading files overlaps with the GPU work of the current batch); null loads when `load` is.
 */
async function* withLookahead<T>(
  batches: Iterable<Batch>,
  load: ((b: Batch) => Promise<T>) | null,
): AsyncGenerator<[Batch, T | null]> {
  const it = batches[Symbol.iterator]();
  let cur = it.next();
  let pending = load && !cur.done ? load(cur.value) : null;
  while (!cur.done) {
    const next = it.next();
    const nextPending = load && !next.done ? load(next.value) : null;
    nextPending?.catch(() => {}); // awaited on the next round; a consumer that stops early drops it
    yield [cur.value, pending ? await pending : null];
    cur = next;
    pending = nextPending;
  }
}

function sameIds(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function recordOf(
  split: "train" | "eval",
  m: Eagle3Metrics,
  step: number,
  epoch: number,
  elapsed: number,
): MetricsRecord {
  return { split, step, epoch, loss: mean(m.ploss), ploss: m.ploss, acc: m.acc, elapsed };
}
