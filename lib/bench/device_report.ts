/**
 * The device report of `deno task bench --device-report FILE`: what a run on a new machine should bring back,
 * as one JSON document: the adapter (info, features, the device's limits, whether it is a CPU adapter), every
 * bench row, the training-step profile (per part: per-kernel rows and per-dispatch times) and the buffer
 * pool's peak. Nothing in it depends on the adapter's kind, so the same command runs unchanged on lavapipe
 * and on a GPU.
 */
import { type Gpu, isCpuAdapter, OPTIONAL_FEATURES } from "../gpu/device.ts";
import type { BenchRow } from "./types.ts";
import type { StepProfile } from "./profile_train.ts";

/** The report's `version`: bumped when a field changes meaning. */
export const DEVICE_REPORT_VERSION = 1;

/** What {@link deviceReport} assembles. */
export interface DeviceReport {
  version: number;
  /** When the bench ran (ISO 8601). */
  date: string;
  /** Deno's and V8's versions. */
  runtime: { deno: string; v8: string; os: string; arch: string };
  adapter: {
    /** The adapter in one line (lib/gpu/device.ts `Gpu.describe`). */
    description: string;
    vendor: string;
    architecture: string;
    device: string;
    isCpu: boolean;
    /** The kernel families the ops chose (lib/gpu/device.ts `cpuKernels`). */
    kernels: "cpu" | "gpu";
    /** The optional features the device was opened with. */
    features: string[];
    /** The device's limits (every one WebGPU defines, as the device was opened). */
    limits: Record<string, number>;
  };
  /** Smaller shapes (--quick). */
  quick: boolean;
  rows: BenchRow[];
  profile: StepProfile;
  /** The buffer pool's peak over the whole bench, bytes. */
  peakBytes: number;
}

/** Assembles the report from a finished bench run on `gpu`. */
export function deviceReport(
  gpu: Gpu,
  run: { date: string; quick: boolean; rows: BenchRow[]; profile: StepProfile },
): DeviceReport {
  const limits: Record<string, number> = {};
  const all = gpu.device.limits as unknown as Record<string, unknown>;
  // The limits are WebIDL attributes (getters on the prototype): for-in reaches them, Object.entries does not.
  for (const name in all) {
    const value = all[name];
    if (typeof value === "number") limits[name] = value;
  }
  return {
    version: DEVICE_REPORT_VERSION,
    date: run.date,
    runtime: { deno: Deno.version.deno, v8: Deno.version.v8, os: Deno.build.os, arch: Deno.build.arch },
    adapter: {
      description: gpu.describe(),
      vendor: gpu.info.vendor,
      architecture: gpu.info.architecture,
      device: gpu.info.device,
      isCpu: isCpuAdapter(gpu),
      kernels: gpu.kernels,
      features: OPTIONAL_FEATURES.filter((f) => gpu.device.features.has(f)),
      limits,
    },
    quick: run.quick,
    rows: run.rows,
    profile: run.profile,
    peakBytes: gpu.pool.peakBytes,
  };
}
