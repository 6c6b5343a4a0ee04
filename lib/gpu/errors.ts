/**
 * Typed errors raised by the GPU layer. Each names what failed (the kernel, the tensor or the op) so that
 * a one-line CLI message is enough to find the cause.
 */

/** No WebGPU adapter could be found; the message says what to install. */
export class GpuUnavailableError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "GpuUnavailableError";
}

/** A WGSL compilation error, or a validation error raised while building or dispatching a kernel. */
export class GpuValidationError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "GpuValidationError";
  /**
   * `label` names what was being built or dispatched (a kernel or a tensor); `detail` is WebGPU's message.
   */
  constructor(readonly label: string, detail: string) {
    super(`${label}: ${detail}`);
  }
}

/** The device ran out of memory while creating a buffer or pipeline. */
export class GpuOutOfMemoryError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "GpuOutOfMemoryError";
  /** `label` names what was being created (a tensor or a kernel); `detail` is WebGPU's message. */
  constructor(readonly label: string, detail: string) {
    super(`${label}: out of GPU memory (${detail})`);
  }
}

/** The device was lost (driver reset, destroy, out of memory); nothing on it can be used any more. */
export class GpuDeviceLostError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "GpuDeviceLostError";
}

/** A shape, dtype or size given to an op does not fit; raised before anything is dispatched. */
export class ShapeError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "ShapeError";
}

/** A tensor or dispatch exceeds one of the device's limits. */
export class LimitError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "LimitError";
}
