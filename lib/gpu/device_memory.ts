/**
 * How much memory a device has, for the memory plan's fit check. WebGPU does not say: a CPU adapter (lavapipe,
 * llvmpipe) allocates from the host, whose available memory the OS reports; for a GPU the user names it
 * (`--device-memory 24GiB`), or only the per-tensor limits are checked.
 */
import { type Gpu, isCpuAdapter } from "./device.ts";

/** Bytes of "24GiB", "80GB", "512MiB", "1.5TiB" or a plain byte count; null when it is none of them. */
export function parseByteSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(|B|[KMGT]i?B?)\s*$/i.exec(text);
  if (!m) return null;
  const unit = m[2].toUpperCase().replace(/B$/, "");
  const powers: Record<string, number> = {
    "": 1,
    K: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
    KI: 2 ** 10,
    MI: 2 ** 20,
    GI: 2 ** 30,
    TI: 2 ** 40,
  };
  const bytes = Number(m[1]) * powers[unit];
  return Number.isFinite(bytes) ? Math.round(bytes) : null;
}

/** "1.5 GiB", "12.0 MiB", "512 B". */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0, x = bytes;
  while (Math.abs(x) >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${x} B` : `${x.toFixed(1)} ${units[u]}`;
}

/** A device's memory and where the figure comes from. */
export interface DeviceMemory {
  /** Bytes, or null when unknown. */
  bytes: number | null;
  /** "--device-memory", "host memory available (CPU adapter)" or "unknown". */
  source: string;
}

/**
 * The memory of `gpu`: `given` (the --device-memory bytes) when set, else the host's available memory for a
 * CPU adapter, else unknown.
 */
export function deviceMemory(gpu: Gpu, given: number | null): DeviceMemory {
  if (given !== null) return { bytes: given, source: "--device-memory" };
  if (isCpuAdapter(gpu)) {
    return { bytes: Deno.systemMemoryInfo().available, source: "host memory available (CPU adapter)" };
  }
  return { bytes: null, source: "unknown (give --device-memory to check the total)" };
}

/** The `--device-memory` flag of the tasks that plan their memory (lib/flags.ts spec). */
export const DEVICE_MEMORY_FLAG = {
  kind: "string",
  default: null,
  arg: "size",
  check: (v: string): string | null =>
    parseByteSize(v) === null ? "a size such as 24GiB, 80GB or 512MiB" : null,
  help: "the device's memory for the plan's fit check (e.g. 24GiB); default: a CPU adapter's host memory " +
    "available, a GPU's unknown (then only the per-tensor limits are checked)",
} as const;

/** The `--target-memory-budget` flag of the tasks that can stream a target's layers (lib/flags.ts spec). */
export const TARGET_MEMORY_BUDGET_FLAG = {
  kind: "string",
  default: null,
  arg: "size",
  check: (v: string): string | null => parseByteSize(v) === null ? "a size such as 8GiB or 512MiB" : null,
  help: "keep at most this many bytes of decoder-layer weights on the device and stream the layers through " +
    "them from the checkpoint on every batch (targets larger than the device; outputs equal the resident " +
    "forward's bit for bit); default: every layer resident",
} as const;
