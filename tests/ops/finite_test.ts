/**
 * The non-finite count (kernels/finite.ts) against its CPU reference: f32, bf16 and (where the device has
 * shader-f16) f16 tensors with NaN, ±Inf planted at random places (the last element of odd sizes included),
 * beside the largest finite values, which must not count.
 */
import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import { countNonFinite, countNonFiniteCpu } from "../../lib/ops/finite.ts";

type Kind = "f32" | "bf16" | "f16";

/** Bit patterns of 16-bit floats: NaN, +Inf, -Inf, the largest finite (must not count), 1.0. */
const HALF = {
  bf16: { nan: 0x7fc1, inf: 0x7f80, negInf: 0xff80, max: 0x7f7f, one: 0x3f80 },
  f16: { nan: 0x7e01, inf: 0x7c00, negInf: 0xfc00, max: 0x7bff, one: 0x3c00 },
} as const;

/** A host tensor of `n` elements with `bad` non-finite values at random places (always the last one too). */
function planted(
  kind: Kind,
  n: number,
  bad: number,
  seed: number,
): Float32Array<ArrayBuffer> | Uint16Array<ArrayBuffer> {
  const r = rng(seed);
  const spots = new Set<number>([n - 1]);
  while (spots.size < bad) spots.add(Math.floor(r() * n));
  if (kind === "f32") {
    const x = randomArray(n, seed);
    x[Math.floor(r() * n)] = 3.4028234663852886e38;
    for (const [k, i] of [...spots].entries()) x[i] = [NaN, Infinity, -Infinity][k % 3];
    return x;
  }
  const h = HALF[kind];
  const x = new Uint16Array(n).fill(h.one);
  x[Math.floor(r() * n)] = h.max;
  for (const [k, i] of [...spots].entries()) x[i] = [h.nan, h.inf, h.negInf][k % 3];
  return x;
}

Deno.test(
  { name: "countNonFinite: f32, bf16, f16 counts equal the CPU reference", ...needsGpu },
  async () => {
    const g = gpu!;
    const kinds: Kind[] = g.features.shaderF16 ? ["f32", "bf16", "f16"] : ["f32", "bf16"];
    const cases: Array<{ kind: Kind; n: number; bad: number }> = [];
    for (const kind of kinds) {
      for (const [n, bad] of [[1, 1], [7, 2], [256, 3], [1023, 5], [70001, 17]]) cases.push({ kind, n, bad });
    }
    const hosts = cases.map((c, i) => planted(c.kind, c.n, c.bad, 10 + i));
    // Finite tensors beside them, so a count landing in the wrong slot shows.
    const tensors = hosts.flatMap((x, i) => {
      const { kind, n } = cases[i];
      const clean = kind === "f32" ? randomArray(n, 99 + i) : new Uint16Array(n).fill(HALF[kind].one);
      return [
        Tensor.fromArray(g, x, [n], kind, `planted ${i}`),
        Tensor.fromArray(g, clean, [n], kind, `clean ${i}`),
      ];
    });
    const counts = Tensor.zeros(g, [tensors.length], "u32", "counts");
    try {
      await runOnce(g, "finite test", (p) => countNonFinite(p, tensors, counts));
      const got = [...await counts.read()];
      const want = hosts.flatMap((x, i) => [countNonFiniteCpu(x, cases[i].kind), 0]);
      assert.deepEqual(got, want);
      assert.deepEqual(want.filter((_, i) => i % 2 === 0), cases.map((c) => c.bad));
    } finally {
      for (const t of [...tensors, counts]) t.destroy();
    }
  },
);
