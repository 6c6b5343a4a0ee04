/**
 * The one place where an op's kernel variant is chosen from the adapter. Ops with two kernel families take an
 * optional `kernel` option; when it is absent, devices with CPU kernels (Mesa lavapipe/llvmpipe, see
 * lib/gpu/device.ts `cpuKernels`) get the variant without workgroup memory or barriers and GPUs the one with
 * workgroup-memory tiles or tree reductions. Both variants of an op compute the same math; sums differ only by the f32
 * rounding of a different summation order.
 */
import { cpuKernels, type Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";

/**
 * Kernel family of the row-wise ops over a last dimension (softmax, rmsnorm, the loss, argmax, row sums, the
 * EAGLE-3 position loss): "workgroup" (one workgroup of 256 per row, tree reductions in workgroup memory: GPUs) or
 * "rows" (one invocation per row, vec4 loads when the width is a multiple of 4, no workgroup memory or
 * barriers: CPU adapters such as lavapipe, where it is the default).
 */
export type RowKernel = "workgroup" | "rows";

/** The option of every op with a {@link RowKernel} choice. */
export interface RowKernelOptions {
  /** Kernel family (see {@link RowKernel}); default "rows" on CPU adapters, "workgroup" on GPUs. */
  kernel?: RowKernel;
}

/**
 * The kernel variant of `op`: `requested` when given (it must be `gpuVariant` or `cpuVariant`, else a
 * {@link ShapeError} naming the op), else `cpuVariant` on CPU adapters and `gpuVariant` on GPUs.
 */
export function kernelVariant<V extends string>(
  gpu: Gpu,
  op: string,
  requested: V | undefined,
  variants: { gpu: V; cpu: V },
): V {
  if (requested !== undefined && requested !== variants.gpu && requested !== variants.cpu) {
    throw new ShapeError(
      `${op}: unknown kernel ${JSON.stringify(requested)} (expected "${variants.gpu}" or "${variants.cpu}")`,
    );
  }
  return requested ?? (cpuKernels(gpu) ? variants.cpu : variants.gpu);
}

/** The requested {@link RowKernel} of `op`, else "rows" on CPU adapters and "workgroup" on GPUs. */
export function rowKernelFor(gpu: Gpu, op: string, kernel: RowKernel | undefined): RowKernel {
  return kernelVariant<RowKernel>(gpu, op, kernel, { gpu: "workgroup", cpu: "rows" });
}
