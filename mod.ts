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

// Engine: device, tensors, programs and the ops that record into them.
export { align, Gpu, NO_ADAPTER_HINT } from "./lib/gpu/device.ts";
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
export { DTYPE_BYTES, f32ToBf16Bits, numel, roundBf16, shapeString, Tensor } from "./lib/tensor.ts";
export type { DType, HostArray, ReadArray } from "./lib/tensor.ts";
/** Elementwise ops: add, mul, axpby, scale, fill, addBias, accumulate, strided copies. */
export * as elementwise from "./lib/ops/elementwise.ts";
/** Matrix products: matmul (any transposes, batched), linear and its backward, autotune. */
export * as matmul from "./lib/ops/matmul.ts";
/** Attention with GQA, causal and padding masks, KV-cache offsets and the EAGLE-3 TTT layout. */
export * as attention from "./lib/ops/attention.ts";
/** RMSNorm forward and backward. */
export * as rmsnorm from "./lib/ops/rmsnorm.ts";
/** Rotary embeddings (default, linear, dynamic NTK, llama3, yarn). */
export * as rope from "./lib/ops/rope.ts";
/** SwiGLU forward and backward. */
export * as swiglu from "./lib/ops/swiglu.ts";
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
export { TargetForward, TargetModel } from "./lib/models/target.ts";
export type { TargetLoadOptions, TargetOutputs } from "./lib/models/target.ts";
export { generate, Generator } from "./lib/models/generate.ts";
export type { GenerateOptions } from "./lib/models/generate.ts";
export {
  defaultAuxLayers,
  loadTargetConfig,
  parseTargetConfig,
  SUPPORTED_ARCHITECTURES,
} from "./lib/models/config.ts";
export type { RopeScaling, TargetConfig } from "./lib/models/config.ts";
export {
  deriveDraftConfig,
  draftConfigJson,
  loadDraftConfig,
  parseDraftConfig,
} from "./lib/models/draft_config.ts";
export type { DraftConfig } from "./lib/models/draft_config.ts";
export { buildEagle3Step, EAGLE3_PARAM_NAMES, Eagle3Draft, Eagle3Step } from "./lib/models/eagle3.ts";
export type { Eagle3Metrics, Eagle3StepInputs, Eagle3StepOptions } from "./lib/models/eagle3.ts";
export { convertLlama2c } from "./lib/models/llama2c.ts";

// Checkpoints and the hub.
export { SafetensorsCheckpoint, SafetensorsFile, writeSafetensors } from "./lib/io/safetensors.ts";
export type { RawTensor, SafetensorsDtype } from "./lib/io/safetensors.ts";
export { downloadModel, resolveHubFile, resolveModelPath } from "./lib/io/hub.ts";
export type { HubOptions } from "./lib/io/hub.ts";

// Data.
export { TemplateRegistry, templates } from "./lib/data/templates.ts";
export type { ChatTemplate } from "./lib/data/templates.ts";
export { loadTokenizer } from "./lib/data/tokenizer.ts";
export type { ChatTokenizer } from "./lib/data/tokenizer.ts";
export { preprocessConversation } from "./lib/data/preprocess.ts";
export { convertDataset } from "./lib/data/datasets.ts";
export { buildTokenizedDataset } from "./lib/data/build.ts";
export {
  countSupervisedTokens,
  loadVocabMapping,
  saveVocabMapping,
  selectDraftVocab,
} from "./lib/data/vocab.ts";
export type { VocabMapping } from "./lib/data/vocab.ts";
export { DataLoader } from "./lib/data/loader.ts";
