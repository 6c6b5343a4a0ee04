/**
 * A mixture-of-experts MLP block of a frozen target (transformers `Qwen3MoeSparseMoeBlock`,
 * `Qwen2MoeSparseMoeBlock`), forward only, on the normed MLP input m [N, H], added to the residual x:
 *
 *   p = softmax(m · W_routerᵀ) (f32);  (i_1..i_k) = the k largest p;  w_j = p_{i_j}, / Σ_j p_{i_j} if renormalised
 *   x += Σ_j w_j · down_{i_j}(silu(gate_{i_j}(m)) ⊙ up_{i_j}(m))  [+ σ(m · g_sharedᵀ) · shared_mlp(m)]
 *
 * The experts run as grouped matmuls: the N·k assignments are sorted by expert on the GPU (tokens in row order
 * within an expert), each expert's rows form dense tiles, and one dispatch per projection computes every
 * expert's tiles (kernels/moe.ts). No readback: the schedule's size is bounded by ⌈N·k / 32⌉ + E tiles.
 */
import * as K from "../../kernels/moe.ts";
import type { MatmulBType } from "../../kernels/matmul.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { linear } from "./matmul.ts";
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
}

/** A dense SwiGLU MLP's weights ([I, H], [I, H], [H, I]), Qwen2-MoE's shared expert. */
export interface DenseMlpWeights {
  /** gate_proj [I, H]. */
  gate: Tensor;
  /** up_proj [I, H]. */
  up: Tensor;
  /** down_proj [H, I]. */
  down: Tensor;
}

/** Experts [first, first + count) of one projection stacked along the rows of one tensor ([count·N, K]). */
export interface ExpertBlock {
  /** The block's first expert. */
  first: number;
  /** Experts in the block. */
  count: number;
  /** Their matrices stacked along the rows. */
  tensor: Tensor;
}

/** The block's weights on the device (matrices in their stored dtype). */
export interface MoeWeights {
  /** Router [E, H]. */
  router: Tensor;
  /** Every expert's gate_proj ([I, H] each), in blocks that each fit one storage binding. */
  gate: ExpertBlock[];
  /** Every expert's up_proj ([I, H] each). */
  up: ExpertBlock[];
  /** Every expert's down_proj ([H, I] each). */
  down: ExpertBlock[];
  /** Qwen2-MoE's shared expert and its gate [1, H]; null for Qwen3-MoE. */
  shared: (DenseMlpWeights & { gateProj: Tensor }) | null;
}

/** The block's scratch for `rows` tokens, owned by a program. */
export interface MoeScratch {
  logits: Tensor;
  ids: Tensor;
  weights: Tensor;
  sortedRow: Tensor;
  slotOf: Tensor;
  tiles: Tensor;
  gate: Tensor;
  up: Tensor;
  act: Tensor;
  y: Tensor;
  /** The shared expert's intermediate tensors, output and gate logit; null without one. */
  shared: { gate: Tensor; up: Tensor; act: Tensor; out: Tensor; logit: Tensor } | null;
}

/** Tiles of the schedule for `assignments` sorted slots over `experts` experts (an upper bound). */
export function moeMaxTiles(assignments: number, experts: number): number {
  return Math.ceil(assignments / K.MOE_TILE_ROWS) + experts;
}

/** Scratch of a block of `shape` for `rows` tokens of width `hidden` (`sharedIntermediate`: null for none). */
export function moeScratch(
  p: Program,
  rows: number,
  hidden: number,
  shape: MoeShape,
  sharedIntermediate: number | null,
): MoeScratch {
  const A = rows * shape.topK, I = shape.expertIntermediate;
  const s = (dims: number[], label: string) => p.scratch(dims, "f32", `moe ${label}`);
  const u = (dims: number[], label: string) => p.scratch(dims, "u32", `moe ${label}`);
  const Is = sharedIntermediate;
  return {
    logits: s([rows, shape.experts], "router logits"),
    ids: u([rows, shape.topK], "expert ids"),
    weights: s([rows, shape.topK], "routing weights"),
    sortedRow: u([A], "sorted rows"),
    slotOf: u([A], "slots"),
    tiles: u([moeMaxTiles(A, shape.experts), 4], "tiles"),
    gate: s([A, I], "gate"),
    up: s([A, I], "up"),
    act: s([A, I], "act"),
    y: s([A, hidden], "expert out"),
    shared: Is === null ? null : {
      gate: s([rows, Is], "shared gate"),
      up: s([rows, Is], "shared up"),
      act: s([rows, Is], "shared act"),
      out: s([rows, hidden], "shared out"),
      logit: s([rows, 1], "shared gate logit"),
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
  checkBlocks("experts' gate_proj", w.gate, E, [I, H]);
  checkBlocks("experts' up_proj", w.up, E, [I, H]);
  checkBlocks("experts' down_proj", w.down, E, [H, I]);
  expectShape("moeForward", "x", x, [rows, H]);
  const A = rows * k, maxTiles = moeMaxTiles(A, E);
  await linear(p, m, w.router, s.logits);
  await p.add(
    { name: "moe.route", code: K.route, entryPoint: "route" },
    [
      params(["u32", rows], ["u32", E], ["u32", k], ["u32", shape.normTopk ? 1 : 0]),
      s.logits,
      s.ids,
      s.weights,
    ],
    Math.ceil(rows / K.MOE_WG),
  );
  await p.add(
    { name: "moe.sort", code: K.sort, entryPoint: "sort" },
    [params(["u32", A], ["u32", E], ["u32", k], ["u32", maxTiles]), s.ids, s.sortedRow, s.slotOf, s.tiles],
    [1, 1, 1],
  );
  await groupedMatmul(p, m, w.gate, true, s, s.gate);
  await groupedMatmul(p, m, w.up, true, s, s.up);
  await swigluForward(p, s.gate, s.up, s.act);
  await groupedMatmul(p, s.act, w.down, false, s, s.y);
  const shared = w.shared && s.shared;
  if (shared) {
    await linear(p, m, w.shared!.gate, shared.gate);
    await linear(p, m, w.shared!.up, shared.up);
    await swigluForward(p, shared.gate, shared.up, shared.act);
    await linear(p, shared.act, w.shared!.down, shared.out);
    await linear(p, m, w.shared!.gateProj, shared.logit);
  }
  await p.add(
    { name: shared ? "moe.combine_shared" : "moe.combine", code: K.combine(!!shared), entryPoint: "combine" },
    [
      params(["u32", rows], ["u32", H], ["u32", k], ["u32", 0]),
      s.y,
      s.weights,
      s.slotOf,
      x,
      ...(shared ? [shared.out, shared.logit] : []),
    ],
    Math.ceil(rows * H / K.MOE_WG),
  );
}

/** Checks that `blocks` hold experts 0..E−1 in order, each of `shape`, in one dtype. */
function checkBlocks(name: string, blocks: ExpertBlock[], E: number, shape: [number, number]): void {
  let next = 0;
  for (const b of blocks) {
    if (b.first !== next || b.tensor.dtype !== blocks[0].tensor.dtype) {
      throw new ShapeError(
        `moeForward: ${name}: blocks must hold experts 0..${E - 1} in order, in one dtype`,
      );
    }
    expectShape("moeForward", `${name} [${b.first}:${b.first + b.count}]`, b.tensor, [
      b.count * shape[0],
      shape[1],
    ]);
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
  for (const { first, count, tensor: w } of blocks) {
    expectDtype("moe grouped matmul", "w", w, "f32", "f16", "bf16");
    const bType = w.dtype as MatmulBType;
    await p.add(
      { name: `moe.grouped_matmul.${bType}`, code: K.matmul(bType), entryPoint: "grouped_matmul" },
      [
        params(["u32", N], ["u32", Kdim], ["u32", gather ? 1 : 0], ["u32", first], ["u32", count]),
        a,
        w,
        s.sortedRow,
        s.tiles,
        out,
      ],
      [Math.ceil(N / K.MOE_TILE_COLS), maxTiles, 1],
      `moe.grouped_matmul.${bType}`,
      2 * slots * N * Kdim * count / expertsIn(blocks),
    );
  }
}

/** Experts held by `blocks`. */
function expertsIn(blocks: ExpertBlock[]): number {
  return blocks.reduce((n, b) => n + b.count, 0);
}

/** The block's weights on the host, f32 (tests' reference). */
export interface MoeWeightsCpu {
  router: Float32Array<ArrayBuffer>;
  gate: Float32Array<ArrayBuffer>;
  up: Float32Array<ArrayBuffer>;
  down: Float32Array<ArrayBuffer>;
  shared:
    | {
      gate: Float32Array<ArrayBuffer>;
      up: Float32Array<ArrayBuffer>;
      down: Float32Array<ArrayBuffer>;
      gateProj: Float32Array<ArrayBuffer>;
      size: number;
    }
    | null;
}

/** y = x · Wᵀ for x [rows, K], W [N, K] in f64. */
function matmulTCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rows: number,
  N: number,
  Kd: number,
): Float64Array {
  const y = new Float64Array(rows * N);
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < Kd; k++) acc += x[r * Kd + k] * w[n * Kd + k];
      y[r * N + n] = acc;
    }
  }
  return y;
}

/** The routing of one token: the k experts (largest probability first, lower id on ties) and their weights. */
export function moeRouteCpu(
  logits: ArrayLike<number>,
  topK: number,
  renorm: boolean,
): { ids: number[]; w: number[] } {
  const E = logits.length, m = Math.max(...Array.from(logits));
  const p = Array.from(logits, (l) => Math.exp(l - m));
  const sum = p.reduce((a, b) => a + b, 0);
  const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => logits[b] - logits[a] || a - b);
  const ids = order.slice(0, topK), w = ids.map((e) => p[e] / sum);
  const picked = w.reduce((a, b) => a + b, 0);
  return { ids, w: renorm ? w.map((v) => v / picked) : w };
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
  const logits = matmulTCpu(m, w.router, rows, E, H);
  const out = new Float64Array(rows * H);
  for (let r = 0; r < rows; r++) {
    const x = m.subarray(r * H, (r + 1) * H);
    const { ids, w: weights } = moeRouteCpu(logits.subarray(r * E, (r + 1) * E), topK, shape.normTopk);
    ids.forEach((e, j) => {
      const g = matmulTCpu(x, w.gate.subarray(e * I * H, (e + 1) * I * H), 1, I, H);
      const u = matmulTCpu(x, w.up.subarray(e * I * H, (e + 1) * I * H), 1, I, H);
      const y = matmulTCpu(swigluCpu(g, u), w.down.subarray(e * H * I, (e + 1) * H * I), 1, H, I);
      for (let c = 0; c < H; c++) out[r * H + c] += weights[j] * y[c];
    });
    if (w.shared) {
      const S = w.shared.size;
      const g = matmulTCpu(x, w.shared.gate, 1, S, H), u = matmulTCpu(x, w.shared.up, 1, S, H);
      const y = matmulTCpu(swigluCpu(g, u), w.shared.down, 1, H, S);
      const logit = matmulTCpu(x, w.shared.gateProj, 1, 1, H)[0];
      const sig = 1 / (1 + Math.exp(-logit));
      for (let c = 0; c < H; c++) out[r * H + c] += sig * y[c];
    }
  }
  return out;
}
