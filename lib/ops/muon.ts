/**
 * One Muon update of a weight matrix (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; as
 * torch.optim.Muon computes it, the optimizer vLLM's speculators trains drafts with), with a plain-TS CPU
 * reference. Momentum with Nesterov on the clipped gradient, then the quintic Newton–Schulz iteration that
 * maps the update to the nearest semi-orthogonal matrix, then a decoupled-decay step (element-wise parts in
 * kernels/muon.ts):
 *
 *   X₀ = u / max(‖u‖_F, eps);   for s = 1..steps:  A = X Xᵀ,  X ← a·X + (b·A + c·A·A)·X
 *
 * with (a, b, c) = (3.4445, −4.7750, 2.0315); a tall matrix (rows > cols) iterates on Xᵀ, written here as
 * A = XᵀX and X ← a·X + X·(b·A + c·A·A), so nothing is transposed. The step is lr · adjust · X with adjust =
 * 0.2·√max(rows, cols) ("match_rms_adamw", Liu et al. 2025 "Muon is scalable", which gives the update
 * AdamW's RMS) or √max(1, rows/cols) (torch's "original"). torch runs the iteration in the matrix's dtype;
 * here it is f32.
 *
 * A matrix over one storage binding (an 8B draft's fc [4096, 12288] f32 is 192 MiB; lavapipe binds 128 MiB)
 * runs in row blocks that each bind (lib/ops/blocks.ts `rowBlocks`): the element-wise parts block by block
 * (bit for bit), the iteration's products as sums of block products (lib/ops/blocked_products.ts). A and P
 * take a wide X's row blocks (A = X Xᵀ is built block by block), or for a tall X row blocks of their own
 * (one when they bind). The matrices of an update share one scratch pool, sized for the largest.
 */
import * as K from "../../kernels/muon.ts";
import { params, type Program } from "../gpu/program.ts";
import { ShapeError } from "../gpu/errors.ts";
import { Tensor } from "../tensor.ts";
import { ADAMW_STATE_SIZE } from "./adamw.ts";
import { expectDtype, expectSameShape, expectShape } from "./check.ts";
import { blockElements, flatBlocks, type RowBlock, rowBlocks } from "./blocks.ts";
import {
  type BlockedMatrix,
  blockedNN,
  blockedNT,
  blockedTN,
  blockRows,
  tileElements,
} from "./blocked_products.ts";
import { scale } from "./elementwise.ts";
import { globalNormPartialsSize, globalNormSquared } from "./reduce.ts";

/** The quintic Newton–Schulz coefficients (a, b, c) of Muon's reference implementation and torch's. */
export const NEWTON_SCHULZ = [3.4445, -4.775, 2.0315] as const;

/** How the learning rate is scaled by the matrix's shape. */
export type MuonLrAdjust = "match_rms_adamw" | "original";

/** Muon's hyper-parameters, fixed for a run. */
export interface MuonOptions {
  /** Momentum μ (default 0.95). */
  momentum: number;
  /** Nesterov momentum (default true). */
  nesterov: boolean;
  /** Newton–Schulz iterations (default 5). */
  nsSteps: number;
  /** Floor of ‖u‖_F before the iteration (default 1e-7, torch's). */
  eps: number;
  /** Decoupled weight decay: w ← w·(1 − lr·weightDecay) (default 0.1, speculators'). */
  weightDecay: number;
  /** The shape scaling of the learning rate (default "match_rms_adamw", speculators'). */
  adjustLr: MuonLrAdjust;
}

/** speculators' Muon settings (its trainer's defaults). */
export const MUON_DEFAULTS: Readonly<MuonOptions> = {
  momentum: 0.95,
  nesterov: true,
  nsSteps: 5,
  eps: 1e-7,
  weightDecay: 0.1,
  adjustLr: "match_rms_adamw",
};

/** The learning-rate factor of a [rows, cols] matrix under `adjust`. */
export function muonLrFactor(rows: number, cols: number, adjust: MuonLrAdjust): number {
  return adjust === "match_rms_adamw"
    ? 0.2 * Math.sqrt(Math.max(rows, cols))
    : Math.sqrt(Math.max(1, rows / cols));
}

/** Whether a parameter is Muon's: a matrix with both sides > 1 that is not a vocabulary table (lm_head, embeddings). */
export function isMuonMatrix(name: string, shape: readonly number[]): boolean {
  return shape.length === 2 && Math.min(...shape) > 1 && !/lm_head|embed/.test(name);
}

/** The scratch of one {@link muonStep} for a [rows, cols] matrix: views of a {@link MuonScratchPool}. */
export interface MuonScratch {
  /** The update, then the iterates (two, alternating) [rows, cols], in row blocks that bind. */
  x: [BlockedMatrix, BlockedMatrix];
  /** A = X Xᵀ (or XᵀX) and b·A + c·A·A, [s, s] with s = min(rows, cols), in row blocks that bind. */
  gram: BlockedMatrix;
  poly: BlockedMatrix;
  /** ‖X₀‖² and its partial sums. */
  normSq: Tensor;
  partials: Tensor;
  /** The tile of a block's columns (lib/ops/blocked_products.ts), null when no product splits columns. */
  tile: Tensor | null;
}

/**
 * The scratch every Muon matrix of an update shares, sized for the largest: the matrices are updated one
 * after another, so one update tensor, one iterate, one A and one P serve them all (one per shape would hold
 * 1.4 GiB for an 8B draft's five shapes instead of 0.6).
 */
export interface MuonScratchPool {
  tensors: Tensor[];
}

/** What decides a matrix's row blocks: the device's binding limits. */
export type BindingLimits = Parameters<typeof rowBlocks>[0];

/**
 * The row blocks of X [rows, cols] and of A and P [s, s]: a wide X's rows split A's and P's rows alike (A =
 * X Xᵀ is built block by block), a tall one's Gram matrices take their own.
 */
function muonBlocks(rows: number, cols: number, limits: BindingLimits): { x: RowBlock[]; gram: RowBlock[] } {
  const x = rowBlocks(limits, rows, cols, [4]), s = Math.min(rows, cols);
  return { x, gram: rows <= cols ? x : rowBlocks(limits, s, s, [4]) };
}

/** Elements of the scratch tile of a [rows, cols] matrix's products (0: none). */
function muonTileElements(rows: number, cols: number, limits: BindingLimits): number {
  const b = muonBlocks(rows, cols, limits);
  return tileElements(rows <= cols ? b.x : [...b.x, ...b.gram], b.gram);
}

/**
 * The f32 tensors of the {@link MuonScratchPool} of matrices of `shapes` ([rows, cols] each), in allocation
 * order: [label, elements]; none without a matrix.
 */
export function muonScratchShapes(
  shapes: readonly (readonly number[])[],
  limits: BindingLimits,
): [string, number[]][] {
  if (shapes.length === 0) return [];
  const most = (f: (rows: number, cols: number) => number) => Math.max(...shapes.map(([r, c]) => f(r, c)));
  const x = most((r, c) => r * c), gram = most((r, c) => Math.min(r, c) ** 2);
  const tile = most((r, c) => muonTileElements(r, c, limits));
  const partials = most((r, c) => globalNormPartialsSize([{ size: r * c }]));
  return [
    ["muon update", [x]],
    ["muon iterate", [x]],
    ["muon gram", [gram]],
    ["muon gram polynomial", [gram]],
    ["muon update norm²", [1]],
    ["muon norm partials", [Math.max(1, partials)]],
    ...(tile > 0 ? [["muon block tile", [tile]] as [string, number[]]] : []),
  ];
}

/** Allocates the {@link MuonScratchPool} of matrices of `shapes`. */
export function muonScratchPool(gpu: Tensor["gpu"], shapes: readonly (readonly number[])[]): MuonScratchPool {
  const specs = muonScratchShapes(shapes, gpu.limits);
  return { tensors: specs.map(([name, shape]) => Tensor.empty(gpu, shape, "f32", name)) };
}

/** Frees a {@link MuonScratchPool}. */
export function destroyMuonScratchPool(pool: MuonScratchPool): void {
  for (const t of pool.tensors) t.destroy();
}

/** The scratch of a [rows, cols] matrix: views of `pool` (made for a list of shapes that held this one). */
export function muonScratch(pool: MuonScratchPool, rows: number, cols: number): MuonScratch {
  const [x0, x1, gram, poly, normSq, partials, tile] = pool.tensors, s = Math.min(rows, cols);
  const b = muonBlocks(rows, cols, x0.gpu.limits);
  const view = (t: Tensor, shape: number[]) => t.view(0, shape, t.label);
  return {
    x: [{ t: view(x0, [rows, cols]), blocks: b.x }, { t: view(x1, [rows, cols]), blocks: b.x }],
    gram: { t: view(gram, [s, s]), blocks: b.gram },
    poly: { t: view(poly, [s, s]), blocks: b.gram },
    normSq,
    partials,
    tile: tile ?? null,
  };
}

/** Tensors of {@link muonStep}; param, grad and buf are f32 [rows, cols]. */
export interface MuonTensors {
  /** The f32 master weights, updated in place. */
  param: Tensor;
  /** Its gradient (read only). */
  grad: Tensor;
  /** The momentum buffer, updated in place (zeros before update 1). */
  buf: Tensor;
  /** f32 [1]: Σ g² over every gradient of the model, for the global clip coefficient. */
  normSq: Tensor;
  /** f32 [4]: the AdamW update state (lr, …, max_norm; lib/ops/adamw.ts `adamwState`). */
  state: Tensor;
}

/**
 * Records one clipped Muon update of one matrix. Its learning rate is `lrRatio` times the state's (AdamW's
 * scheduled rate), times {@link muonLrFactor}.
 */
export async function muonStep(
  p: Program,
  t: MuonTensors,
  scratch: MuonScratch,
  opts: MuonOptions & { lrRatio: number },
): Promise<void> {
  const op = "muonStep";
  for (const [name, x] of Object.entries(t)) expectDtype(op, name, x, "f32");
  if (t.param.shape.length !== 2) throw new ShapeError(`${op}: ${t.param.label} is not a matrix`);
  expectSameShape(op, "param", t.param, "grad", t.grad);
  expectSameShape(op, "param", t.param, "buf", t.buf);
  expectSameShape(op, "param", t.param, "scratch.x", scratch.x[0].t);
  expectShape(op, "normSq", t.normSq, [1]);
  expectShape(op, "state", t.state, [ADAMW_STATE_SIZE]);
  const [rows, cols] = t.param.shape, u = scratch.x[0].t;
  // The element-wise parts go block by block when the matrix is over one binding (bit for bit).
  const per = blockElements(t.param), flat = (x: Tensor) => flatBlocks(x, per);
  const [grads, bufs, us] = [t.grad, t.buf, u].map(flat);
  for (const [i, g] of grads.entries()) {
    const n = g.size;
    await p.add(
      { name: "muon.momentum", code: K.muonMomentum, entryPoint: "main" },
      [
        params(["u32", n], ["f32", opts.momentum], ["f32", 1 - opts.momentum], [
          "u32",
          opts.nesterov ? 1 : 0,
        ]),
        g,
        bufs[i],
        us[i],
        t.normSq,
        t.state,
      ],
      Math.ceil(n / K.MUON_WG),
      `muon.momentum (${t.param.label})`,
    );
  }
  await globalNormSquared(p, [u], scratch.partials, scratch.normSq);
  for (const ub of us) {
    await p.add(
      { name: "muon.normalize", code: K.muonNormalize, entryPoint: "main" },
      [params(["u32", ub.size], ["f32", opts.eps]), ub, scratch.normSq],
      Math.ceil(ub.size / K.MUON_WG),
    );
  }
  const x = await newtonSchulz(p, scratch, opts.nsSteps, rows > cols);
  const adjust = muonLrFactor(rows, cols, opts.adjustLr), xs = flat(x.t);
  for (const [i, w] of flat(t.param).entries()) {
    await p.add(
      { name: "muon.apply", code: K.muonApply, entryPoint: "main" },
      [
        params(["u32", w.size], ["f32", opts.lrRatio], ["f32", adjust], ["f32", opts.weightDecay]),
        w,
        xs[i],
        t.state,
      ],
      Math.ceil(w.size / K.MUON_WG),
      `muon.apply (${t.param.label})`,
    );
  }
}

/** `steps` Newton–Schulz iterations from scratch.x[0] (see the module comment); returns the last iterate. */
async function newtonSchulz(
  p: Program,
  s: MuonScratch,
  steps: number,
  tall: boolean,
): Promise<BlockedMatrix> {
  const [a, b, c] = NEWTON_SCHULZ;
  let [x, next] = s.x;
  for (let i = 0; i < steps; i++) {
    await (tall ? blockedTN(p, x, x, s.gram, s.tile) : blockedNT(p, x, x, s.gram, s.tile));
    for (const block of s.gram.blocks) await scale(p, blockRows(s.gram, block), b, blockRows(s.poly, block));
    await blockedNN(p, s.gram, s.gram, s.poly, s.tile, { alpha: c, accumulate: true });
    for (const block of x.blocks) await scale(p, blockRows(x, block), a, blockRows(next, block));
    await (tall
      ? blockedNN(p, x, s.poly, next, s.tile, { accumulate: true })
      : blockedNN(p, s.poly, x, next, s.tile, { accumulate: true }));
    [x, next] = [next, x];
  }
  return x;
}

/**
 * CPU reference of {@link muonStep} on a row-major [rows, cols] matrix, in f64: the updated param and buf.
 * `state` is the AdamW state array (lr, …, max_norm), `normSq` the global Σ g².
 */
export function muonStepCpu(
  t: { param: ArrayLike<number>; grad: ArrayLike<number>; buf: ArrayLike<number> },
  rows: number,
  cols: number,
  normSq: number,
  state: ArrayLike<number>,
  opts: MuonOptions & { lrRatio: number },
): { param: Float64Array; buf: Float64Array } {
  const [lr0, , , maxNorm] = Array.from(state), lr = lr0 * opts.lrRatio, n = rows * cols, mu = opts.momentum;
  const coef = maxNorm > 0 ? Math.min(1, maxNorm / (Math.sqrt(normSq) + 1e-6)) : 1;
  const buf = new Float64Array(n), u = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const g = t.grad[i] * coef;
    buf[i] = t.buf[i] + (1 - mu) * (g - t.buf[i]);
    u[i] = opts.nesterov ? g + mu * (buf[i] - g) : buf[i];
  }
  // Iterate on the wide orientation: Y = X (rows ≤ cols) or Xᵀ.
  const tall = rows > cols, r = tall ? cols : rows, k = tall ? rows : cols;
  let y = new Float64Array(n);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) y[tall ? j * rows + i : i * cols + j] = u[i * cols + j];
  }
  const norm = Math.max(Math.sqrt(y.reduce((sum, v) => sum + v * v, 0)), opts.eps);
  y = y.map((v) => v / norm);
  const [a, b, c] = NEWTON_SCHULZ;
  for (let s = 0; s < opts.nsSteps; s++) {
    const A = matmulCpu(y, y, r, k, r, true), AA = matmulCpu(A, A, r, r, r, false);
    const B = A.map((v, i) => b * v + c * AA[i]);
    const BY = matmulCpu(B, y, r, r, k, false);
    y = y.map((v, i) => a * v + BY[i]);
  }
  const adjust = muonLrFactor(rows, cols, opts.adjustLr), param = new Float64Array(n);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const x = y[tall ? j * rows + i : i * cols + j], e = i * cols + j;
      param[e] = t.param[e] * (1 - lr * opts.weightDecay) - lr * adjust * x;
    }
  }
  return { param, buf };
}

/** [m, n] = A [m, k] · (B [n, k]ᵀ when `transB`, else B [k, n]), f64 row-major. */
function matmulCpu(A: Float64Array, B: Float64Array, m: number, k: number, n: number, transB: boolean) {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += A[i * k + q] * (transB ? B[j * k + q] : B[q * n + j]);
      out[i * n + j] = s;
    }
  }
  return out;
}
