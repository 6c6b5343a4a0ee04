/**
 * Token embedding: out[i] = table[ids[i]] for a table [V, H] stored as f32, f16 or bf16 (packed), output f32.
 * Ids outside [0, V) give a row of zeros on the GPU (a defined result for ids computed on the device);
 * ids coming from the host can be checked first with {@link checkEmbeddingIds}.
 *
 * The gradient is deterministic and needs no atomics: {@link embeddingBackwardIndex} builds on the host a
 * CSR index (for each token id, the positions where it occurs, ascending), {@link uploadEmbeddingIndex}
 * puts it on the GPU, and {@link embeddingBackward} has one invocation per (row v, column h) of dtable sum
 * dout over v's positions in order.
 */
import * as K from "../../kernels/embedding.ts";
import type { Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/** Host CSR index of token positions: positions[offsets[v] .. offsets[v+1]) are where id v occurs. */
export interface EmbeddingIndexHost {
  /** Number of token ids V the index covers (rows of the embedding table). */
  vocabSize: number;
  /** [V + 1], offsets[0] = 0, offsets[V] = n. */
  offsets: Int32Array<ArrayBuffer>;
  /** [n], ascending within each id. */
  positions: Int32Array<ArrayBuffer>;
}

/** The same index on the GPU (i32 tensors), from {@link uploadEmbeddingIndex}. */
export interface EmbeddingIndex {
  /** Number of token ids V the index covers (rows of the embedding table). */
  vocabSize: number;
  /** i32 [V + 1]. */
  offsets: Tensor;
  /** i32 [n]. */
  positions: Tensor;
}

/** Options of {@link embeddingBackward}. */
export interface EmbeddingBackwardOptions {
  /** Add to dtable instead of overwriting it (rows with no positions are then left untouched). */
  accumulate?: boolean;
}

/** Throws a ShapeError naming the first position whose id is not an integer in [0, vocabSize). */
export function checkEmbeddingIds(ids: ArrayLike<number>, vocabSize: number, label = "ids"): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new ShapeError(`embedding: ${label}[${i}] = ${id} is outside the vocabulary [0, ${vocabSize})`);
    }
  }
}

/** Builds the CSR index of `ids` (checked with {@link checkEmbeddingIds}) for a vocabulary of V. */
export function embeddingBackwardIndex(ids: ArrayLike<number>, vocabSize: number): EmbeddingIndexHost {
  checkEmbeddingIds(ids, vocabSize);
  const offsets = new Int32Array(vocabSize + 1);
  for (let i = 0; i < ids.length; i++) offsets[ids[i] + 1]++;
  for (let v = 0; v < vocabSize; v++) offsets[v + 1] += offsets[v];
  const next = offsets.slice(0, vocabSize);
  const positions = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) positions[next[ids[i]]++] = i;
  return { vocabSize, offsets, positions };
}

/** Uploads a host index as two i32 tensors (the caller destroys them). */
export function uploadEmbeddingIndex(gpu: Gpu, index: EmbeddingIndexHost): EmbeddingIndex {
  return {
    vocabSize: index.vocabSize,
    offsets: Tensor.fromArray(gpu, index.offsets, [index.offsets.length], "i32", "embedding index offsets"),
    positions: Tensor.fromArray(
      gpu,
      index.positions,
      [index.positions.length],
      "i32",
      "embedding index positions",
    ),
  };
}

/**
 * Records out[i, :] = table[ids[i], :] for ids i32[n], table [V, H] (f32, f16 or bf16), out f32 [n, H];
 * rows of out whose id is outside [0, V) are zeros.
 */
export async function embeddingForward(p: Program, ids: Tensor, table: Tensor, out: Tensor): Promise<void> {
  const op = "embeddingForward";
  expectDtype(op, "ids", ids, "i32");
  expectDtype(op, "table", table, "f32", "f16", "bf16");
  expectDtype(op, "out", out, "f32");
  expectShape(op, "ids", ids, [-1]);
  expectShape(op, "table", table, [-1, -1]);
  const [n] = ids.shape, [vocab, hidden] = table.shape;
  expectShape(op, "out", out, [n, hidden]);
  if (n * hidden === 0) return;
  const dtype = table.dtype as "f32" | "f16" | "bf16";
  await p.add(
    { name: `embedding.forward_${dtype}`, code: K.forwardModule(dtype), entryPoint: "forward" },
    [params(["u32", n], ["u32", hidden], ["u32", vocab]), ids, table, out],
    Math.ceil(n * hidden / K.EMBEDDING_WG),
  );
}

/**
 * Records the gradient of {@link embeddingForward} with respect to the table: dtable[v] = Σ dout[i] over the
 * positions i with ids[i] = v (given by `index`), 0 for ids that do not occur; with `accumulate`, added to
 * dtable.
 */
export async function embeddingBackward(
  p: Program,
  dout: Tensor,
  index: EmbeddingIndex,
  dtable: Tensor,
  { accumulate = false }: EmbeddingBackwardOptions = {},
): Promise<void> {
  const op = "embeddingBackward";
  expectDtype(op, "dout", dout, "f32");
  expectDtype(op, "dtable", dtable, "f32");
  expectDtype(op, "index.offsets", index.offsets, "i32");
  expectDtype(op, "index.positions", index.positions, "i32");
  expectShape(op, "dout", dout, [-1, -1]);
  const [n, hidden] = dout.shape;
  const vocab = index.vocabSize;
  expectShape(op, "dtable", dtable, [vocab, hidden]);
  expectShape(op, "index.offsets", index.offsets, [vocab + 1]);
  expectShape(op, "index.positions", index.positions, [n]);
  if (vocab * hidden === 0) return;
  await p.add(
    { name: "embedding.backward", code: K.backward, entryPoint: "backward" },
    [
      params(["u32", vocab], ["u32", hidden], ["u32", accumulate ? 1 : 0]),
      index.offsets,
      index.positions,
      dout,
      dtable,
    ],
    Math.ceil(vocab * hidden / K.EMBEDDING_WG),
  );
}

/** CPU reference of the forward pass: rows of table [V·H] (f32 values) gathered by ids, zeros when invalid. */
export function embeddingCpu(
  ids: ArrayLike<number>,
  table: ArrayLike<number>,
  vocab: number,
  hidden: number,
): Float64Array {
  const out = new Float64Array(ids.length * hidden);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocab) continue;
    for (let h = 0; h < hidden; h++) out[i * hidden + h] = table[id * hidden + h];
  }
  return out;
}

/** CPU reference of the backward pass: dtable [V·H] = scatter-add of dout rows by id (invalid ids skipped). */
export function embeddingBackwardCpu(
  dout: ArrayLike<number>,
  ids: ArrayLike<number>,
  vocab: number,
  hidden: number,
): Float64Array {
  const dtable = new Float64Array(vocab * hidden);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocab) continue;
    for (let h = 0; h < hidden; h++) dtable[id * hidden + h] += dout[i * hidden + h];
  }
  return dtable;
}
