/**
 * Shared test helpers: one GPU per test process, and closeness assertions that print where and by how much
 * two arrays differ.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { mulberry32 } from "../lib/data/random.ts";

let shared: Promise<Gpu | null> | null = null;

/**
 * The test process's GPU, or null when there is none (tests then skip with a printed reason). With
 * EAGLET_REQUIRE_GPU=1 (set by .ci/run) a missing GPU is an error instead. EAGLET_NO_F16=1 disables
 * shader-f16 to exercise the fallbacks.
 */
export function testGpu(): Promise<Gpu | null> {
  shared ??= (async () => {
    try {
      const gpu = await Gpu.create({
        disableFeatures: Deno.env.get("EAGLET_NO_F16") === "1" ? ["shader-f16"] : [],
      });
      return gpu;
    } catch (e) {
      if (Deno.env.get("EAGLET_REQUIRE_GPU") === "1") throw e;
      console.warn(`skipping GPU tests: ${(e as Error).message}`);
      return null;
    }
  })();
  return shared;
}

/** The GPU for tests, created at module load; `null` skips GPU tests. */
export const gpu: Gpu | null = await testGpu();

/** Deno.test options that skip a test when there is no GPU. */
export const needsGpu = { ignore: gpu === null, sanitizeResources: false, sanitizeOps: false };

/** Options for {@link assertClose}. */
export interface CloseOptions {
  atol?: number;
  rtol?: number;
}

/**
 * Asserts |actual - expected| <= atol + rtol·|expected| elementwise; the error names the label, the worst
 * index, both values and the max abs difference.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  label: string,
  { atol = 1e-5, rtol = 1e-4 }: CloseOptions = {},
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  let maxAbs = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    const diff = Math.abs(a - e);
    if (Number.isNaN(a) !== Number.isNaN(e) || (!Number.isNaN(a) && !(diff <= atol + rtol * Math.abs(e)))) {
      const excess = Number.isNaN(diff) ? Infinity : diff - (atol + rtol * Math.abs(e));
      if (worst < 0 || excess > worstExcess) [worst, worstExcess] = [i, excess];
    }
    if (diff > maxAbs) maxAbs = diff;
  }
  if (worst >= 0) {
    throw new Error(
      `${label}: mismatch at index ${worst}: got ${actual[worst]}, expected ${expected[worst]} ` +
        `(max |diff| ${maxAbs.toExponential(3)}, atol ${atol}, rtol ${rtol})`,
    );
  }
}

/** A seeded pseudo-random generator (mulberry32) for test inputs. */
export const rng: (seed: number) => () => number = mulberry32;

/** `n` uniform values in [-scale, scale) from a seeded generator. */
export function randomArray(n: number, seed: number, scale = 1): Float32Array<ArrayBuffer> {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (2 * r() - 1) * scale;
  return out;
}
