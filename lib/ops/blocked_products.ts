/**
 * Matrix products of f32 matrices too large for one storage binding, each held in one tensor whose row blocks
 * (lib/ops/blocks.ts `rowBlocks`) bind as views. A product is a sum of block products:
 *
 *   NN: C_i = Σ_k A[i, k]·B_k        TN: C_q = Σ_i A_i[:, q]ᵀ·B_i        NT: C_i[:, j] = A_i·B_jᵀ
 *
 * where X_i is row block i of X and X[i, k] its columns of block k (k, q run over the row blocks of the
 * matrix those columns meet). A block's columns are copied into a scratch tile unless they are all of its
 * columns, and an NT block goes through the tile into its columns of C_i; with one block everywhere each
 * product is one matmul, the one the unsplit matrices get. Sums over k follow the block order, so a split
 * product may differ from the unsplit one in the last bits. Muon's Newton–Schulz iteration (lib/ops/muon.ts)
 * is their user: an 8B draft's fc [4096, 12288] in f32 is 192 MiB, over lavapipe's 128 MiB binding.
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import type { RowBlock } from "./blocks.ts";
import { copyStrided } from "./elementwise.ts";
import { matmul } from "./matmul.ts";

/** A [rows, cols] f32 matrix and the row blocks it is used in (one block: it binds whole). */
export interface BlockedMatrix {
  t: Tensor;
  blocks: RowBlock[];
}

/** Row block `b` of `m`, as a view. */
export function blockRows(m: BlockedMatrix, b: RowBlock): Tensor {
  const cols = m.t.shape[1];
  if (b.row0 === 0 && b.rows === m.t.shape[0]) return m.t;
  return m.t.view(b.row0 * cols, [b.rows, cols], `${m.t.label}[${b.row0}:${b.row0 + b.rows}]`);
}

/**
 * Elements of the scratch tile for products that take column blocks `cols` of row blocks `rows` (0 when the
 * columns are never split).
 */
export function tileElements(rows: RowBlock[], cols: RowBlock[]): number {
  const widest = (bs: RowBlock[]) => Math.max(...bs.map((b) => b.rows));
  return cols.length === 1 ? 0 : widest(rows) * widest(cols);
}

/** Columns `cols` of row block `b` of `m`: the block itself when they are all of them, else copied to `tile`. */
async function blockColumns(p: Program, m: BlockedMatrix, b: RowBlock, cols: RowBlock, tile: Tensor | null) {
  const width = m.t.shape[1], rows = blockRows(m, b);
  if (cols.row0 === 0 && cols.rows === width) return rows;
  const out = tile!.view(0, [b.rows, cols.rows], "block tile");
  await copyStrided(p, rows, out, {
    count: [1, b.rows, cols.rows],
    srcStrides: [0, width, 1],
    srcOffset: cols.row0,
    dstStrides: [0, cols.rows, 1],
  });
  return out;
}

/** Options of the blocked products. */
export interface BlockedProductOptions {
  /** Scale of the product (default 1). */
  alpha?: number;
  /** C += product instead of C = product. */
  accumulate?: boolean;
}

/** C = α·A·B (NN): A [m, k] in C's row blocks, B [k, n] in row blocks that split A's columns. */
export async function blockedNN(
  p: Program,
  a: BlockedMatrix,
  b: BlockedMatrix,
  c: BlockedMatrix,
  tile: Tensor | null,
  opts: BlockedProductOptions = {},
): Promise<void> {
  for (const bi of c.blocks) {
    for (const [k, bk] of b.blocks.entries()) {
      const aik = await blockColumns(p, a, bi, bk, tile);
      await matmul(p, aik, blockRows(b, bk), blockRows(c, bi), {
        alpha: opts.alpha,
        accumulate: opts.accumulate || k > 0,
      });
    }
  }
}

/** C = Aᵀ·B (TN): A [k, m] and B [k, n] in the same row blocks, C [m, n] in row blocks that split A's columns. */
export async function blockedTN(
  p: Program,
  a: BlockedMatrix,
  b: BlockedMatrix,
  c: BlockedMatrix,
  tile: Tensor | null,
): Promise<void> {
  for (const bq of c.blocks) {
    for (const [i, bi] of a.blocks.entries()) {
      const aiq = await blockColumns(p, a, bi, bq, tile);
      await matmul(p, aiq, blockRows(b, bi), blockRows(c, bq), { transA: true, accumulate: i > 0 });
    }
  }
}

/** C = A·Bᵀ (NT): A [m, k] in C's row blocks, B [n, k] in row blocks that split C's columns. */
export async function blockedNT(
  p: Program,
  a: BlockedMatrix,
  b: BlockedMatrix,
  c: BlockedMatrix,
  tile: Tensor | null,
): Promise<void> {
  const width = c.t.shape[1];
  for (const bi of c.blocks) {
    const ci = blockRows(c, bi);
    if (b.blocks.length === 1) {
      await matmul(p, blockRows(a, bi), b.t, ci, { transB: true });
      continue;
    }
    for (const bj of b.blocks) {
      const out = tile!.view(0, [bi.rows, bj.rows], "block tile");
      await matmul(p, blockRows(a, bi), blockRows(b, bj), out, { transB: true });
      await copyStrided(p, out, ci, {
        count: [1, bi.rows, bj.rows],
        srcStrides: [0, bj.rows, 1],
        dstStrides: [0, width, 1],
        dstOffset: bj.row0,
      });
    }
  }
}
