/**
 * Eaglet: train EAGLE-3 speculative-decoding draft models with WebGPU, from TypeScript on Deno.
 *
 * This module is the public API; everything else in the repository is internal.
 *
 * ```ts
 * import { Gpu, TargetModel, generate } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const target = await TargetModel.load(gpu, "../shared/models/tinystories-656K");
 * const [ids] = await generate(target, [[1]], { maxNewTokens: 32 });
 * ```
 *
 * @module
 */

// Flags: one declaration per flag, parsed into typed settings (every task's flags are built on it).
export {
  camelCase,
  FlagError,
  flagHelp,
  flagMarkdown,
  parseCommand,
  parseValue,
  readArgs,
  resolveSettings,
  settingsOf,
} from "./lib/flags.ts";
export type {
  AlwaysSet,
  BoolFlag,
  Bounds,
  CamelCase,
  ChoiceFlag,
  Command,
  FlagBase,
  FlagKind,
  FlagSpec,
  FlagTable,
  FlagValue,
  FloatFlag,
  IntFlag,
  IntListFlag,
  KindValue,
  ReadArgs,
  RequiredNames,
  Settings,
  SettingsInput,
  StringFlag,
  StringListFlag,
} from "./lib/flags.ts";

// Engine: device, tensors, programs and the ops that record into them.
export { align, Gpu, isCpuAdapter, NO_ADAPTER_HINT } from "./lib/gpu/device.ts";
export type { GpuFeatures, GpuLimits, GpuOptions } from "./lib/gpu/device.ts";
export {
  GpuDeviceLostError,
  GpuOutOfMemoryError,
  GpuUnavailableError,
  GpuValidationError,
  LimitError,
  ShapeError,
} from "./lib/gpu/errors.ts";
export type { KernelSpec } from "./lib/gpu/kernel.ts";
export { foldGrid, Params, params, Program, runOnce } from "./lib/gpu/program.ts";
export type { Binding, Dispatch, ParamKind } from "./lib/gpu/program.ts";
export { TextureContents } from "./lib/gpu/texture_contents.ts";
export type { BufferRange } from "./lib/gpu/texture_contents.ts";
export { DTYPE_BYTES, f32ToBf16Bits, numel, roundBf16, shapeString, Tensor } from "./lib/tensor.ts";
export type { DType, HostArray, ReadArray } from "./lib/tensor.ts";
/** Elementwise ops: add, mul, axpby, scale, fill, addBias, accumulate, strided copies. */
export * as elementwise from "./lib/ops/elementwise.ts";
/** Matrix products: matmul (any transposes, batched), linear and its backward. */
export * as matmul from "./lib/ops/matmul.ts";
/** The matmul tile autotune of CPU adapters (what `--matmul-autotune` turns on): enableMatmulAutotune(gpu). */
export * as matmulAutotune from "./lib/ops/matmul_autotune.ts";
/** Attention with GQA, causal and padding masks, KV-cache offsets and the EAGLE-3 TTT layout. */
export * as attention from "./lib/ops/attention.ts";
/** RMSNorm forward and backward. */
export * as rmsnorm from "./lib/ops/rmsnorm.ts";
/** Rotary embeddings (default, linear, dynamic NTK, llama3, yarn). */
export * as rope from "./lib/ops/rope.ts";
/** SwiGLU forward and backward. */
export * as swiglu from "./lib/ops/swiglu.ts";
/** The gated MLP's input side with its activation fused into the matmul (gate, up, SwiGLU; and backward). */
export * as gatedMlp from "./lib/ops/gated_mlp.ts";
/** Embedding lookup and its deterministic gradient. */
export * as embedding from "./lib/ops/embedding.ts";
/** Softmax and log-softmax forward and backward. */
export * as softmax from "./lib/ops/softmax.ts";
/** The masked soft cross-entropy of EAGLE-3 and the accuracy counts. */
export * as loss from "./lib/ops/loss.ts";
/** argmax, sums, means and the global gradient norm. */
export * as reduce from "./lib/ops/reduce.ts";
/** The AdamW update with global-norm clipping on the GPU. */
export * as adamw from "./lib/ops/adamw.ts";
/** dtype conversions (f32, f16, bf16). */
export * as convert from "./lib/ops/convert.ts";

// Models.
export {
  ForwardTensors,
  recordHeadOutputs,
  TargetEnds,
  TargetForward,
  TargetModel,
} from "./lib/models/target.ts";
export type { HeadOutputs, HeadSource, TargetLoadOptions, TargetOutputs } from "./lib/models/target.ts";
export { StreamedForward, StreamedTarget } from "./lib/models/target_stream.ts";
export type { StreamedTargetOptions } from "./lib/models/target_stream.ts";
export { generate, Generator } from "./lib/models/generate.ts";
export type { GenerateOptions } from "./lib/models/generate.ts";
export {
  defaultAuxLayers,
  loadTargetConfig,
  parseTargetConfig,
  specForgeDefaultAuxLayers,
  SUPPORTED_ARCHITECTURES,
} from "./lib/models/config.ts";
export type {
  GemmaConventions,
  Llama4Conventions,
  MlaConfig,
  MoeConfig,
  RopeScaling,
  TargetConfig,
} from "./lib/models/config.ts";
export {
  deriveDraftConfig,
  draftConfigJson,
  loadDraftConfig,
  parseDraftConfig,
} from "./lib/models/draft_config.ts";
export type { DraftConfig, NormOutputMeaning } from "./lib/models/draft_config.ts";
export { checkFiniteFile, checkFiniteWeights, NonFiniteWeightError } from "./lib/models/finite_weights.ts";
export type { LoadedWeight } from "./lib/models/finite_weights.ts";
export { buildEagle3Step, EAGLE3_PARAM_NAMES, Eagle3Draft, Eagle3Step } from "./lib/models/eagle3.ts";
export type { Eagle3StepInputs, Eagle3StepOptions, TeacherSource } from "./lib/models/eagle3.ts";
export { FC_NORM_PARAM_NAMES } from "./lib/models/eagle3.ts";
export type { Eagle3CoreParamName, PerEagle3Param } from "./lib/models/eagle3.ts";
export type {
  Eagle3FcActivations,
  Eagle3FcGrads,
  Eagle3HeadActivations,
  Eagle3LayerActivations,
  Eagle3LayerGrads,
} from "./lib/models/eagle3_layer.ts";
export type { TttAttentionGrads, TttAttentionTensors, TttShape } from "./lib/models/eagle3_ttt_attention.ts";
export type { LkLossOptions, LkLossType } from "./lib/ops/lk_loss.ts";
export type { MlpSavedDtype } from "./lib/ops/gated_mlp.ts";
export { eagle3ActivationBytes } from "./lib/models/eagle3_activations.ts";
export type {
  Eagle3Activations,
  Eagle3StepGrads,
  Eagle3StepShape,
  TeacherRows,
} from "./lib/models/eagle3_activations.ts";
export type { Eagle3Metrics } from "./lib/models/eagle3_metrics.ts";
export { convertLlama2c } from "./lib/models/llama2c.ts";

// Checkpoints and the hub.
export { SafetensorsCheckpoint, SafetensorsFile, writeSafetensors } from "./lib/io/safetensors.ts";
export type { RawTensor, SafetensorsDtype } from "./lib/io/safetensors.ts";
export { downloadModel, hubOptionsFromEnv, resolveHubFile, resolveModelPath } from "./lib/io/hub.ts";
export type { HubOptions } from "./lib/io/hub.ts";

// Data.
export { TemplateRegistry, templates } from "./lib/data/templates.ts";
export type { ChatTemplate } from "./lib/data/templates.ts";
export { loadTokenizer } from "./lib/data/tokenizer.ts";
export type { ChatTokenizer } from "./lib/data/tokenizer.ts";
export { preprocessConversation } from "./lib/data/preprocess.ts";
export { convertDataset } from "./lib/data/datasets.ts";
export { buildTokenizedDataset } from "./lib/data/build.ts";
export { PREPARE_DATA_FLAGS, prepareData, prepareDataSettings } from "./lib/data/prepare.ts";
export type { PrepareDataContext, PrepareDataInput, PrepareDataSettings } from "./lib/data/prepare.ts";
export {
  countSupervisedTokens,
  loadVocabMapping,
  saveVocabMapping,
  selectDraftVocab,
} from "./lib/data/vocab.ts";
export type { VocabMapping } from "./lib/data/vocab.ts";
export { DataLoader } from "./lib/data/loader.ts";

// Training.
export {
  checkSettings,
  DEFAULT_EMBEDDING_KEY,
  parseTrainArgs,
  readYamlSettings,
  settingsToJson,
  TRAIN_FLAGS,
  TRAIN_OPTIONS,
  TrainConfigError,
  trainSettings,
  trainUsage,
} from "./lib/train/config.ts";
export type {
  ParsedTrainArgs,
  TrainOptionName,
  TrainSettings,
  TrainSettingsInput,
} from "./lib/train/config.ts";
export {
  planTrainingRun,
  RUN_FILES,
  supervisedMask,
  TrainingDivergedError,
  trainOffline,
  trainOnline,
} from "./lib/train/trainer.ts";
export type { TrainHooks, TrainOptions, TrainResult } from "./lib/train/trainer.ts";

// DFlash drafts: block-parallel drafting (config, parameters, the training step, export, decoding).
export { trainDflashOnline } from "./lib/train/dflash_trainer.ts";
export type { DflashTrainResult } from "./lib/train/dflash_trainer.ts";
export type { DflashRunResult } from "./lib/train/dflash_run.ts";
export {
  checkDflashConfig,
  deriveDflashConfig,
  dflashConfigJson,
  dflashTargetLayerIds,
  parseDflashConfig,
} from "./lib/models/dflash_config.ts";
export type { DeriveDflashOptions, DflashConfig, DflashLayerType } from "./lib/models/dflash_config.ts";
export { DflashDraft, dflashParamShapes, initDflashWeights } from "./lib/models/dflash.ts";
export type { DflashWeights } from "./lib/models/dflash.ts";
export { DflashStep } from "./lib/models/dflash_step.ts";
export type { DflashStepInputs, DflashStepOptions } from "./lib/models/dflash_step.ts";
export { dflashBlockInputs, dflashDecayedWeights, sampleDflashAnchors } from "./lib/models/dflash_blocks.ts";
export type { DflashBlockInputs } from "./lib/models/dflash_blocks.ts";
export { loadDflashExport, writeDflashExport } from "./lib/models/dflash_export.ts";
export { DflashDecoder } from "./lib/eval/dflash_speculative.ts";
/** DFlash's attention: block queries over two key ranges (the context before the anchor, the block). */
export * as dflashAttention from "./lib/ops/dflash_attention.ts";
export type { DflashAttentionDims, DflashBlocks } from "./lib/ops/dflash_attention.ts";
/** DFlash's objective: cross-entropy rows, D-PACE weights, the loss gradient, per-slot metric sums. */
export * as dflashLoss from "./lib/ops/dflash_loss.ts";
export { DFLASH_LOSS_TYPES } from "./lib/ops/dflash_loss.ts";
export type { DflashLossType } from "./lib/ops/dflash_loss.ts";
export type { RopeConfig } from "./lib/ops/rope.ts";
export type { SpeculativeGenerator } from "./lib/eval/speculative.ts";

// Memory plans: what a run will hold on its device, before it loads anything.
export { checkPlanFits, formatPlan, PLAN_CATEGORIES } from "./lib/models/memory_plan.ts";
export type { MemoryPlan, PlanCategory, PlanCategoryKey, PlanLimits } from "./lib/models/memory_plan.ts";
export type { PlannedTensor } from "./lib/models/target_memory.ts";
export { deviceMemory, formatBytes, parseByteSize } from "./lib/gpu/device_memory.ts";
export type { DeviceMemory } from "./lib/gpu/device_memory.ts";

// Offline mode: features prepared once, stored compactly, trained from disk.
export {
  AUX_FORMATS,
  bytesPerToken,
  encodeSample,
  FeatureFileError,
  FEATURES_MANIFEST,
  readManifest,
  readSampleFile,
  sampleFilePath,
  specForgeBytesPerToken,
  TEACHER_FORMATS,
} from "./lib/offline/format.ts";
export type {
  AuxFormat,
  CapturedSample,
  FeatureSample,
  FeaturesManifest,
  FeatureStorage,
  TeacherFormat,
} from "./lib/offline/format.ts";
export { dequantizeGroupsHost, quantizeGroups } from "./lib/offline/quantize.ts";
export type { QuantBits, QuantizedGroups, QuantOptions } from "./lib/offline/quantize.ts";
export { DEFAULT_STORAGE, planPrepare, prepareHiddenStates } from "./lib/offline/prepare.ts";
export type { PrepareOptions, PrepareResult } from "./lib/offline/prepare.ts";
export {
  PREPARE_HIDDEN_STATES_FLAGS,
  prepareHiddenStatesOptions,
  toPrepareOptions,
} from "./lib/offline/settings.ts";
export type {
  PrepareContext,
  PrepareHiddenStatesInput,
  PrepareHiddenStatesSettings,
} from "./lib/offline/settings.ts";
export { openFeatureSet, readFeatures } from "./lib/offline/dataset.ts";
export type { FeatureSet } from "./lib/offline/dataset.ts";
export { FeatureFeeder } from "./lib/offline/feeder.ts";
export {
  formatDuration,
  formatProgress,
  MetricsLog,
  ProgressPrinter,
  simulatedAcceptanceLength,
} from "./lib/train/metrics.ts";
export type { MetricsRecord, ProgressState } from "./lib/train/metrics.ts";
export { renderTrainingPlot } from "./lib/train/plot.ts";
export { selfDistilledSamples, writeJsonl } from "./lib/train/selfdistill.ts";
export type { SelfDistilledSample, SelfDistillOptions } from "./lib/train/selfdistill.ts";
export {
  CheckpointError,
  exportCheckpoint,
  findIntactCheckpoint,
  findLatestCheckpoint,
  listCheckpoints,
  loadCheckpoint,
} from "./lib/train/checkpoint.ts";
export { FINGERPRINT_ITEMS, RESUME_CONTRACT, runChanges } from "./lib/train/fingerprint.ts";
export type { FingerprintItem, RunChange, RunFingerprint } from "./lib/train/fingerprint.ts";
export type { LoadedCheckpoint, TrainingState } from "./lib/train/checkpoint.ts";

// Data-parallel ranks (Open MPI's mpirun).
export { DistError, MpiWorld, SINGLE_PROCESS, worldFromEnv } from "./lib/dist/world.ts";
export type { World } from "./lib/dist/world.ts";

// Export for SGLang.
export { checkDraftExport, exportDraft, ExportError } from "./lib/models/export.ts";
export type {
  CheckedExport,
  DraftExport,
  ExportDtype,
  ExportFormat,
  ExportOptions,
  NamedWeight,
} from "./lib/models/export.ts";
export { checkSpeculatorsExport } from "./lib/models/export_speculators.ts";
export type { SpeculatorsOptions, SpeculatorsVerifier } from "./lib/models/export_speculators.ts";

// Evaluation by speculative decoding.
export {
  acceptanceStats,
  evaluateAcceptance,
  promptsFromSamples,
  resolveSpeculativeConfig,
  runSpeculativeEval,
  SpeculativeDecoder,
} from "./lib/eval/speculative.ts";
export type {
  AcceptanceStats,
  EvaluateAcceptanceOptions,
  ResolvedSpeculativeConfig,
  RoundRecord,
  SampleResult,
  SpeculativeConfig,
  SpeculativeEvalOptions,
  SpeculativeEvalResult,
  SpeculativeGenerateOptions,
  SpeculativeOutput,
} from "./lib/eval/speculative.ts";
export { loadDraftDirectory } from "./lib/eval/draft_dir.ts";
export type { LoadedDraft } from "./lib/eval/draft_dir.ts";
export { evalSummary, writeEvalReport } from "./lib/eval/report.ts";
export type { EvalReportFiles } from "./lib/eval/report.ts";
export { EVAL_FLAGS, evalSettings } from "./lib/eval/settings.ts";
export type { EvalSettings, EvalSettingsInput } from "./lib/eval/settings.ts";
export { evaluateDraft, readPrompts } from "./lib/eval/evaluate.ts";
export type { EvalContext, EvaluatedDraft } from "./lib/eval/evaluate.ts";

// Types the API above refers to.
export { OPTIONAL_FEATURES } from "./lib/gpu/device.ts";
export { BufferPool } from "./lib/gpu/buffers.ts";
export { PipelineCache } from "./lib/gpu/kernel.ts";
export type { AuxLayerChoice, TargetArchitecture } from "./lib/models/config.ts";
export type {
  DeriveDraftOptions,
  DraftConfigJsonOptions,
  Json as JsonObject,
} from "./lib/models/draft_config.ts";
export type { Eagle3ParamName, Eagle3Weights } from "./lib/models/eagle3.ts";
export type { RopeTables, RowSplitMatrix, TargetLayerWeights } from "./lib/models/target.ts";
/** A sparse MoE block's weights and routing (a target's Qwen3-MoE / Qwen2-MoE layers). */
export type { DenseMlpWeights, ExpertBlock, MoeShape, MoeWeights } from "./lib/ops/moe.ts";
export type { Llama2cConversion } from "./lib/models/llama2c.ts";
export { SAFETENSORS_DTYPES } from "./lib/io/safetensors.ts";
export type { TensorInfo } from "./lib/io/safetensors.ts";
export type { DownloadProgress, RepoType } from "./lib/io/hub.ts";
export type { BuildOptions, BuildResult, BuildStats } from "./lib/data/build.ts";
export type { CacheKeyInputs } from "./lib/data/cache.ts";
export type { ConvertOptions, ConvertReport } from "./lib/data/datasets.ts";
export type {
  ChatMessage,
  LoadTokenizerOptions,
  RenderOptions,
  TokenizerFingerprint,
  TokenizerSource,
} from "./lib/data/tokenizer.ts";
export type { ParserType } from "./lib/data/templates.ts";
export type { PreprocessOptions, PreprocessResult } from "./lib/data/preprocess.ts";
export { TokenCounter } from "./lib/data/vocab.ts";
export { TokenizedDataset } from "./lib/data/tokenized.ts";
export type { SampleView } from "./lib/data/tokenized.ts";
export type { Batch, LoaderOptions, LoaderPosition } from "./lib/data/loader.ts";
export type { ConversationRecord, DataRecord, TextRecord, TokensRecord } from "./lib/data/records.ts";
export type { DatasetDownloader, PresetOptions } from "./lib/data/datasets.ts";
export type { Llama2cConfig } from "./lib/models/llama2c.ts";
export type { Message, NormalizeNotes, TokenizedSample } from "./lib/data/preprocess.ts";
