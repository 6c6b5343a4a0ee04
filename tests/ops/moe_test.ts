/**
 * The MoE block (lib/ops/moe.ts) against its CPU reference: routing with and without renormalisation, several
 * tiles per expert, odd sizes, f32 and bf16 expert weights, experts in several weight blocks, Qwen2-MoE's gated
 * shared expert; and the CPU routing
 * itself on hand-made logits. The whole block against transformers' classes is in tests/models/golden_targets_test.ts.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { roundBf16, Tensor } from "../../lib/tensor.ts";
import {
  moeCpu,
  moeForward,
  moeRouteCpu,
  moeScratch,
  type MoeShape,
  type MoeWeightsCpu,
} from "../../lib/ops/moe.ts";

interface Case {
  rows: number;
  H: number;
  shape: MoeShape;
  shared: number | null;
  dtype: "f32" | "bf16";
  /** Experts per weight block (default: all in one). */
  block?: number;
}

async function runCase(c: Case, seed: number) {
  const g = gpu!, { rows, H, shape } = c, { experts: E, expertIntermediate: I } = shape;
  const round = (a: Float32Array<ArrayBuffer>) => c.dtype === "bf16" ? a.map(roundBf16) : a;
  const w: MoeWeightsCpu = {
    router: round(randomArray(E * H, seed + 1, 0.5)),
    gate: round(randomArray(E * I * H, seed + 2, 0.3)),
    up: round(randomArray(E * I * H, seed + 3, 0.3)),
    down: round(randomArray(E * H * I, seed + 4, 0.3)),
    shared: c.shared === null ? null : {
      gate: round(randomArray(c.shared * H, seed + 5, 0.3)),
      up: round(randomArray(c.shared * H, seed + 6, 0.3)),
      down: round(randomArray(H * c.shared, seed + 7, 0.3)),
      gateProj: round(randomArray(H, seed + 8, 0.5)),
      size: c.shared,
    },
  };
  const m = randomArray(rows * H, seed + 9), x0 = randomArray(rows * H, seed + 10);
  const t = (
    data: Float32Array<ArrayBuffer>,
    dims: number[],
    label: string,
    dtype: "f32" | "bf16" = c.dtype,
  ) => Tensor.fromArray(g, data, dims, dtype, label);
  const per = c.block ?? E;
  const blocks = (data: Float32Array<ArrayBuffer>, rows: number, cols: number, label: string) =>
    Array.from({ length: Math.ceil(E / per) }, (_, b) => {
      const first = b * per, count = Math.min(per, E - first);
      const part = data.slice(first * rows * cols, (first + count) * rows * cols);
      return { first, count, tensor: t(part, [count * rows, cols], `${label} [${first}:${first + count}]`) };
    });
  const tensors = {
    router: t(w.router, [E, H], "router"),
    gate: blocks(w.gate, I, H, "gate"),
    up: blocks(w.up, I, H, "up"),
    down: blocks(w.down, H, I, "down"),
    shared: w.shared && {
      gate: t(w.shared.gate, [c.shared!, H], "shared gate"),
      up: t(w.shared.up, [c.shared!, H], "shared up"),
      down: t(w.shared.down, [H, c.shared!], "shared down"),
      gateProj: t(w.shared.gateProj, [1, H], "shared gate proj"),
    },
  };
  const tm = t(m, [rows, H], "m", "f32"), tx = t(x0, [rows, H], "x", "f32");
  await runOnce(g, "moe", async (p) => {
    await moeForward(p, shape, tensors, tm, tx, moeScratch(p, rows, H, shape, c.shared));
  });
  const got = await tx.read();
  const want = moeCpu(m, rows, H, shape, w).map((v, i) => v + x0[i]);
  assertClose(got, want, `moe ${JSON.stringify(c)}`, { atol: 2e-5, rtol: 1e-4 });
}

Deno.test({ name: "moe: grouped experts equal the CPU reference", ...needsGpu }, async () => {
  const cases: Case[] = [
    {
      rows: 13,
      H: 20,
      shape: { experts: 6, topK: 2, expertIntermediate: 12, normTopk: true },
      shared: null,
      dtype: "f32",
    },
    {
      rows: 7,
      H: 9,
      shape: { experts: 5, topK: 3, expertIntermediate: 7, normTopk: false },
      shared: null,
      dtype: "bf16",
    },
    // 90 rows × top-2 over 3 experts: about 60 slots per expert, two or more 32-row tiles each
    {
      rows: 90,
      H: 16,
      shape: { experts: 3, topK: 2, expertIntermediate: 8, normTopk: false },
      shared: 24,
      dtype: "bf16",
    },
    // experts in blocks of 2, 2 and 1 (weights over one binding): one dispatch per block
    {
      rows: 21,
      H: 12,
      shape: { experts: 5, topK: 2, expertIntermediate: 6, normTopk: true },
      shared: null,
      dtype: "bf16",
      block: 2,
    },
    {
      rows: 1,
      H: 33,
      shape: { experts: 8, topK: 1, expertIntermediate: 5, normTopk: true },
      shared: 11,
      dtype: "f32",
    },
  ];
  for (const [i, c] of cases.entries()) await runCase(c, 100 * i);
});

Deno.test("moe: routing picks the largest logits, lower id first on ties, and renormalises", () => {
  const r = moeRouteCpu([0.5, 2, -1, 2, 1], 3, false);
  assert.deepEqual(r.ids, [1, 3, 4]);
  const p = [0.5, 2, -1, 2, 1].map(Math.exp), sum = p.reduce((a, b) => a + b, 0);
  assertClose(r.w, [p[1] / sum, p[3] / sum, p[4] / sum], "weights");
  const n = moeRouteCpu([0.5, 2, -1, 2, 1], 2, true);
  assertClose(n.w, [0.5, 0.5], "renormalised");
});
