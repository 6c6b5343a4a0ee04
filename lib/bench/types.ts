/** Shared shapes of benchmark results: each bench module returns rows that `deno task bench` prints and saves. */
import type { Gpu } from "../gpu/device.ts";
import type { Program } from "../gpu/program.ts";

/** One measured figure. */
export interface BenchRow {
  /** Section, e.g. "matmul", "attention", "dispatch". */
  group: string;
  /** What was measured, e.g. "A·Bᵀ f32". */
  name: string;
  /** Sizes, e.g. "1024x1024x1024". */
  shape: string;
  /** Mean milliseconds per run. */
  ms: number;
  /** GFLOP/s, when the work has a FLOP count. */
  gflops?: number;
  /** Tokens per second, when the work processes tokens. */
  tokensPerSec?: number;
  /** Anything else a reader needs (kernel variant chosen, ...). */
  note?: string;
  /** The most bytes of GPU buffers the work held at once (the buffer pool's peak). */
  peakBytes?: number;
  /** The peak the memory plan foresaw for the work. */
  plannedPeakBytes?: number;
}

/** Options every bench module takes. */
export interface BenchOptions {
  /** Smaller shapes and fewer repetitions (for a quick look or CI smoke runs). */
  quick?: boolean;
  /** The group was named by `--only` (a group too slow for CPU adapters runs there only then). */
  explicit?: boolean;
}

/**
 * Mean milliseconds per run of `program`: one warm-up run and sync, then `reps` runs encoded back to back
 * in one submit and one sync (so the ~11 ms sync cost of Deno is paid once, not per run).
 */
export async function timeProgram(gpu: Gpu, program: Program, reps: number): Promise<number> {
  program.run();
  await gpu.sync();
  const encoder = gpu.device.createCommandEncoder({ label: `bench ${program.label}` });
  for (let i = 0; i < reps; i++) program.encode(encoder);
  const t0 = performance.now();
  gpu.submit([encoder.finish()]);
  await gpu.sync();
  return (performance.now() - t0) / reps;
}
