/**
 * Non-finite counts of float tensors on the GPU (kernels/finite.ts), with the CPU reference on the same bits:
 * the load-time check that a checkpoint holds no NaN or infinite weight. One dispatch per tensor, every count
 * in one u32 tensor, so a whole model is checked with one read-back.
 */
import * as K from "../../kernels/finite.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/**
 * counts[i] += the number of NaN and ±Inf elements of tensors[i] (f32, bf16 or f16, read from their bits).
 * counts: u32 [tensors.length], zeroed by the caller.
 */
export async function countNonFinite(p: Program, tensors: readonly Tensor[], counts: Tensor): Promise<void> {
  const op = "countNonFinite";
  expectDtype(op, "counts", counts, "u32");
  expectShape(op, "counts", counts, [tensors.length]);
  for (const [slot, t] of tensors.entries()) {
    expectDtype(op, `tensors[${slot}]`, t, "f32", "bf16", "f16");
    const format = K.FINITE_FORMAT[t.dtype as keyof typeof K.FINITE_FORMAT];
    const words = t.dtype === "f32" ? t.size : Math.ceil(t.size / 2);
    if (words === 0) continue;
    await p.add(
      { name: "finite.count_nonfinite", code: K.countNonFinite, entryPoint: "count_nonfinite" },
      [params(["u32", words], ["u32", t.size], ["u32", format], ["u32", slot]), t, counts],
      Math.ceil(words / K.FINITE_WG),
      `finite.count_nonfinite (${t.label})`,
    );
  }
}

/** CPU reference of {@link countNonFinite} for one tensor: f32 values, or the raw bits of bf16/f16 values. */
export function countNonFiniteCpu(values: Float32Array | Uint16Array, dtype: "f32" | "bf16" | "f16"): number {
  let bad = 0;
  if (dtype === "f32") {
    for (const v of values) if (!Number.isFinite(v)) bad++;
    return bad;
  }
  const mask = dtype === "bf16" ? 0x7f80 : 0x7c00;
  for (const h of values) if ((h & mask) === mask) bad++;
  return bad;
}
