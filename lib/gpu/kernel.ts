/**
 * Kernels and the pipeline cache. A kernel is WGSL source plus an entry point and override constants; it is
 * compiled once per device and cached by everything that changes the compiled code. WGSL errors come back
 * with the kernel's name, line and column.
 */
import type { Gpu } from "./device.ts";
import { GpuValidationError } from "./errors.ts";

/** A compute kernel: one entry point of a WGSL module, specialised by override constants. */
export interface KernelSpec {
  /** Kernel family and variant, e.g. "rmsnorm.forward"; names it in errors. */
  name: string;
  /** WGSL source, without `enable` directives (added per device). */
  code: string;
  /** The `@compute` function to run. */
  entryPoint: string;
  /** Values for the module's `override` declarations (tile sizes, workgroup sizes). */
  constants?: Record<string, number>;
  /** The code uses f16 and needs `shader-f16`. */
  f16?: boolean;
}

/** Compiled pipelines by kernel, entry point, constants and features. */
export class PipelineCache {
  #cache = new Map<string, Promise<GPUComputePipeline>>();

  /** An empty cache for `gpu`'s device; {@link Gpu} makes one, reach it as `gpu.pipelines`. */
  constructor(private gpu: Gpu) {}

  /** Number of distinct pipelines compiled so far. */
  get size(): number {
    return this.#cache.size;
  }

  /** The compiled pipeline for `spec`, compiling it on first use. */
  get(spec: KernelSpec): Promise<GPUComputePipeline> {
    const constants = Object.entries(spec.constants ?? {}).sort(([a], [b]) => a < b ? -1 : 1);
    const key = `${spec.name}|${spec.entryPoint}|${JSON.stringify(constants)}|${spec.f16 ? "f16" : ""}|` +
      spec.code;
    let pipeline = this.#cache.get(key);
    if (!pipeline) {
      pipeline = this.#compile(spec);
      this.#cache.set(key, pipeline);
      pipeline.catch(() => this.#cache.delete(key));
    }
    return pipeline;
  }

  async #compile(spec: KernelSpec): Promise<GPUComputePipeline> {
    const gpu = this.gpu;
    const label = `kernel ${spec.name}`;
    if (spec.f16 && !gpu.features.shaderF16) {
      throw new GpuValidationError(label, "needs the shader-f16 feature, which this device lacks");
    }
    const code = (spec.f16 ? "enable f16;\n" : "") + spec.code;
    return await gpu.scoped(label, async () => {
      const module = gpu.device.createShaderModule({ code, label: spec.name });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === "error");
      if (errors.length > 0) {
        const lines = code.split("\n");
        const detail = errors.map((m) =>
          `line ${m.lineNum}:${m.linePos}: ${m.message} (\`${(lines[m.lineNum - 1] ?? "").trim()}\`)`
        ).join("; ");
        throw new GpuValidationError(label, `WGSL error: ${detail}`);
      }
      return gpu.device.createComputePipeline({
        label: spec.name,
        layout: "auto",
        compute: { module, entryPoint: spec.entryPoint, constants: spec.constants },
      });
    });
  }
}
