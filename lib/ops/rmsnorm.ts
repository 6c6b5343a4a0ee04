/**
 * RMSNorm (Llama's LlamaRMSNorm, statistics in f32): y = w ⊙ x·rstd with rstd = 1/sqrt(mean(x²) + eps) per
 * row of x[rows, H]. The forward pass saves rstd[rows] for the backward pass.
 *
 * Backward, with x̂ = x·rstd:  dw = Σ_rows dy ⊙ x̂  and  dx = rstd·(w ⊙ dy) − x·rstd³·(Σ_j w_j·dy_j·x_j)/H.
 * dw is a reduction over rows done in two deterministic stages (no atomics): column sums over blocks of
 * {@link RMSNORM_ROWS_PER_BLOCK} rows into a scratch tensor of partials, then a column sum of the partials.
 */
import * as K from "../../kernels/rmsnorm.ts";
import { params, type Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";
import { ShapeError } from "../gpu/errors.ts";
import type { Gpu } from "../gpu/device.ts";
import { type RowKernel, rowKernelFor } from "./variant.ts";

/** Rows summed by one invocation of the first stage of dw. */
export const RMSNORM_ROWS_PER_BLOCK = 64;

/** Options of {@link rmsnormForward}. */
export interface RmsnormOptions {
  /** Added to mean(x²) before the square root (the config's rms_norm_eps). */
  eps: number;
  /** Row kernel family (see {@link RmsnormKernel}); default from the adapter. */
  kernel?: RmsnormKernel;
}

/**
 * Kernel family of the row kernels, the {@link RowKernel} of every row-wise op: "workgroup" (one workgroup
 * per row, a tree reduction in workgroup memory: GPUs) or "rows" (one invocation per row, vec4 loads, no
 * workgroup memory or barriers: CPU adapters, where it is the default). Both compute the same math.
 */
export type RmsnormKernel = RowKernel;

/** The row kernel `entry` ("forward" or "backward_dx") of the chosen family, and its workgroup count. */
function rowKernelSpec(
  gpu: Gpu,
  kernel: RmsnormKernel | undefined,
  entry: "forward" | "backward_dx",
  rows: number,
  io: Strided,
) {
  if (rowKernelFor(gpu, "rmsnorm", kernel) === "rows") {
    // vec4 loads need the strided operand's rows and column block on vec4 boundaries too.
    const vec4 = io.hidden % 4 === 0 && io.stride % 4 === 0 && io.offset % 4 === 0;
    const code = K.rowsKernels(vec4);
    return {
      spec: {
        name: `rmsnorm.${entry}_rows${vec4 ? ".vec4" : ""}`,
        code: entry === "forward" ? code.forward : code.backwardDx,
        entryPoint: entry,
      },
      workgroups: Math.ceil(rows / K.RMSNORM_ROWS_WG),
    };
  }
  return {
    spec: {
      name: `rmsnorm.${entry}`,
      code: entry === "forward" ? K.forward : K.backwardDx,
      entryPoint: entry,
    },
    workgroups: rows,
  };
}

/** The row layout of y (forward) or dy (backward): row r's H elements start at offset + r·stride. */
interface Strided {
  hidden: number;
  stride: number;
  offset: number;
}

/**
 * Columns [col0, col0 + H) of a [rows, C] matrix, the strided y of {@link rmsnormForward} or dy of
 * {@link rmsnormBackward} (a norm writing into, or its backward reading from, a column block: no copy).
 */
export interface ColumnBlock {
  /** The wider matrix [rows, C]. */
  matrix: Tensor;
  /** First column of the block. */
  col0: number;
}

/** Checks a y/dy operand (a [rows, H] tensor or a column block) and returns its tensor and layout. */
function stridedOperand(op: string, name: string, t: Tensor | ColumnBlock, rows: number, hidden: number) {
  if (t instanceof Tensor) {
    expectDtype(op, name, t, "f32");
    expectShape(op, name, t, [rows, hidden]);
    return { tensor: t, io: { hidden, stride: hidden, offset: 0 } };
  }
  const m = t.matrix;
  expectDtype(op, name, m, "f32");
  if (m.shape.length !== 2 || m.shape[0] !== rows || t.col0 < 0 || t.col0 + hidden > m.shape[1]) {
    throw new ShapeError(
      `${op}: ${name} (${m.label}) [${m.shape.join(", ")}] has no column block [${t.col0}, ${
        t.col0 + hidden
      }) over ${rows} rows`,
    );
  }
  return { tensor: m, io: { hidden, stride: m.shape[1], offset: t.col0 } };
}

/** Options of {@link rmsnormBackward}. */
export interface RmsnormBackwardOptions {
  /** Add the input gradient to dx instead of overwriting it. */
  accumulateDx?: boolean;
  /** Add the weight gradient to dw instead of overwriting it. */
  accumulateDw?: boolean;
  /** Row kernel family of dx (see {@link RmsnormKernel}); default from the adapter. */
  kernel?: RmsnormKernel;
  /**
   * f32 scratch for the partial sums of dw, of at least {@link rmsnormScratchSize} elements (any shape).
   * When omitted and rows > {@link RMSNORM_ROWS_PER_BLOCK}, the op allocates one owned by the program
   * (`p.scratch`). Passing one lets several backward passes of the same program share it.
   */
  scratch?: Tensor;
}

/** Number of f32 elements of the dw scratch for `rows` rows of width `hidden` (0 when one stage suffices). */
export function rmsnormScratchSize(rows: number, hidden: number): number {
  const blocks = Math.ceil(rows / RMSNORM_ROWS_PER_BLOCK);
  return blocks > 1 ? blocks * hidden : 0;
}

function rowShape(op: string, x: Tensor): [number, number] {
  if (x.shape.length !== 2) {
    throw new ShapeError(`${op}: x (${x.label}) has shape [${x.shape.join(", ")}], expected [rows, hidden]`);
  }
  return [x.shape[0], x.shape[1]];
}

/**
 * Records y = w ⊙ x·rstd for x[rows, H], w[H] into y[rows, H] (or a {@link ColumnBlock} of a wider matrix)
 * and saves rstd[rows].
 */
export async function rmsnormForward(
  p: Program,
  x: Tensor,
  w: Tensor,
  y: Tensor | ColumnBlock,
  rstd: Tensor,
  { eps, kernel }: RmsnormOptions,
): Promise<void> {
  const op = "rmsnormForward";
  for (const [name, t] of [["x", x], ["w", w], ["rstd", rstd]] as const) expectDtype(op, name, t, "f32");
  const [rows, hidden] = rowShape(op, x);
  expectShape(op, "w", w, [hidden]);
  const out = stridedOperand(op, "y", y, rows, hidden);
  expectShape(op, "rstd", rstd, [rows]);
  const { spec, workgroups } = rowKernelSpec(p.gpu, kernel, "forward", rows, out.io);
  await p.add(
    spec,
    [rowParams(rows, out.io, eps, 0), x, w, out.tensor, rstd],
    workgroups,
  );
}

/** The row kernels' params: rows, H, eps, accumulate, and the strided operand's row stride and offset. */
function rowParams(rows: number, io: Strided, eps: number, accumulate: number) {
  return params(
    ["u32", rows],
    ["u32", io.hidden],
    ["f32", eps],
    ["u32", accumulate],
    ["u32", io.stride],
    ["u32", io.offset],
  );
}

/**
 * Records the backward pass of {@link rmsnormForward}: dx[rows, H] and dw[H] from dy (a [rows, H] tensor or a
 * {@link ColumnBlock}), x, w and the saved rstd.
 */
export async function rmsnormBackward(
  p: Program,
  dy: Tensor | ColumnBlock,
  x: Tensor,
  w: Tensor,
  rstd: Tensor,
  dx: Tensor,
  dw: Tensor,
  { accumulateDx = false, accumulateDw = false, scratch, kernel }: RmsnormBackwardOptions = {},
): Promise<void> {
  const op = "rmsnormBackward";
  for (const [name, t] of [["x", x], ["w", w], ["rstd", rstd], ["dx", dx], ["dw", dw]] as const) {
    expectDtype(op, name, t, "f32");
  }
  const [rows, hidden] = rowShape(op, x);
  const g = stridedOperand(op, "dy", dy, rows, hidden);
  expectShape(op, "w", w, [hidden]);
  expectShape(op, "rstd", rstd, [rows]);
  expectShape(op, "dx", dx, [rows, hidden]);
  expectShape(op, "dw", dw, [hidden]);
  const scratchSize = rmsnormScratchSize(rows, hidden);
  if (scratch) {
    expectDtype(op, "scratch", scratch, "f32");
    if (scratch.size < scratchSize) {
      throw new ShapeError(
        `${op}: scratch (${scratch.label}) has ${scratch.size} elements, needs ${scratchSize} for ` +
          `${rows} rows of ${hidden}`,
      );
    }
  }

  const dxKernel = rowKernelSpec(p.gpu, kernel, "backward_dx", rows, g.io);
  await p.add(
    dxKernel.spec,
    [rowParams(rows, g.io, 0, accumulateDx ? 1 : 0), g.tensor, x, w, rstd, dx],
    dxKernel.workgroups,
  );

  // dw, stage 1: column sums over blocks of rows; straight into dw when there is a single block
  const blocks = Math.ceil(rows / RMSNORM_ROWS_PER_BLOCK);
  const accDw = accumulateDw ? 1 : 0;
  // Four columns per invocation where dy's and x's rows start at multiples of 4 (same bits, fewer loads).
  const vec4 = hidden % 4 === 0 && g.io.stride % 4 === 0 && g.io.offset % 4 === 0;
  const partialsKernel = vec4
    ? { name: "rmsnorm.dw_partials.vec4", code: K.dwPartialsVec4, entryPoint: "dw_partials" }
    : { name: "rmsnorm.dw_partials", code: K.dwPartials, entryPoint: "dw_partials" };
  const partialsGroups = (outputs: number) =>
    vec4 ? Math.ceil(outputs / 4 / K.RMSNORM_COL4_WG) : Math.ceil(outputs / K.RMSNORM_COL_WG);
  const blockParams = (accumulate: number) =>
    params(
      ["u32", rows],
      ["u32", hidden],
      ["u32", RMSNORM_ROWS_PER_BLOCK],
      ["u32", accumulate],
      ["u32", g.io.stride],
      ["u32", g.io.offset],
    );
  const dyT = g.tensor;
  if (blocks <= 1) {
    await p.add(partialsKernel, [blockParams(accDw), dyT, x, rstd, dw], partialsGroups(hidden));
    return;
  }
  // Only the first scratchSize elements are used.
  const partials = scratch ?? p.scratch([scratchSize], "f32", "rmsnorm dw partials");
  await p.add(
    partialsKernel,
    [blockParams(0), dyT, x, rstd, partials],
    partialsGroups(blocks * hidden),
  );
  // stage 2: dw = column sums of the partials
  await p.add(
    { name: "rmsnorm.dw_reduce", code: K.dwReduce, entryPoint: "dw_reduce" },
    [params(["u32", blocks], ["u32", hidden], ["u32", 0], ["u32", accDw]), partials, dw],
    Math.ceil(hidden / K.RMSNORM_COL_WG),
  );
}

/** CPU reference of the forward pass (f64): y[rows·H] and rstd[rows]. */
export function rmsnormCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rows: number,
  hidden: number,
  eps: number,
): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(rows * hidden);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sumSq = 0;
    for (let i = 0; i < hidden; i++) sumSq += x[r * hidden + i] ** 2;
    rstd[r] = 1 / Math.sqrt(sumSq / hidden + eps);
    for (let i = 0; i < hidden; i++) y[r * hidden + i] = w[i] * x[r * hidden + i] * rstd[r];
  }
  return { y, rstd };
}

/** CPU reference of the backward pass (f64): dx[rows·H] and dw[H] (rstd recomputed from x). */
export function rmsnormBackwardCpu(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rows: number,
  hidden: number,
  eps: number,
): { dx: Float64Array; dw: Float64Array } {
  const { rstd } = rmsnormCpu(x, w, rows, hidden, eps);
  const dx = new Float64Array(rows * hidden);
  const dw = new Float64Array(hidden);
  for (let r = 0; r < rows; r++) {
    const rs = rstd[r];
    let dot = 0;
    for (let i = 0; i < hidden; i++) dot += w[i] * dy[r * hidden + i] * x[r * hidden + i];
    for (let i = 0; i < hidden; i++) {
      const k = r * hidden + i;
      dx[k] = rs * w[i] * dy[k] - x[k] * rs ** 3 * dot / hidden;
      dw[i] += dy[k] * x[k] * rs;
    }
  }
  return { dx, dw };
}
