/**
 * Matrices stored as row blocks, each small enough to bind (the embedding and lm_head of large vocabularies:
 * Llama-3's [128256, 4096] in f32 is 2 GiB, over most adapters' maxStorageBufferBindingSize; speculative
 * decoding's captured target features [prompt, 3H]), the embedding lookup and the row gather over them. A
 * lookup over blocks sums each block's lookup with the ids shifted by the block's first row (ids outside a
 * block read zero rows), so it equals the one-tensor lookup bit for bit.
 */
import type { Gpu } from "../gpu/device.ts";
import type { Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { rowBlocks } from "./blocks.ts";
import { embeddingForward } from "./embedding.ts";
import { accumulate, copyColumns, copyStrided, fill, shiftIds } from "./elementwise.ts";
import { gatherRows } from "./tree_attention.ts";
import { linear } from "./matmul.ts";

/** A matrix stored as row blocks, each small enough to bind (embedding and lm_head of big vocabularies). */
export interface RowSplitMatrix {
  /** Total rows of the whole matrix (e.g. the vocabulary size V). */
  rows: number;
  /** Columns of every row (e.g. the hidden size H). */
  cols: number;
  /**
   * The row blocks in order: `tensor` holds rows [row0, row0 + tensor.shape[0]) in the checkpoint's stored
   * dtype.
   */
  blocks: Array<{ row0: number; tensor: Tensor }>;
}

/** `m` as row blocks: itself, or a 2-D tensor as one block. */
export function asRowSplit(m: Tensor | RowSplitMatrix): RowSplitMatrix {
  if ("blocks" in m) return m;
  return { rows: m.shape[0], cols: m.shape[1], blocks: [{ row0: 0, tensor: m }] };
}

/** out[r] = table[ids[r]] for a row-split table [V, H] (f32, f16 or bf16): ids i32 [R], out f32 [R, H]. */
export async function embeddingRows(
  p: Program,
  table: RowSplitMatrix,
  ids: Tensor,
  out: Tensor,
): Promise<void> {
  const lookup = (ids: Tensor, block: Tensor, rows: Tensor) => embeddingForward(p, ids, block, rows);
  await gatherByBlocks(p, table, ids, out, ["embedding block ids", "embedding block rows"], lookup);
}

/**
 * out[r] = m[ids[r]] row by row through `gather` (one tensor's row gather, zero rows for ids outside it): on the
 * one tensor, or per block with the ids shifted by its first row, summed (the other blocks' rows read zero);
 * the shifted ids and each block's rows are transients of the kinds `kinds`.
 */
async function gatherByBlocks(
  p: Program,
  m: RowSplitMatrix,
  ids: Tensor,
  out: Tensor,
  kinds: [ids: string, rows: string],
  gather: (ids: Tensor, block: Tensor, rows: Tensor) => Promise<void>,
): Promise<void> {
  if (m.blocks.length === 1) return await gather(ids, m.blocks[0].tensor, out);
  const shifted = p.transient(kinds[0], ids.shape, "i32");
  const part = p.transient(kinds[1], out.shape, "f32");
  await fill(p, out, 0);
  for (const { row0, tensor } of m.blocks) {
    await shiftIds(p, ids, shifted, -row0);
    await gather(shifted, tensor, part);
    await accumulate(p, out, part);
  }
}

/**
 * A new f32 [rows, cols] matrix from the buffer pool, as the row blocks of lib/ops/blocks.ts `rowBlocks` (one
 * block when it binds whole): each block its own tensor, labelled with its rows.
 */
export function emptyRowSplit(gpu: Gpu, rows: number, cols: number, label: string): RowSplitMatrix {
  const blocks = rowBlocks(gpu.limits, rows, cols, [4]);
  return {
    rows,
    cols,
    blocks: blocks.map((b) => ({
      row0: b.row0,
      tensor: Tensor.empty(
        gpu,
        [b.rows, cols],
        "f32",
        blocks.length === 1 ? label : `${label}[${b.row0}:${b.row0 + b.rows}]`,
      ),
    })),
  };
}

/** Frees every block of `m`. */
export function destroyRowSplit(m: RowSplitMatrix): void {
  for (const b of m.blocks) b.tensor.destroy();
}

/**
 * dst[r] = m[index[r]] for an f32 row-split matrix m [S, W], index i32 [R], dst [R, W] (zero rows for indices
 * outside m): each block's gather with the indices shifted by its first row, summed (the rows of other blocks
 * read zero), so it equals lib/ops/tree_attention.ts `gatherRows` over one tensor bit for bit.
 */
export async function gatherRowBlocks(
  p: Program,
  m: RowSplitMatrix,
  index: Tensor,
  dst: Tensor,
): Promise<void> {
  const gather = (ids: Tensor, block: Tensor, rows: Tensor) => gatherRows(p, block, ids, rows);
  await gatherByBlocks(p, m, index, dst, ["row block index", "row block rows"], gather);
}

/**
 * Copies src [rows, w] into rows 0..rows−1, columns [col0, col0 + w) of the f32 row-split matrix `m` (a
 * feature block into the concatenated [rows, 3H]; lib/ops/elementwise.ts `copyColumns` over one tensor).
 */
export async function copyColumnsToBlocks(
  p: Program,
  src: Tensor,
  m: RowSplitMatrix,
  col0: number,
): Promise<void> {
  const w = src.shape[src.shape.length - 1], rows = src.size / w;
  for (const { row0, tensor } of m.blocks) {
    const n = Math.min(tensor.shape[0], rows - row0);
    if (n <= 0) break;
    await copyStrided(p, src, tensor, {
      count: [1, n, w],
      srcStrides: [0, w, 1],
      srcOffset: row0 * w,
      dstStrides: [0, m.cols, 1],
      dstOffset: col0,
    });
  }
}

/**
 * y = x · mᵀ for x [rows, H] and a row-split matrix m [n, H] → y [rows, n] (an lm_head, or its rows of a draft
 * vocabulary): each row block writes its columns of y through a shared scratch ("head rows"); each output is
 * the one-tensor product's dot product.
 */
export async function linearRowBlocks(p: Program, x: Tensor, m: RowSplitMatrix, y: Tensor): Promise<void> {
  if (m.blocks.length === 1) return await linear(p, x, m.blocks[0].tensor, y);
  const rows = x.shape[0];
  for (const { row0, tensor } of m.blocks) {
    const part = p.transient("head rows", [rows, tensor.shape[0]], "f32");
    await linear(p, x, tensor, part);
    await copyColumns(p, part, y, row0);
  }
}
