/**
 * The DFlash step's head, objective and the head's backward in windows of rows (lib/models/dflash_step.ts):
 * z = hidden · lm_headᵀ [W, V] for W rows at a time, so that the logits of R = nb·N·B rows (SpecForge's
 * 4 × 512 × 16 = 32,768 rows × 151,936 is 20 GiB in f32) exist one window at a time. SpecForge's analogue is
 * `objective_chunk_blocks` (specforge/algorithms/common/dflash_family_model.py), which chunks the CE over
 * blocks for the same reason.
 *
 * Per window: the logits (over the lm_head's row blocks when it does not bind whole: each block writes its
 * columns of the window), the row stats (lse, CE, argmax = y), the detached D-PACE weights, and training the
 * gradient s·ω·(softmax(z) − onehot(y)) in place of the logits and ∂/∂hidden = ∂z · lm_head (a sum over the
 * vocabulary blocks when the head is split). lm_head is frozen: no weight gradient. Windows hold whole blocks
 * (D-PACE's weight of slot k reads every slot of its block: kernels/dflash_loss.ts `dpaceWeights`) and start
 * at multiples of 64 rows (every view's 256-byte offset alignment). The per-slot sums run once over every row
 * after the windows, so every per-row quantity and every sum is the whole step's, bit for bit, as long as the
 * products' per-row arithmetic does not change with the window (one vocabulary block: the same kernels).
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { linearBackward } from "../ops/matmul.ts";
import { copyStrided } from "../ops/elementwise.ts";
import { linearRowBlocks, type RowSplitMatrix } from "../ops/row_split.ts";
import {
  dflashLossGradient,
  type DflashLossType,
  dflashRowStats,
  dflashSlotSums,
  dpaceWeights,
  isDpace,
} from "../ops/dflash_loss.ts";
import { HEAD_WINDOW_ALIGN } from "./eagle3_head_loss.ts";

/** The tensors of the head and objective over all R rows (the logits: one window's [W, V]). */
export interface DflashHeadTensors {
  /** RMSNorm_final(h_L) [R, H]. */
  hidden: Tensor;
  /** Out, training: ∂/∂hidden [R, H] (overwritten); null for an evaluation step. */
  dHidden: Tensor | null;
  /** One window's logits [W, V], then (training) their gradient. */
  logits: Tensor;
  /** The frozen target lm_head [V, H] as row blocks. */
  lmHead: RowSplitMatrix;
  /** Out: lse, CE, [argmax = y] per row [R, 3]. */
  stats: Tensor;
  labels: Tensor;
  w: Tensor;
  /** ω [R]: written by the host for `dflash`, by the D-PACE kernel for the D-PACE losses. */
  omega: Tensor;
  /** s [1]: the gradient is that of s·Σ ω·CE. */
  scale: Tensor;
  /** Per block slot sums [B, 4], accumulated. */
  sums: Tensor;
}

/** The objective's settings. */
export interface DflashHeadOptions {
  lossType: DflashLossType;
  dpaceAlpha: number;
  blockSize: number;
}

/** The row granule of a window: whole blocks starting at multiples of 64 rows, lcm(64, B). */
export function dflashWindowGranule(blockSize: number): number {
  const gcd = (a: number, b: number): number => b === 0 ? a : gcd(b, a % b);
  return HEAD_WINDOW_ALIGN / gcd(HEAD_WINDOW_ALIGN, blockSize) * blockSize;
}

/**
 * W: rows of the head's window for R rows of blocks of `blockSize`: every row when `headRows` is null or
 * covers them; else `headRows` rounded down to whole granules ({@link dflashWindowGranule}), at least one.
 */
export function dflashWindowRows(rows: number, headRows: number | null, blockSize: number): number {
  if (headRows === null || headRows >= rows) return rows;
  const g = dflashWindowGranule(blockSize);
  return Math.min(rows, Math.max(g, Math.floor(headRows / g) * g));
}

/**
 * The largest window of whole granules whose logits [W, V] f32 bind as one storage buffer (every row when
 * they all do); at least one granule.
 */
export function dflashBindingRows(
  rows: number,
  vocab: number,
  blockSize: number,
  maxBinding: number,
): number {
  return dflashWindowRows(rows, Math.floor(maxBinding / (4 * vocab)), blockSize);
}

/** Records the head and objective (and with `t.dHidden` the head's backward) window by window. */
export async function dflashHeadObjective(
  p: Program,
  t: DflashHeadTensors,
  opts: DflashHeadOptions,
): Promise<void> {
  const R = t.hidden.shape[0], W = t.logits.shape[0], V = t.logits.shape[1], H = t.hidden.shape[1];
  for (let row0 = 0; row0 < R; row0 += W) {
    const n = Math.min(W, R - row0);
    const rows = (x: Tensor, width = 1) => n === R ? x : x.view(row0 * width, width === 1 ? [n] : [n, width]);
    const logits = n === W ? t.logits : t.logits.view(0, [n, V]);
    const hidden = rows(t.hidden, H), stats = rows(t.stats, 3), labels = rows(t.labels);
    const w = rows(t.w), omega = rows(t.omega);
    await linearRowBlocks(p, hidden, t.lmHead, logits);
    await dflashRowStats(p, logits, labels, stats);
    if (isDpace(opts.lossType)) {
      await dpaceWeights(p, { stats, w, omega }, {
        type: opts.lossType,
        blockSize: opts.blockSize,
        alpha: opts.dpaceAlpha,
      });
    }
    if (!t.dHidden) continue;
    await dflashLossGradient(p, { logits, labels, stats, omega, scale: t.scale });
    await headBackward(p, logits, hidden, t.lmHead, rows(t.dHidden, H));
  }
  await dflashSlotSums(p, { stats: t.stats, w: t.w, omega: t.omega, sums: t.sums }, opts.blockSize);
}

/**
 * dx = dz · lm_head for dz [n, V]: one product over a head that binds whole; else Σ over its row blocks b of
 * dz[:, b] · lm_head[b], each block's columns of dz copied to a scratch ("head grad rows") first.
 */
async function headBackward(
  p: Program,
  dz: Tensor,
  x: Tensor,
  head: RowSplitMatrix,
  dx: Tensor,
): Promise<void> {
  if (head.blocks.length === 1) return await linearBackward(p, dz, x, head.blocks[0].tensor, dx, null);
  const [n, V] = dz.shape;
  for (const [i, { row0, tensor }] of head.blocks.entries()) {
    const vb = tensor.shape[0], part = p.transient("head grad rows", [n, vb], "f32");
    await copyStrided(p, dz, part, {
      count: [1, n, vb],
      srcStrides: [0, V, 1],
      srcOffset: row0,
      dstStrides: [0, vb, 1],
    });
    await linearBackward(p, part, x, tensor, dx, null, { accumulateDx: i > 0 });
  }
}

/**
 * The window rows a run uses for R rows: --head-chunk-rows (`requested`) rounded to whole granules, else every
 * row when their logits bind as one storage buffer, else the most that do ({@link dflashBindingRows}).
 */
export function dflashRunWindowRows(
  rows: number,
  cfg: { vocabSize: number; blockSize: number },
  requested: number | null,
  maxBinding: number,
): number {
  if (requested !== null) return dflashWindowRows(rows, requested, cfg.blockSize);
  return dflashBindingRows(rows, cfg.vocabSize, cfg.blockSize, maxBinding);
}
