/**
 * The WebGPU adapter and device: the adapter's own limits and the optional features it offers are requested
 * (the spec defaults are far too small for model weights), errors are caught with error scopes and raised as
 * typed errors, and device loss is reported on the next use.
 */
import {
  GpuDeviceLostError,
  GpuOutOfMemoryError,
  GpuUnavailableError,
  GpuValidationError,
} from "./errors.ts";
import { BufferPool } from "./buffers.ts";
import { PipelineCache } from "./kernel.ts";

/** The limits Eaglet requests from the adapter (all numeric, copied from `adapter.limits`). */
const REQUESTED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
  "maxBindGroups",
] as const;

/** Optional features used when the adapter has them. */
export const OPTIONAL_FEATURES = ["shader-f16", "subgroups", "timestamp-query"] as const;

/** The device limits Eaglet relies on, as granted. */
export interface GpuLimits {
  /** Largest storage-buffer binding in bytes; no tensor or view bound to a kernel may be bigger. */
  maxStorageBufferBindingSize: number;
  /** Largest GPU buffer in bytes; the buffer pool refuses tensors above it. */
  maxBufferSize: number;
  /** Bytes of `var<workgroup>` memory one workgroup may use (bounds matmul and attention tiles). */
  maxComputeWorkgroupStorageSize: number;
  /** Most invocations (product of the workgroup size) in one workgroup. */
  maxComputeInvocationsPerWorkgroup: number;
  /**
   * Most workgroups along one grid dimension (65535 by default); larger grids are folded by {@link foldGrid}.
   */
  maxComputeWorkgroupsPerDimension: number;
  /**
   * Most storage buffers one kernel may bind: the adapter's own limit (WebGPU's default is 8; the GL backend
   * has 16).
   */
  maxStorageBuffersPerShaderStage: number;
  /** Byte alignment required of a storage binding's offset, so of a tensor view's start. */
  minStorageBufferOffsetAlignment: number;
  /** Byte alignment required of a uniform binding's offset. */
  minUniformBufferOffsetAlignment: number;
}

/** Optional capabilities of the device. */
export interface GpuFeatures {
  /** `shader-f16`: f16 storage and arithmetic in WGSL (`enable f16;`). */
  shaderF16: boolean;
  /** `subgroups`: subgroupAdd/Max and friends. */
  subgroups: boolean;
  /** `timestamp-query`: GPU-side timing of compute passes. */
  timestampQuery: boolean;
}

/** Options for {@link Gpu.create}. */
export interface GpuOptions {
  /** Prefer the discrete ("high-performance", default) or integrated ("low-power") adapter. */
  powerPreference?: GPUPowerPreference;
  /** Do not request these optional features even when the adapter has them (to test fallbacks). */
  disableFeatures?: Array<(typeof OPTIONAL_FEATURES)[number]>;
  /** Called with a one-line message on every uncaptured error (defaults to console.error). */
  onUncapturedError?: (message: string) => void;
  /**
   * Request at most these limits (bytes), below the adapter's: a small device on any adapter, so that the
   * paths for tensors over the binding or buffer size run (and are tested) where the hardware would not need
   * them.
   */
  capLimits?: { maxStorageBufferBindingSize?: number; maxBufferSize?: number };
  /**
   * The kernel families ops choose: the adapter's ("adapter", the default: CPU variants on a CPU adapter) or
   * the GPU variants on any adapter ("gpu"), so that the paths a GPU takes (workgroup-tiled matmuls, row
   * kernels with workgroup memory) run, and are tested, on a CPU adapter.
   */
  kernels?: "adapter" | "gpu";
}

/** The install hint printed when no adapter is found. */
export const NO_ADAPTER_HINT: string =
  "no WebGPU adapter found: install GPU drivers with Vulkan, Metal or DX12 " +
  "support, or on Linux without a GPU Mesa's software driver (`apt-get install mesa-vulkan-drivers libvulkan1`)";

/** One WebGPU device with its caches. Create it with {@link Gpu.create}; share one per process. */
export class Gpu {
  /** The pipeline cache: one compiled pipeline per kernel, entry point, constants and features. */
  readonly pipelines: PipelineCache;
  /** Pool of storage buffers, reused by size. */
  readonly pool: BufferPool;
  /** Why the device was lost, once it has been. */
  lostReason: string | null = null;
  #staging: GPUBuffer[] = [];

  private constructor(
    readonly adapter: GPUAdapter,
    readonly device: GPUDevice,
    readonly info: GPUAdapterInfo,
    readonly limits: GpuLimits,
    readonly features: GpuFeatures,
    /** The kernel families ops choose: "cpu" ({@link isCpuAdapter}, unless overridden) or "gpu". */
    readonly kernels: "cpu" | "gpu",
  ) {
    this.pipelines = new PipelineCache(this);
    this.pool = new BufferPool(this);
  }

  /** Finds an adapter and opens a device with the adapter's limits and the optional features it offers. */
  static async create(options: GpuOptions = {}): Promise<Gpu> {
    if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
      throw new GpuUnavailableError(`this runtime has no navigator.gpu; ${NO_ADAPTER_HINT}`);
    }
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: options.powerPreference ?? "high-performance",
    });
    if (!adapter) throw new GpuUnavailableError(NO_ADAPTER_HINT);
    const requiredLimits: Record<string, number> = {};
    for (const name of REQUESTED_LIMITS) {
      const value = (adapter.limits as unknown as Record<string, number>)[name];
      if (typeof value === "number") requiredLimits[name] = value;
    }

    const disabled = new Set(options.disableFeatures ?? []);
    const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f) && !disabled.has(f));
    const device = await adapter.requestDevice({
      requiredLimits,
      requiredFeatures: requiredFeatures as GPUFeatureName[],
    });
    const l = device.limits;
    const limits: GpuLimits = {
      // WebGPU raises a requested limit below its default back to the default, so a cap lives here, in the
      // limits Eaglet's ops and buffer pool read.
      maxStorageBufferBindingSize: Math.min(
        l.maxStorageBufferBindingSize,
        options.capLimits?.maxStorageBufferBindingSize ?? Infinity,
      ),
      maxBufferSize: Math.min(l.maxBufferSize, options.capLimits?.maxBufferSize ?? Infinity),
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
    };
    const features: GpuFeatures = {
      shaderF16: device.features.has("shader-f16"),
      subgroups: device.features.has("subgroups"),
      timestampQuery: device.features.has("timestamp-query"),
    };
    const cpu = options.kernels !== "gpu" && isCpuInfo(adapter.info);
    const gpu = new Gpu(adapter, device, adapter.info, limits, features, cpu ? "cpu" : "gpu");
    const report = options.onUncapturedError ?? ((m: string) => console.error(`webgpu: ${m}`));
    device.addEventListener("uncapturederror", (event) => {
      report((event as GPUUncapturedErrorEvent).error.message);
    });
    device.lost.then((info) => {
      gpu.lostReason = `${info.reason}: ${info.message}`;
    });
    return gpu;
  }

  /** A one-line description of the adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) [f16]". */
  describe(): string {
    const name = this.info.description || this.info.device || this.info.vendor || "unknown adapter";
    const feats = [
      this.features.shaderF16 ? "f16" : null,
      this.features.subgroups ? "subgroups" : null,
      this.features.timestampQuery ? "timestamps" : null,
    ].filter(Boolean).join(", ");
    return `${name}${this.info.isFallbackAdapter ? " (software)" : ""}${feats ? ` [${feats}]` : ""}`;
  }

  /** Throws {@link GpuDeviceLostError} if the device has been lost. */
  assertAlive(): void {
    if (this.lostReason !== null) throw new GpuDeviceLostError(`GPU device lost (${this.lostReason})`);
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes and raises what they caught as typed errors
   * naming `label` (a kernel or tensor name).
   */
  async scoped<T>(label: string, fn: () => T | Promise<T>): Promise<T> {
    this.assertAlive();
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    let result: T | undefined;
    let failure: unknown = null;
    try {
      result = await fn();
    } catch (e) {
      failure = e;
    }
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    if (failure !== null) throw failure;
    if (oom) throw new GpuOutOfMemoryError(label, oom.message);
    if (validation) throw new GpuValidationError(label, validation.message);
    return result as T;
  }

  /** Creates a buffer; `label` names it in errors. */
  createBuffer(size: number, usage: GPUBufferUsageFlags, label: string): GPUBuffer {
    this.assertAlive();
    return this.device.createBuffer({ size: Math.max(4, align(size, 4)), usage, label });
  }

  /** Writes host data into a buffer at a byte offset (length a multiple of 4). */
  write(buffer: GPUBuffer, byteOffset: number, data: ArrayBufferView<ArrayBuffer>): void {
    this.assertAlive();
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 === 0) {
      this.device.queue.writeBuffer(buffer, byteOffset, bytes);
    } else {
      const padded = new Uint8Array(align(bytes.byteLength, 4));
      padded.set(bytes);
      this.device.queue.writeBuffer(buffer, byteOffset, padded);
    }
  }

  /** Submits command buffers to the queue. */
  submit(commands: GPUCommandBuffer[]): void {
    this.assertAlive();
    this.device.queue.submit(commands);
  }

  /**
   * Copies `size` bytes at `byteOffset` of `buffer` to the host. Each call is one GPU→CPU sync (about 11 ms
   * in Deno): read once per N steps, never per kernel.
   */
  async read(buffer: GPUBuffer, byteOffset: number, size: number): Promise<ArrayBuffer> {
    this.assertAlive();
    const padded = align(size, 4);
    const staging = this.#takeStaging(padded);
    const encoder = this.device.createCommandEncoder({ label: "readback" });
    encoder.copyBufferToBuffer(buffer, byteOffset, staging, 0, padded);
    this.device.queue.submit([encoder.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, padded);
    } catch (e) {
      this.assertAlive();
      throw e;
    }
    const out = staging.getMappedRange(0, padded).slice(0, size);
    staging.unmap();
    this.#staging.push(staging);
    return out;
  }

  /** Waits until all submitted work is done. */
  async sync(): Promise<void> {
    this.assertAlive();
    await this.device.queue.onSubmittedWorkDone();
    this.assertAlive();
  }

  #takeStaging(size: number): GPUBuffer {
    const i = this.#staging.findIndex((b) => b.size >= size && b.size <= 4 * size + 4096);
    if (i >= 0) return this.#staging.splice(i, 1)[0];
    return this.createBuffer(size, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, "readback staging");
  }

  /** Frees every pooled buffer and destroys the device. */
  destroy(): void {
    for (const b of this.#staging) b.destroy();
    this.#staging = [];
    this.pool.clear();
    this.device.destroy();
  }
}

/**
 * Whether the adapter is a CPU rasteriser (Mesa lavapipe/llvmpipe, SwiftShader, WARP): its memory is the
 * host's, and ops default to the CPU kernel families ({@link cpuKernels}).
 */
export function isCpuAdapter(gpu: Gpu): boolean {
  return isCpuInfo(gpu.info);
}

function isCpuInfo(i: GPUAdapterInfo): boolean {
  return i.isFallbackAdapter || /llvmpipe|lavapipe|softpipe|swiftshader|warp|microsoft basic/i.test(
    [i.vendor, i.architecture, i.device, i.description].join(" "),
  );
}

/**
 * Whether ops choose their CPU kernel families on `gpu`: the variants without workgroup memory
 * (lib/ops/variant.ts) and matmul's `regtile` tile. True on a CPU adapter unless the device was created with
 * `kernels: "gpu"`.
 */
export function cpuKernels(gpu: Gpu): boolean {
  return gpu.kernels === "cpu";
}

/** Rounds `n` up to a multiple of `to`. */
export function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
