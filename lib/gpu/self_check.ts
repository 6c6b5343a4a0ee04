/**
 * A quick check that the engine computes correctly on this device: each kernel family runs once on a small
 * shape and is compared with its CPU reference. Used by `deno task demo` and useful after a driver change.
 */
import type { Gpu } from "./device.ts";
import { runOnce } from "./program.ts";
import { Tensor } from "../tensor.ts";
import * as ew from "../ops/elementwise.ts";

/** The outcome of one check. */
export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function seeded(n: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/** Runs every check and returns one result per kernel family. */
export async function selfCheck(gpu: Gpu): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const check = async (
    name: string,
    tol: number,
    run: () => Promise<[ArrayLike<number>, ArrayLike<number>]>,
  ) => {
    try {
      const [got, want] = await run();
      const d = maxDiff(got, want);
      results.push({ name, ok: d <= tol, detail: `max |gpu - cpu| = ${d.toExponential(2)}` });
    } catch (e) {
      results.push({ name, ok: false, detail: (e as Error).message });
    }
  };
  await check("elementwise", 1e-6, async () => {
    const a = seeded(1000, 1), b = seeded(1000, 2);
    const ta = Tensor.fromArray(gpu, a, [1000], "f32", "a");
    const tb = Tensor.fromArray(gpu, b, [1000], "f32", "b");
    const out = Tensor.empty(gpu, [1000], "f32", "out");
    await runOnce(gpu, "self-check elementwise", (p) => ew.axpby(p, 2, ta, -1, tb, out));
    const got = await out.read();
    for (const t of [ta, tb, out]) t.destroy();
    return [got, ew.axpbyCpu(2, a, -1, b)];
  });
  return results;
}
