/**
 * The MoE block (lib/ops/moe.ts) against its CPU reference. Qwen: routing with and without renormalisation,
 * several tiles per expert, odd sizes, f32 and bf16 expert weights, experts in several weight blocks, the gated
 * shared expert. GPT-OSS: the router's bias and the softmax of the picked logits, the interleaved gate/up
 * projection with the clamped SwiGLU (values past the limit), the experts' biases, bf16 experts stored
 * transposed and MXFP4 experts. DeepSeek-V3: grouped sigmoid routing with the correction bias. Also the CPU
 * routing on hand-made logits. The whole blocks against transformers'
 * classes are in tests/models/target_test.ts.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { roundBf16, Tensor } from "../../lib/tensor.ts";
import {
  type ExpertBlock,
  moeCpu,
  moeForward,
  moeRouteCpu,
  moeRouteGroupedCpu,
  moeScratch,
  type MoeShape,
  type MoeWeightsCpu,
} from "../../lib/ops/moe.ts";

type F32 = Float32Array<ArrayBuffer>;
type Format = "f32" | "f16" | "bf16" | "mxfp4";

interface Case {
  rows: number;
  H: number;
  shape: MoeShape;
  shared: number | null;
  /** The experts' storage (the router and shared expert: f32, or bf16 when the experts are bf16). */
  format: Format;
  /** Experts per weight block (default: all in one). */
  block?: number;
  /** Experts stored transposed ([K, N] each). */
  kn?: boolean;
}

const FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

/** MXFP4 of W [rows, K] (K a multiple of 32): code and scale bytes in u32 words, and the dequantized values. */
function toMxfp4(
  w: F32,
  rows: number,
  K: number,
): { codes: Uint32Array<ArrayBuffer>; scales: Uint32Array<ArrayBuffer>; values: F32 } {
  const codes = new Uint8Array(Math.ceil(rows * K / 8) * 4),
    scales = new Uint8Array(Math.ceil(rows * K / 128) * 4);
  const values = new Float32Array(rows * K);
  for (let g = 0; g < rows * K / 32; g++) {
    let amax = 0;
    for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(w[g * 32 + i]));
    const e = Math.min(127, Math.max(-127, Math.ceil(Math.log2(Math.max(amax, 2 ** -126) / 6))));
    scales[g] = e + 127;
    for (let i = 0; i < 32; i++) {
      const x = w[g * 32 + i] / 2 ** e;
      let code = 0;
      FP4.forEach((v, c) => Math.abs(x - v) < Math.abs(x - FP4[code]) && (code = c));
      const el = g * 32 + i;
      codes[el >> 1] |= code << ((el & 1) * 4);
      values[el] = FP4[code] * 2 ** e;
    }
  }
  return { codes: new Uint32Array(codes.buffer), scales: new Uint32Array(scales.buffer), values };
}

/** Uploads W [E, N, K] in `c`'s format and blocks; returns the blocks and the values the GPU sees. */
function expertBlocks(c: Case, w: F32, N: number, K: number, label: string, bias?: F32) {
  const g = gpu!, E = c.shape.experts, per = c.block ?? E;
  const values = c.format === "bf16"
    ? w.map(roundBf16)
    : c.format === "f16"
    ? Float32Array.from(Float16Array.from(w))
    : c.format === "mxfp4"
    ? toMxfp4(w, E * N, K).values
    : w;
  const blocks: ExpertBlock[] = [];
  for (let first = 0; first < E; first += per) {
    const count = Math.min(per, E - first), part = w.slice(first * N * K, (first + count) * N * K);
    const name = `${label} [${first}:${first + count}]`;
    const b = bias
      ? Tensor.fromArray(g, bias.slice(first * N, (first + count) * N), [count * N], "f32", "bias")
      : null;
    if (c.format === "mxfp4") {
      const q = toMxfp4(part, count * N, K);
      blocks.push({
        first,
        count,
        tensor: Tensor.fromArray(g, q.codes, [q.codes.length], "u32", name),
        scales: Tensor.fromArray(g, q.scales, [q.scales.length], "u32", `${name} scales`),
        bias: b,
      });
    } else if (c.kn) {
      const t = new Float32Array(count * K * N); // [count, K, N]
      for (let e = 0; e < count; e++) {
        for (let n = 0; n < N; n++) {
          for (let k = 0; k < K; k++) t[(e * K + k) * N + n] = part[(e * N + n) * K + k];
        }
      }
      blocks.push({
        first,
        count,
        tensor: Tensor.fromArray(g, t, [count * K, N], c.format, name),
        kn: true,
        bias: b,
      });
    } else {
      blocks.push({
        first,
        count,
        tensor: Tensor.fromArray(g, part, [count * N, K], c.format, name),
        bias: b,
      });
    }
  }
  return { blocks, values };
}

async function runCase(c: Case, seed: number) {
  const g = gpu!, { rows, H, shape } = c, { experts: E, expertIntermediate: I } = shape;
  const dense = c.format === "f32" ? "f32" : "bf16";
  const round = (a: F32) => dense === "bf16" ? a.map(roundBf16) : a;
  const gptOss = shape.gluLimit !== undefined, fused = gptOss || !!shape.inputScaled;
  // GPT-OSS: larger gate/up weights so that some activations pass the clamp.
  const raw = {
    router: round(randomArray(E * H, seed + 1, 0.5)),
    gate: randomArray(E * I * H, seed + 2, 0.3),
    up: randomArray(E * I * H, seed + 3, 0.3),
    gateUp: randomArray(E * 2 * I * H, seed + 4, gptOss ? 2.5 : 0.3),
    down: randomArray(E * H * I, seed + 5, 0.3),
  };
  const biases = gptOss
    ? {
      routerBias: randomArray(E, seed + 6, 0.5),
      gateUpBias: randomArray(E * 2 * I, seed + 7, 2),
      downBias: randomArray(E * H, seed + 8, 0.5),
    }
    : shape.routing === "grouped"
    ? { correctionBias: randomArray(E, seed + 6, 0.3) }
    : {};
  const t = (data: F32, dims: number[], label: string, dtype: "f32" | "bf16" = dense) =>
    Tensor.fromArray(g, data, dims, dtype, label);
  const gate = fused ? null : expertBlocks(c, raw.gate, I, H, "gate");
  const up = fused ? null : expertBlocks(c, raw.up, I, H, "up");
  const gateUp = fused ? expertBlocks(c, raw.gateUp, 2 * I, H, "gate/up", biases.gateUpBias) : null;
  const down = expertBlocks(c, raw.down, H, I, "down", biases.downBias);
  const shared = c.shared === null ? null : {
    gate: round(randomArray(c.shared * H, seed + 9, 0.3)),
    up: round(randomArray(c.shared * H, seed + 10, 0.3)),
    down: round(randomArray(H * c.shared, seed + 11, 0.3)),
    // Llama 4's and DeepSeek-V3's shared experts have no gate.
    gateProj: shape.inputScaled || shape.routing === "grouped" ? null : round(randomArray(H, seed + 12, 0.5)),
    size: c.shared,
  };
  const cpu: MoeWeightsCpu = {
    router: raw.router,
    gate: gate?.values,
    up: up?.values,
    gateUp: gateUp?.values,
    down: down.values,
    shared,
    ...biases,
  };
  const weights = {
    router: t(raw.router, [E, H], "router"),
    routerBias: biases.routerBias ? t(biases.routerBias, [E], "router bias", "f32") : null,
    correctionBias: biases.correctionBias ? t(biases.correctionBias, [E], "correction bias", "f32") : null,
    gate: gate?.blocks ?? [],
    up: up?.blocks ?? [],
    gateUp: gateUp?.blocks ?? null,
    down: down.blocks,
    shared: shared && {
      gate: t(shared.gate, [c.shared!, H], "shared gate"),
      up: t(shared.up, [c.shared!, H], "shared up"),
      down: t(shared.down, [H, c.shared!], "shared down"),
      gateProj: shared.gateProj && t(shared.gateProj, [1, H], "shared gate proj"),
    },
  };
  const m = randomArray(rows * H, seed + 13), x0 = randomArray(rows * H, seed + 14);
  const tm = t(m, [rows, H], "m", "f32"), tx = t(x0, [rows, H], "x", "f32");
  await runOnce(g, "moe", async (p) => {
    await moeForward(p, shape, weights, tm, tx, moeScratch(p, rows, H, shape, c.shared));
  });
  const got = await tx.read();
  const want = moeCpu(m, rows, H, shape, cpu).map((v, i) => v + x0[i]);
  assertClose(got, want, `moe ${JSON.stringify(c)}`, { atol: 5e-5, rtol: 1e-4 });
}

const QWEN = (experts: number, topK: number, I: number, normTopk: boolean): MoeShape => ({
  experts,
  topK,
  expertIntermediate: I,
  normTopk,
});
const GPT_OSS = (experts: number, topK: number, I: number): MoeShape => ({
  experts,
  topK,
  expertIntermediate: I,
  normTopk: false,
  routing: "picked",
  gluLimit: 7,
});

// Where K (H for gate/up, I for down) is a multiple of 4, and N too for experts stored [K, N], the experts run
// in kernels/moe_matmul.ts's vectorised kernel (one-row and four-row K loops), else kernels/moe.ts's scalar one.
Deno.test({ name: "moe: grouped experts equal the CPU reference (Qwen)", ...needsGpu }, async () => {
  const cases: Case[] = [
    { rows: 13, H: 20, shape: QWEN(6, 2, 12, true), shared: null, format: "f32" },
    { rows: 7, H: 9, shape: QWEN(5, 3, 7, false), shared: null, format: "bf16" },
    // 90 rows × top-2 over 3 experts: about 60 slots per expert, two or more 32-row tiles each
    { rows: 90, H: 16, shape: QWEN(3, 2, 8, false), shared: 24, format: "bf16" },
    // experts in blocks of 2, 2 and 1 (weights over one binding): one dispatch per block
    { rows: 21, H: 12, shape: QWEN(5, 2, 6, true), shared: null, format: "bf16", block: 2 },
    { rows: 1, H: 33, shape: QWEN(8, 1, 5, true), shared: 11, format: "f32" },
  ];
  if (gpu!.features.shaderF16) {
    cases.push({ rows: 10, H: 12, shape: QWEN(4, 2, 8, true), shared: null, format: "f16" });
  } else console.log("moe f16 experts: skipped, the device lacks shader-f16");
  for (const [i, c] of cases.entries()) await runCase(c, 100 * i);
});

Deno.test({
  name: "moe: GPT-OSS experts (bias, picked softmax, clamped SwiGLU; f32, bf16 transposed, MXFP4)",
  ...needsGpu,
}, async () => {
  const cases: Case[] = [
    { rows: 11, H: 16, shape: GPT_OSS(6, 2, 12), shared: null, format: "f32" },
    { rows: 9, H: 24, shape: GPT_OSS(5, 3, 10), shared: null, format: "bf16", kn: true, block: 2 },
    // [K, N] experts with K a multiple of 4 but N (2I = 10) not: the scalar kernel
    { rows: 6, H: 16, shape: GPT_OSS(4, 2, 5), shared: null, format: "bf16", kn: true },
    // MXFP4 needs K = H for gate/up and K = I for down as multiples of 32
    { rows: 40, H: 32, shape: GPT_OSS(4, 2, 32), shared: null, format: "mxfp4" },
    { rows: 5, H: 64, shape: GPT_OSS(8, 4, 32), shared: null, format: "mxfp4", block: 3 },
  ];
  for (const [i, c] of cases.entries()) await runCase(c, 1000 + 100 * i);
});

const LLAMA4 = (experts: number, topK: number, I: number): MoeShape => ({
  experts,
  topK,
  expertIntermediate: I,
  normTopk: false,
  routing: "sigmoid",
  inputScaled: true,
});

Deno.test({
  name: "moe: Llama 4 experts (sigmoid weight on the input, gate/up halves, ungated shared expert)",
  ...needsGpu,
}, async () => {
  const cases: Case[] = [
    { rows: 12, H: 16, shape: LLAMA4(4, 1, 8), shared: 8, format: "f32" },
    { rows: 9, H: 20, shape: LLAMA4(6, 2, 10), shared: 10, format: "bf16", kn: true, block: 4 },
  ];
  for (const [i, c] of cases.entries()) await runCase(c, 2000 + 100 * i);
});

const DEEPSEEK = (experts: number, topK: number, I: number, groups: number, topkGroup: number): MoeShape => ({
  experts,
  topK,
  expertIntermediate: I,
  normTopk: true,
  routing: "grouped",
  grouped: { groups, topkGroup, scale: 2.5 },
});

Deno.test({
  name: "moe: DeepSeek-V3 experts (grouped sigmoid routing with the correction bias, ungated shared expert)",
  ...needsGpu,
}, async () => {
  const cases: Case[] = [
    { rows: 13, H: 16, shape: DEEPSEEK(8, 2, 8, 4, 2), shared: 8, format: "f32" },
    {
      rows: 9,
      H: 20,
      shape: { ...DEEPSEEK(12, 3, 6, 3, 1), normTopk: false },
      shared: 12,
      format: "bf16",
      block: 5,
    },
    { rows: 40, H: 12, shape: DEEPSEEK(6, 4, 5, 1, 1), shared: 5, format: "bf16" },
  ];
  for (const [i, c] of cases.entries()) await runCase(c, 3000 + 100 * i);
});

Deno.test("moe: DeepSeek-V3 routing keeps the best groups by their two best biased scores; weights unbiased", () => {
  const sig = (l: number) => 1 / (1 + Math.exp(-l));
  // Groups {0,1}, {2,3}, {4,5}: the biased scores make group 1 (experts 2, 3) and group 2 the best two, so
  // expert 0, the largest logit, is not picked; expert 5's bias lifts it above expert 4.
  const logits = [3, -3, 1, 0.5, 0.2, 0];
  const bias = [0, 0, 0.5, 0.5, 0.4, 0.5];
  const r = moeRouteGroupedCpu(logits, bias, 2, false, { groups: 3, topkGroup: 2, scale: 2 });
  assert.deepEqual(r.ids, [2, 3]);
  assertClose(r.w, [2 * sig(1), 2 * sig(0.5)], "unbiased weights × scale");
  const one = moeRouteGroupedCpu(logits, bias, 3, true, { groups: 3, topkGroup: 2, scale: 1 });
  assert.deepEqual(one.ids, [2, 3, 5]);
  const sum = sig(1) + sig(0.5) + sig(0);
  assertClose(one.w, [sig(1) / sum, sig(0.5) / sum, sig(0) / sum], "renormalised");
});

Deno.test("moe: routing picks the largest logits, lower id first on ties; softmax of all or of the picked", () => {
  const logits = [0.5, 2, -1, 2, 1];
  const r = moeRouteCpu(logits, 3, false);
  assert.deepEqual(r.ids, [1, 3, 4]);
  const p = logits.map(Math.exp), sum = p.reduce((a, b) => a + b, 0);
  assertClose(r.w, [p[1] / sum, p[3] / sum, p[4] / sum], "weights");
  assertClose(moeRouteCpu(logits, 2, true).w, [0.5, 0.5], "renormalised");
  const picked = moeRouteCpu(logits, 3, false, "picked"), ps = p[1] + p[3] + p[4];
  assertClose(picked.w, [p[1] / ps, p[3] / ps, p[4] / ps], "softmax of the picked");
  const sig = (l: number) => 1 / (1 + Math.exp(-l));
  assertClose(moeRouteCpu(logits, 2, false, "sigmoid").w, [sig(2), sig(2)], "sigmoid of the picked");
});
