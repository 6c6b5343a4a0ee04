/**
 * A mixture-of-experts MLP block of a frozen target (transformers `Qwen3MoeSparseMoeBlock`,
 * `Qwen2MoeSparseMoeBlock`, `GptOssMLP`, `Llama4TextMoe`), forward only, on the normed MLP input m [N, H], added
 * to the residual x. Qwen:
 *
 *   p = softmax(m · W_routerᵀ) (f32);  (i_1..i_k) = the k largest p;  w_j = p_{i_j}, / Σ_j p_{i_j} if renormalised
 *   x += Σ_j w_j · down_{i_j}(silu(gate_{i_j}(m)) ⊙ up_{i_j}(m))  [+ σ(m · g_sharedᵀ) · shared_mlp(m)]
 *
 * GPT-OSS and Llama 4 differ in the routing weights, the activation and where the weight applies
 * ({@link MoeShape}). The experts run as grouped matmuls: the N·k assignments are sorted by expert on the GPU
 * (tokens in row order within an expert), each expert's rows form dense tiles, and one dispatch per projection
 * and block of experts computes their tiles (kernels/moe.ts, and kernels/moe_matmul.ts reading four elements per
 * load when K is a multiple of 4). No readback: the schedule's size is bounded by
 * {@link moeMaxTiles}.
 */
import * as K from "../../kernels/moe.ts";
import { matmulVec4 } from "../../kernels/moe_matmul.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { linear } from "./matmul.ts";
import { addBias } from "./elementwise.ts";
import { swigluCpu, swigluForward } from "./swiglu.ts";
import { expectDtype, expectShape } from "./check.ts";
import { ShapeError } from "../gpu/errors.ts";

/** The routing of a sparse MoE block. */
export interface MoeShape {
  /** Routed experts E. */
  experts: number;
  /** Experts per token k. */
  topK: number;
  /** Each expert's intermediate size. */
  expertIntermediate: number;
  /** Renormalise the k routing weights to sum 1 (`norm_topk_prob`). */
  normTopk: boolean;
  /**
   * How the k weights are made: "softmax" over every expert's logit, then the k picked (Qwen), "picked", the
   * softmax of the k picked logits alone (GPT-OSS), or "sigmoid" of each picked logit (Llama 4). Default
   * "softmax".
   */
  routing?: "softmax" | "picked" | "sigmoid" | "grouped";
  /**
   * DeepSeek-V3's group-limited routing (with routing "grouped"; kernels/moe.ts `routeGrouped`): `groups`
   * expert groups, `topkGroup` kept, the weights times `scale`; the correction bias is
   * {@link MoeWeights.correctionBias}.
   */
  grouped?: { groups: number; topkGroup: number; scale: number } | null;
  /**
   * Llama 4: the weight scales the expert's input rather than its output, and gate and up are one projection
   * per expert, gate its first half.
   */
  inputScaled?: boolean;
  /**
   * GPT-OSS: gate and up are one interleaved projection per expert, activated by the clamped SwiGLU with this
   * limit (`swiglu_limit`, alpha 1.702). Absent: separate gate and up, SwiGLU (Qwen).
   */
  gluLimit?: number;
}

/** GPT-OSS's alpha in σ(alpha·g) of its clamped SwiGLU (transformers `GptOssExperts.alpha`). */
export const GPT_OSS_GLU_ALPHA = 1.702;

/** A dense SwiGLU MLP's weights ([I, H], [I, H], [H, I]), Qwen2-MoE's shared expert. */
export interface DenseMlpWeights {
  /** gate_proj [I, H]. */
  gate: Tensor;
  /** up_proj [I, H]. */
  up: Tensor;
  /** down_proj [H, I]. */
  down: Tensor;
}

/**
 * Experts [first, first + count) of one projection (W_e: [N, K], y = x·W_eᵀ) in one tensor: stacked along the
 * rows ([count·N, K], f32, f16 or bf16), or with `kn` stored transposed ([count·K, N], GPT-OSS's bf16
 * experts), or with `scales` in MXFP4 (u32 words of the `*_blocks` bytes, [count·N·K/8]; the scales' bytes in
 * u32 words).
 */
export interface ExpertBlock {
  /** The block's first expert. */
  first: number;
  /** Experts in the block. */
  count: number;
  /** Their matrices. */
  tensor: Tensor;
  /** MXFP4's e8m0 scales, one byte per 32 elements (absent or null: an element dtype). */
  scales?: Tensor | null;
  /** Stored [count·K, N] rather than [count·N, K]. */
  kn?: boolean;
  /** Each expert's bias, f32 [count·N] (absent or null: none). */
  bias?: Tensor | null;
}

/** The block's weights on the device (matrices in their stored dtype). */
export interface MoeWeights {
  /** Router [E, H]. */
  router: Tensor;
  /** The router's bias, f32 [E] (GPT-OSS), else null. */
  routerBias?: Tensor | null;
  /** DeepSeek-V3's `e_score_correction_bias`, f32 [E]: added to the scores for choosing only; else null. */
  correctionBias?: Tensor | null;
  /** Every expert's gate_proj ([I, H] each), in blocks that each fit one storage binding (empty for GPT-OSS). */
  gate: ExpertBlock[];
  /** Every expert's up_proj ([I, H] each; empty for GPT-OSS). */
  up: ExpertBlock[];
  /** GPT-OSS: every expert's interleaved gate/up projection ([2I, H] each, gate rows even), else null. */
  gateUp?: ExpertBlock[] | null;
  /** Every expert's down_proj ([H, I] each). */
  down: ExpertBlock[];
  /** Qwen2-MoE's shared expert and its gate [1, H] (Llama 4's: no gate, null); null for Qwen3-MoE. */
  shared: (DenseMlpWeights & { gateProj: Tensor | null }) | null;
}

/** The block's scratch for `rows` tokens, owned by a program. */
export interface MoeScratch {
  logits: Tensor;
  ids: Tensor;
  weights: Tensor;
  sortedRow: Tensor;
  slotOf: Tensor;
  tiles: Tensor;
  /** [A, I] each (A = rows·k); null with a fused gate/up (GPT-OSS, Llama 4), which has gateUp [A, 2I]. */
  gate: Tensor | null;
  up: Tensor | null;
  gateUp: Tensor | null;
  /** Llama 4: each sorted slot's routing weight [A]; else null. */
  slotWeight: Tensor | null;
  act: Tensor;
  y: Tensor;
  /** The shared expert's intermediate tensors, output and gate logit; null without one. */
  shared: { gate: Tensor; up: Tensor; act: Tensor; out: Tensor; logit: Tensor } | null;
}

/**
 * Tiles of the schedule for `assignments` sorted slots over `experts` experts, an upper bound: expert e's
 * ⌈count_e / 32⌉ tiles sum to at most ⌈A / 32⌉ plus one per expert with a slot, of which there are at most
 * min(E, A) (a decoded token's 8 slots need 9 tiles, not E + 1).
 */
export function moeMaxTiles(assignments: number, experts: number): number {
  return Math.ceil(assignments / K.MOE_TILE_ROWS) + Math.min(experts, assignments);
}

/** One scratch tensor of the block: its field, shape, dtype and label. */
export interface MoeScratchShape {
  key: keyof Omit<MoeScratch, "shared"> | `shared.${keyof NonNullable<MoeScratch["shared"]>}`;
  dims: number[];
  dtype: "f32" | "u32";
  label: string;
}

/**
 * The scratch of a block of `shape` for `rows` tokens of width `hidden` (`sharedIntermediate`: null for no
 * shared expert), in allocation order: what {@link moeScratch} allocates and the memory plan counts.
 */
export function moeScratchShapes(
  rows: number,
  hidden: number,
  shape: MoeShape,
  sharedIntermediate: number | null,
): MoeScratchShape[] {
  const A = rows * shape.topK, I = shape.expertIntermediate, S = sharedIntermediate;
  const t = (key: MoeScratchShape["key"], dims: number[], label: string, dtype: "f32" | "u32" = "f32") => ({
    key,
    dims,
    dtype,
    label: `moe ${label}`,
  });
  return [
    t("logits", [rows, shape.experts], "router logits"),
    t("ids", [rows, shape.topK], "expert ids", "u32"),
    t("weights", [rows, shape.topK], "routing weights"),
    t("sortedRow", [A], "sorted rows", "u32"),
    t("slotOf", [A], "slots", "u32"),
    t("tiles", [moeMaxTiles(A, shape.experts), 4], "tiles", "u32"),
    ...(fusedGateUp(shape)
      ? [t("gateUp", [A, 2 * I], "gate/up")]
      : [t("gate", [A, I], "gate"), t("up", [A, I], "up")]),
    ...(shape.inputScaled ? [t("slotWeight", [A], "slot weights")] : []),
    t("act", [A, I], "act"),
    t("y", [A, hidden], "expert out"),
    ...(S === null ? [] : [
      t("shared.gate", [rows, S], "shared gate"),
      t("shared.up", [rows, S], "shared up"),
      t("shared.act", [rows, S], "shared act"),
      t("shared.out", [rows, hidden], "shared out"),
      t("shared.logit", [rows, 1], "shared gate logit"),
    ]),
  ];
}

/** Scratch of a block of `shape` for `rows` tokens of width `hidden` (`sharedIntermediate`: null for none). */
export function moeScratch(
  p: Program,
  rows: number,
  hidden: number,
  shape: MoeShape,
  sharedIntermediate: number | null,
): MoeScratch {
  const t = new Map(
    moeScratchShapes(rows, hidden, shape, sharedIntermediate).map((
      s,
    ) => [s.key, p.scratch(s.dims, s.dtype, s.label)]),
  );
  const need = (key: MoeScratchShape["key"]) => t.get(key)!;
  return {
    logits: need("logits"),
    ids: need("ids"),
    weights: need("weights"),
    sortedRow: need("sortedRow"),
    slotOf: need("slotOf"),
    tiles: need("tiles"),
    gate: t.get("gate") ?? null,
    up: t.get("up") ?? null,
    gateUp: t.get("gateUp") ?? null,
    slotWeight: t.get("slotWeight") ?? null,
    act: need("act"),
    y: need("y"),
    shared: sharedIntermediate === null ? null : {
      gate: need("shared.gate"),
      up: need("shared.up"),
      act: need("shared.act"),
      out: need("shared.out"),
      logit: need("shared.logit"),
    },
  };
}

/** Records x += the block's output for the normed input m [N, H] (see the module comment). */
export async function moeForward(
  p: Program,
  shape: MoeShape,
  w: MoeWeights,
  m: Tensor,
  x: Tensor,
  s: MoeScratch,
): Promise<void> {
  const [rows, H] = m.shape, { experts: E, topK: k, expertIntermediate: I } = shape;
  if (E > K.MOE_MAX_EXPERTS) {
    throw new ShapeError(`moeForward: ${E} experts exceed the ${K.MOE_MAX_EXPERTS} the sort kernel holds`);
  }
  expectShape("moeForward", "router", w.router, [E, H]);
  if (fusedGateUp(shape)) {
    checkBlocks("experts' gate_up_proj", w.gateUp ?? [], E, [2 * I, H]);
  } else {
    checkBlocks("experts' gate_proj", w.gate, E, [I, H]);
    checkBlocks("experts' up_proj", w.up, E, [I, H]);
  }
  checkBlocks("experts' down_proj", w.down, E, [H, I]);
  expectShape("moeForward", "x", x, [rows, H]);
  await route(p, shape, w, m, s);
  await expertActivations(p, shape, w, m, s);
  await groupedMatmul(p, s.act, w.down, false, s, s.y);
  const shared = w.shared && s.shared;
  if (shared) {
    await linear(p, m, w.shared!.gate, shared.gate);
    await linear(p, m, w.shared!.up, shared.up);
    await swigluForward(p, shared.gate, shared.up, shared.act);
    await linear(p, shared.act, w.shared!.down, shared.out);
    if (w.shared!.gateProj) await linear(p, m, w.shared!.gateProj, shared.logit);
  }
  const gated = !!w.shared?.gateProj;
  await p.add(
    {
      name: shared ? `moe.combine_shared${gated ? "" : "_ungated"}` : "moe.combine",
      code: K.combine(!!shared, gated),
      entryPoint: "combine",
    },
    [
      params(["u32", rows], ["u32", H], ["u32", k], ["u32", shape.inputScaled ? 1 : 0]),
      s.y,
      s.weights,
      s.slotOf,
      x,
      ...(shared ? [shared.out, gated ? shared.logit : null] : []),
    ],
    Math.ceil(rows * H / K.MOE_WG),
  );
}

/** Whether gate and up are one projection per expert (GPT-OSS interleaved, Llama 4 in halves). */
function fusedGateUp(shape: MoeShape): boolean {
  return shape.gluLimit !== undefined || !!shape.inputScaled;
}

/** Records the experts' activations s.act [A, I] of their gate and up projections of the routed tokens. */
async function expertActivations(
  p: Program,
  shape: MoeShape,
  w: MoeWeights,
  m: Tensor,
  s: MoeScratch,
): Promise<void> {
  const A = s.act.shape[0], I = shape.expertIntermediate, n = A * I;
  if (!fusedGateUp(shape)) {
    await groupedMatmul(p, m, w.gate, true, s, s.gate!);
    await groupedMatmul(p, m, w.up, true, s, s.up!);
    return await swigluForward(p, s.gate!, s.up!, s.act);
  }
  await groupedMatmul(p, m, w.gateUp!, true, s, s.gateUp!);
  if (shape.gluLimit !== undefined) {
    return await p.add(
      { name: "moe.clamped_glu", code: K.clampedGlu, entryPoint: "clamped_glu" },
      [params(["u32", n], ["u32", I], ["f32", shape.gluLimit], ["f32", GPT_OSS_GLU_ALPHA]), s.gateUp!, s.act],
      Math.ceil(n / K.MOE_WG),
    );
  }
  await p.add(
    { name: "moe.slot_weights", code: K.slotWeights, entryPoint: "slot_weights" },
    [params(["u32", A]), s.weights, s.slotOf, s.slotWeight!],
    Math.ceil(A / K.MOE_WG),
  );
  await p.add(
    { name: "moe.scaled_halves_glu", code: K.scaledHalvesGlu, entryPoint: "scaled_halves_glu" },
    [params(["u32", n], ["u32", I]), s.gateUp!, s.slotWeight!, s.act],
    Math.ceil(n / K.MOE_WG),
  );
}

/**
 * Records the routing: logits = m·routerᵀ (+ bias), each token's k experts and weights, and the assignments
 * sorted by expert into the grouped matmuls' tile schedule.
 */
async function route(p: Program, shape: MoeShape, w: MoeWeights, m: Tensor, s: MoeScratch): Promise<void> {
  const rows = m.shape[0], { experts: E, topK: k } = shape, A = rows * k;
  await linear(p, m, w.router, s.logits);
  if (w.routerBias) await addBias(p, s.logits, w.routerBias);
  if (shape.routing === "grouped") await routeGrouped(p, shape, w, s);
  else await routeTopk(p, shape, s);
  await p.add(
    { name: "moe.sort", code: K.sort, entryPoint: "sort" },
    [
      params(["u32", A], ["u32", E], ["u32", k], ["u32", s.tiles.shape[0]]),
      s.ids,
      s.sortedRow,
      s.slotOf,
      s.tiles,
    ],
    [1, 1, 1],
  );
}

/** Records each token's k experts and weights from s.logits (Qwen, GPT-OSS, Llama 4: kernels/moe.ts `route`). */
async function routeTopk(p: Program, shape: MoeShape, s: MoeScratch): Promise<void> {
  const rows = s.logits.shape[0], { experts: E, topK: k } = shape;
  const mode =
    { softmax: 0, picked: 1, sigmoid: 2 }[(shape.routing ?? "softmax") as "softmax" | "picked" | "sigmoid"];
  await p.add(
    { name: "moe.route", code: K.route, entryPoint: "route" },
    [
      params(["u32", rows], ["u32", E], ["u32", k], ["u32", shape.normTopk ? 1 : 0], ["u32", mode]),
      s.logits,
      s.ids,
      s.weights,
    ],
    Math.ceil(rows / K.MOE_WG),
  );
}

/** Records DeepSeek-V3's group-limited routing from s.logits (kernels/moe.ts `routeGrouped`). */
async function routeGrouped(p: Program, shape: MoeShape, w: MoeWeights, s: MoeScratch): Promise<void> {
  const rows = s.logits.shape[0], { experts: E, topK: k } = shape, g = shape.grouped;
  if (!g || !w.correctionBias) {
    throw new ShapeError("moeForward: grouped routing needs shape.grouped and the correction bias");
  }
  if (g.groups > K.MOE_MAX_GROUPS || E % g.groups !== 0 || g.topkGroup > g.groups) {
    throw new ShapeError(
      `moeForward: ${g.groups} groups (keeping ${g.topkGroup}) of ${E} experts: at most ${K.MOE_MAX_GROUPS} ` +
        "groups dividing the experts",
    );
  }
  expectShape("moeForward", "correction bias", w.correctionBias, [E]);
  await p.add(
    { name: "moe.route_grouped", code: K.routeGrouped, entryPoint: "route_grouped" },
    [
      params(
        ["u32", rows],
        ["u32", E],
        ["u32", k],
        ["u32", shape.normTopk ? 1 : 0],
        ["u32", g.groups],
        ["u32", g.topkGroup],
        ["f32", g.scale],
      ),
      s.logits,
      w.correctionBias,
      s.ids,
      s.weights,
    ],
    Math.ceil(rows / K.MOE_WG),
  );
}

/** The format of a block's weights. */
function formatOf(b: ExpertBlock): K.ExpertFormat {
  return b.scales ? "mxfp4" : b.tensor.dtype as K.ExpertFormat;
}

/** Checks that `blocks` hold experts 0..E−1 in order, each [N, K] = `shape`, in one format and layout. */
function checkBlocks(name: string, blocks: ExpertBlock[], E: number, [N, Kd]: [number, number]): void {
  let next = 0;
  for (const b of blocks) {
    const where = `${name} [${b.first}:${b.first + b.count}]`;
    if (b.first !== next || formatOf(b) !== formatOf(blocks[0]) || !!b.kn !== !!blocks[0].kn) {
      throw new ShapeError(
        `moeForward: ${name}: blocks must hold experts 0..${E - 1} in order, in one format and layout`,
      );
    }
    if (b.scales) {
      if (Kd % 32 !== 0) throw new ShapeError(`moeForward: ${where}: MXFP4 needs K (${Kd}) a multiple of 32`);
      expectShape("moeForward", where, b.tensor, [b.count * N * Kd / 8]);
      expectShape("moeForward", `${where} scales`, b.scales, [Math.ceil(b.count * N * Kd / 128)]);
    } else {
      expectShape("moeForward", where, b.tensor, b.kn ? [b.count * Kd, N] : [b.count * N, Kd]);
    }
    if (b.bias) expectShape("moeForward", `${where} bias`, b.bias, [b.count * N]);
    next += b.count;
  }
  if (next !== E) throw new ShapeError(`moeForward: ${name}: blocks hold ${next} experts, expected ${E}`);
}

/**
 * Records out[s] = a[row(s)] · W_e(s)ᵀ over the sorted slots' tiles (row(s) = the token row when `gather`, else
 * s), one dispatch per block of experts (its tiles; the others' workgroups return at once).
 */
async function groupedMatmul(
  p: Program,
  a: Tensor,
  blocks: ExpertBlock[],
  gather: boolean,
  s: MoeScratch,
  out: Tensor,
): Promise<void> {
  expectDtype("moe grouped matmul", "a", a, "f32");
  const [slots, N] = out.shape, Kdim = a.shape[1], maxTiles = s.tiles.shape[0];
  for (const b of blocks) {
    const format = formatOf(b), kn = !!b.kn, bias = !!b.bias;
    // Four elements per load where the shapes allow it (kernels/moe_matmul.ts); MXFP4 has K % 32 == 0.
    const vec4 = Kdim % 4 === 0 && (!kn || N % 4 === 0);
    const name = `moe.grouped_matmul.${format}${kn ? ".kn" : ""}${bias ? ".bias" : ""}${vec4 ? ".vec4" : ""}`;
    const code = vec4 ? matmulVec4(format, kn, bias) : K.matmul(format, kn, bias);
    await p.add(
      { name, code, entryPoint: "grouped_matmul" },
      [
        params(["u32", N], ["u32", Kdim], ["u32", gather ? 1 : 0], ["u32", b.first], ["u32", b.count]),
        a,
        b.tensor,
        s.sortedRow,
        s.tiles,
        out,
        b.scales ?? null,
        b.bias ?? null,
      ],
      [Math.ceil(N / K.MOE_TILE_COLS), maxTiles, 1],
      name,
      2 * slots * N * Kdim * b.count / expertsIn(blocks),
    );
  }
}

/** Experts held by `blocks`. */
function expertsIn(blocks: ExpertBlock[]): number {
  return blocks.reduce((n, b) => n + b.count, 0);
}

/** The block's weights on the host, f32 (tests' reference), each expert's matrix as W_e [N, K] (y = x·W_eᵀ). */
export interface MoeWeightsCpu {
  router: Float32Array<ArrayBuffer>;
  /** [E], or absent. */
  routerBias?: Float32Array<ArrayBuffer>;
  /** DeepSeek-V3's correction bias [E] (grouped routing), or absent. */
  correctionBias?: Float32Array<ArrayBuffer>;
  /** [E, I, H] each (Qwen); absent with gateUp. */
  gate?: Float32Array<ArrayBuffer>;
  up?: Float32Array<ArrayBuffer>;
  /** GPT-OSS: [E, 2I, H], gate rows even, and its bias [E, 2I]; Llama 4: [E, 2I, H], gate rows first. */
  gateUp?: Float32Array<ArrayBuffer>;
  gateUpBias?: Float32Array<ArrayBuffer>;
  /** [E, H, I], and its bias [E, H] (GPT-OSS). */
  down: Float32Array<ArrayBuffer>;
  downBias?: Float32Array<ArrayBuffer>;
  shared?:
    | {
      gate: Float32Array<ArrayBuffer>;
      up: Float32Array<ArrayBuffer>;
      down: Float32Array<ArrayBuffer>;
      /** null: the shared expert is not gated (Llama 4). */
      gateProj: Float32Array<ArrayBuffer> | null;
      size: number;
    }
    | null;
}

/** y = x · Wᵀ (+ b) for x [rows, K], W [N, K] in f64. */
function matmulTCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rows: number,
  N: number,
  Kd: number,
  b?: ArrayLike<number>,
): Float64Array {
  const y = new Float64Array(rows * N);
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < N; n++) {
      let acc = b ? b[n] : 0;
      for (let k = 0; k < Kd; k++) acc += x[r * Kd + k] * w[n * Kd + k];
      y[r * N + n] = acc;
    }
  }
  return y;
}

/**
 * The routing of one token: the k experts (largest logit first, lower id on ties) and their weights (see
 * {@link MoeShape.routing}).
 */
export function moeRouteCpu(
  logits: ArrayLike<number>,
  topK: number,
  renorm: boolean,
  routing: Exclude<MoeShape["routing"], "grouped"> = "softmax",
): { ids: number[]; w: number[] } {
  const E = logits.length;
  const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => logits[b] - logits[a] || a - b);
  const ids = order.slice(0, topK);
  const pool = routing === "picked" ? ids : order;
  const m = Math.max(...pool.map((e) => logits[e]));
  const sum = pool.reduce((a, e) => a + Math.exp(logits[e] - m), 0);
  const w = ids.map((e) =>
    routing === "sigmoid" ? 1 / (1 + Math.exp(-logits[e])) : Math.exp(logits[e] - m) / sum
  );
  const picked = w.reduce((a, b) => a + b, 0);
  return { ids, w: renorm ? w.map((v) => v / picked) : w };
}

/**
 * DeepSeek-V3's group-limited routing of one token (kernels/moe.ts `routeGrouped`, transformers
 * `DeepseekV3TopkRouter`): groups by the sum of their two best biased scores, the k best biased scores in the
 * kept groups (lower index first on ties), weighted by the unbiased sigmoid scores.
 */
export function moeRouteGroupedCpu(
  logits: ArrayLike<number>,
  bias: ArrayLike<number>,
  topK: number,
  renorm: boolean,
  g: { groups: number; topkGroup: number; scale: number },
): { ids: number[]; w: number[] } {
  const E = logits.length, per = E / g.groups;
  const score = Array.from({ length: E }, (_, e) => 1 / (1 + Math.exp(-logits[e])));
  const choice = score.map((v, e) => v + bias[e]);
  const best = (xs: number[], n: number) =>
    xs.map((_, i) => i).sort((a, b) => xs[b] - xs[a] || a - b).slice(0, n);
  const groupScore = Array.from({ length: g.groups }, (_, gi) => {
    const members = choice.slice(gi * per, (gi + 1) * per);
    return best(members, 2).reduce((a, i) => a + members[i], 0);
  });
  const kept = new Set(best(groupScore, g.topkGroup));
  const ids = best(choice.map((c, e) => kept.has(Math.floor(e / per)) ? c : -Infinity), topK);
  const w = ids.map((e) => score[e]);
  const sum = w.reduce((a, b) => a + b, 0) + 1e-20;
  return { ids, w: w.map((v) => (renorm ? v / sum : v) * g.scale) };
}

/** GPT-OSS's clamped SwiGLU of an interleaved gate/up row (kernels/moe.ts `clampedGlu`). */
function clampedGluCpu(gu: Float64Array, limit: number): Float64Array {
  return Float64Array.from({ length: gu.length / 2 }, (_, i) => {
    const g = Math.min(gu[2 * i], limit), u = Math.min(Math.max(gu[2 * i + 1], -limit), limit);
    return (u + 1) * g / (1 + Math.exp(-GPT_OSS_GLU_ALPHA * g));
  });
}

/** Expert e's activation [I] of one token x [H] (Llama 4: of its input scaled by the routing weight `scale`). */
function expertActCpu(
  x: Float32Array,
  e: number,
  H: number,
  shape: MoeShape,
  w: MoeWeightsCpu,
  scale: number,
): Float64Array {
  const I = shape.expertIntermediate, at = (a: Float32Array, n: number) => a.subarray(e * n, (e + 1) * n);
  if (shape.inputScaled) {
    const gu = matmulTCpu(x.map((v) => v * scale), at(w.gateUp!, 2 * I * H), 1, 2 * I, H);
    return swigluCpu(gu.subarray(0, I), gu.subarray(I));
  }
  if (shape.gluLimit !== undefined) {
    const gu = matmulTCpu(x, at(w.gateUp!, 2 * I * H), 1, 2 * I, H, w.gateUpBias && at(w.gateUpBias, 2 * I));
    return clampedGluCpu(gu, shape.gluLimit);
  }
  const g = matmulTCpu(x, at(w.gate!, I * H), 1, I, H), u = matmulTCpu(x, at(w.up!, I * H), 1, I, H);
  return swigluCpu(g, u);
}

/** The block's output (to be added to the residual) for m [rows, H], in f64. */
export function moeCpu(
  m: Float32Array,
  rows: number,
  H: number,
  shape: MoeShape,
  w: MoeWeightsCpu,
): Float64Array {
  const { experts: E, topK, expertIntermediate: I } = shape;
  const logits = matmulTCpu(m, w.router, rows, E, H, w.routerBias);
  const out = new Float64Array(rows * H);
  for (let r = 0; r < rows; r++) {
    const x = m.subarray(r * H, (r + 1) * H);
    const row = logits.subarray(r * E, (r + 1) * E);
    const routed = shape.routing === "grouped"
      ? moeRouteGroupedCpu(row, w.correctionBias!, topK, shape.normTopk, shape.grouped!)
      : moeRouteCpu(row, topK, shape.normTopk, shape.routing);
    routed.ids.forEach((e, j) => {
      const down = w.down.subarray(e * H * I, (e + 1) * H * I);
      const act = expertActCpu(x, e, H, shape, w, routed.w[j]);
      const y = matmulTCpu(act, down, 1, H, I, w.downBias?.subarray(e * H, (e + 1) * H));
      const weight = shape.inputScaled ? 1 : routed.w[j];
      for (let c = 0; c < H; c++) out[r * H + c] += weight * y[c];
    });
    if (w.shared) {
      const S = w.shared.size;
      const g = matmulTCpu(x, w.shared.gate, 1, S, H), u = matmulTCpu(x, w.shared.up, 1, S, H);
      const y = matmulTCpu(swigluCpu(g, u), w.shared.down, 1, H, S);
      const gp = w.shared.gateProj;
      const sig = gp ? 1 / (1 + Math.exp(-matmulTCpu(x, gp, 1, 1, H)[0])) : 1;
      for (let c = 0; c < H; c++) out[r * H + c] += sig * y[c];
    }
  }
  return out;
}
