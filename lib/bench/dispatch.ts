/**
 * Per-dispatch overhead: how long an empty-ish dispatch costs to encode and to run, and what one GPU→CPU sync
 * costs. These bound how small a kernel can usefully be, and why Eaglet reads results back only every N steps.
 */
import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { fill } from "../ops/elementwise.ts";
import { type BenchOptions, type BenchRow, timeProgram } from "./types.ts";

/** Dispatch encode and run cost, and the readback sync cost. */
export async function benchDispatch(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const n = opts.quick ? 200 : 1000;
  const t = Tensor.empty(gpu, [64], "f32", "bench scratch");
  const program = new Program(gpu, "dispatch overhead");
  for (let i = 0; i < n; i++) await fill(program, t, i);

  const encoder = gpu.device.createCommandEncoder();
  const e0 = performance.now();
  program.encode(encoder);
  const encodeMs = performance.now() - e0;
  encoder.finish();

  const runMs = await timeProgram(gpu, program, opts.quick ? 2 : 5);
  const reads = opts.quick ? 3 : 10;
  const r0 = performance.now();
  for (let i = 0; i < reads; i++) await t.read();
  const readMs = (performance.now() - r0) / reads;
  program.destroy();
  t.destroy();
  return [
    { group: "dispatch", name: "encode (prebuilt bind group)", shape: `${n} dispatches`, ms: encodeMs / n },
    { group: "dispatch", name: "encode + run (tiny kernel)", shape: `${n} dispatches`, ms: runMs / n },
    { group: "dispatch", name: "readback sync (256 bytes)", shape: "1 read", ms: readMs },
  ];
}
