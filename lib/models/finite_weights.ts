/**
 * The load-time check that a model's weights are finite: a NaN or infinite weight in a target or draft
 * checkpoint would otherwise give silent garbage (token 0 every step, a "successful" training run, every
 * captured state skipped). One GPU count per tensor (lib/ops/finite.ts), one read-back per model; a CPU
 * scan of a file's tensors where no GPU is at hand (`export --check` of a draft).
 */
import type { Gpu } from "../gpu/device.ts";
import { runOnce } from "../gpu/program.ts";
import { countNonFinite, countNonFiniteCpu } from "../ops/finite.ts";
import { type SafetensorsFile, toFloat32 } from "../io/safetensors.ts";
import { Tensor } from "../tensor.ts";

/** A weight as loaded: its name in the checkpoint, its GPU tensor and the file it was read from. */
export interface LoadedWeight {
  /** The tensor's name (with the row range of a row block, `name[r0:r1]`). */
  name: string;
  /** The weight on the GPU (f32, bf16 or f16). */
  tensor: Tensor;
  /** The safetensors file it came from. */
  file: string;
}

/** A checkpoint holds a NaN or infinite weight; the message names the file and the tensor. */
export class NonFiniteWeightError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "NonFiniteWeightError";
}

/**
 * Throws {@link NonFiniteWeightError} when any of `weights` holds a NaN or ±Inf, naming the first such
 * tensor, its file and count, and how many other tensors are affected. `what` names the model ("target").
 */
export async function checkFiniteWeights(
  gpu: Gpu,
  weights: readonly LoadedWeight[],
  what: string,
): Promise<void> {
  if (weights.length === 0) return;
  const counts = Tensor.zeros(gpu, [weights.length], "u32", `${what} non-finite counts`);
  try {
    await runOnce(
      gpu,
      `${what} finite-weight check`,
      (p) => countNonFinite(p, weights.map((w) => w.tensor), counts),
    );
    const found = await counts.read();
    const bad = weights.flatMap((w, i) => found[i] > 0 ? [{ ...w, count: found[i] }] : []);
    if (bad.length === 0) return;
    const [first] = bad;
    const others = bad.length > 1 ? `; ${bad.length - 1} more tensors too (${bad[1].name}, …)` : "";
    throw new NonFiniteWeightError(
      `${first.file}: ${what} tensor ${first.name} has ${first.count} NaN or infinite values of ` +
        `${first.tensor.size}${others}`,
    );
  } finally {
    counts.destroy();
  }
}

/**
 * The CPU form of {@link checkFiniteWeights} for one open safetensors file: every F32, BF16 and F16 tensor is
 * read and scanned; the first with a NaN or ±Inf is a {@link NonFiniteWeightError} naming the file.
 */
export async function checkFiniteFile(f: SafetensorsFile, what: string): Promise<void> {
  for (const name of f.names) {
    const { dtype, file } = f.info(name);
    if (dtype !== "F32" && dtype !== "BF16" && dtype !== "F16") continue;
    const raw = await f.read(name);
    const count = dtype === "F32" ? countNonFiniteCpu(toFloat32(raw, name), "f32") : countNonFiniteCpu(
      new Uint16Array(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength / 2),
      dtype === "BF16" ? "bf16" : "f16",
    );
    if (count > 0) {
      throw new NonFiniteWeightError(`${file}: ${what} tensor ${name} has ${count} NaN or infinite values`);
    }
  }
}
