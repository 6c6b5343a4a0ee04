/**
 * Producers of the teacher logits over the draft vocabulary a window of rows at a time (lib/models/eagle3.ts
 * `TeacherSource`), so that the draft head's windows (./eagle3_head_loss.ts) read their teacher rows without a
 * [B·T, Vd] tensor:
 *
 * - {@link headTeacher}: the target's final normed hidden states times its lm_head rows of the draft
 *   vocabulary (online, and offline from stored hidden states), as lib/models/target.ts `recordHeadOutputs`
 *   computes them for every row at once: each row is the same dot products;
 * - {@link topkTeacher}: dense rows rebuilt from stored top-k log-probabilities (lib/ops/features.ts
 *   `scatterTopkTeacher`, row by row), as lib/offline/feeder.ts rebuilds them for the whole batch.
 *
 * Windows start at multiples of 64 rows (lib/models/eagle3_head_loss.ts `HEAD_WINDOW_ALIGN`), so every row
 * view below meets the 256-byte binding alignment.
 */
import { ShapeError } from "../gpu/errors.ts";
import type { Program } from "../gpu/program.ts";
import { shapeString, type Tensor } from "../tensor.ts";
import { linearRowBlocks, type RowSplitMatrix } from "../ops/row_split.ts";
import { scatterTopkTeacher } from "../ops/features.ts";
import type { TeacherSource } from "./eagle3.ts";

/** Rows [row0, row0 + n) of a [rows, ...] tensor (itself when that is all of it). */
function rowsOf(t: Tensor, row0: number, n: number): Tensor {
  if (row0 === 0 && n === t.shape[0]) return t;
  const width = t.size / t.shape[0];
  return t.view(row0 * width, [n, ...t.shape.slice(1)]);
}

/**
 * Teacher rows = hidden · headᵀ: `hidden` the target's final normed hidden states f32 [B·T, H_t], `head` its
 * lm_head rows of the draft vocabulary [Vd, H_t] (row blocks; the column blocks of a split head go through a
 * shared scratch, "head rows").
 */
export function headTeacher(hidden: Tensor, head: RowSplitMatrix): TeacherSource {
  if (hidden.dtype !== "f32" || hidden.shape.length !== 2 || hidden.shape[1] !== head.cols) {
    throw new ShapeError(
      `teacher head: hidden (${hidden.label}) ${hidden.dtype} ${
        shapeString(hidden.shape)
      } does not meet a head ` +
        `of ${head.cols} columns`,
    );
  }
  return {
    rows: hidden.shape[0],
    vocab: head.rows,
    record: (p: Program, row0: number, out: Tensor) =>
      linearRowBlocks(p, rowsOf(hidden, row0, out.shape[0]), head, out),
  };
}

/** The stored top-k of every row and the target → draft index map (lib/ops/features.ts `TopkTeacher`). */
export interface StoredTopk {
  /** i32 [B·T, k]. */
  ids: Tensor;
  /** f32 [B·T, k]. */
  logprobs: Tensor;
  /** f32 [B·T]: the log-probability spread over the rest of the vocabulary. */
  tail: Tensor;
  /** i32 [V]. */
  toDraft: Tensor;
}

/** Teacher rows rebuilt from the stored top-k of `draftVocab` columns, a window at a time. */
export function topkTeacher(t: StoredTopk, draftVocab: number): TeacherSource {
  return {
    rows: t.ids.shape[0],
    vocab: draftVocab,
    record: (p: Program, row0: number, out: Tensor) => {
      const n = out.shape[0];
      return scatterTopkTeacher(p, {
        ids: rowsOf(t.ids, row0, n),
        logprobs: rowsOf(t.logprobs, row0, n),
        tail: rowsOf(t.tail, row0, n),
        toDraft: t.toDraft,
        out,
      });
    },
  };
}
