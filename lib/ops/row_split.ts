/**
 * Matrices stored as row blocks, each small enough to bind (the embedding and lm_head of large vocabularies:
 * Llama-3's [128256, 4096] in f32 is 2 GiB, over most adapters' maxStorageBufferBindingSize), and the
 * embedding lookup over them. A lookup over blocks sums each block's lookup with the ids shifted by the block's
 * first row (ids outside a block read zero rows), so it equals the one-tensor lookup bit for bit.
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { embeddingForward } from "./embedding.ts";
import { accumulate, fill, shiftIds } from "./elementwise.ts";

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
  if (table.blocks.length === 1) {
    await embeddingForward(p, ids, table.blocks[0].tensor, out);
    return;
  }
  const shifted = p.transient("embedding block ids", ids.shape, "i32");
  const part = p.transient("embedding block rows", out.shape, "f32");
  await fill(p, out, 0);
  for (const { row0, tensor } of table.blocks) {
    await shiftIds(p, ids, shifted, -row0);
    await embeddingForward(p, shifted, tensor, part);
    await accumulate(p, out, part);
  }
}
