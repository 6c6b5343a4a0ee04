/**
 * Eaglet: train EAGLE-3 speculative-decoding draft models with WebGPU, from TypeScript on Deno.
 *
 * This module is the public API; everything else in the repository is internal. Engine layer:
 *
 * ```ts
 * import { Gpu, Program, Tensor } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const a = Tensor.fromArray(gpu, [1, 2, 3], [3], "f32", "a");
 * ```
 *
 * @module
 */
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
export * as elementwise from "./lib/ops/elementwise.ts";
