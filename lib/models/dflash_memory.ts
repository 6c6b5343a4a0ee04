/**
 * The GPU tensors of one DFlash step (./dflash_step.ts `DflashStep`), listed from the shapes alone in the
 * order the step allocates them, for the memory plan (lib/train/dflash_plan.ts): its inputs, the saved
 * activations of every layer, the head's window of logits (./dflash_head.ts) and, training, the backward's
 * gradients and shared transients.
 */
import { rowBlocks } from "../ops/blocks.ts";
import { dflashBlockRow0 } from "../ops/dflash_attention.ts";
import { SLOT_SUM_COLS } from "../ops/dflash_loss.ts";
import { rmsnormScratchSize } from "../ops/rmsnorm.ts";
import { planned, type PlannedTensor } from "./target_memory.ts";
import type { DflashConfig } from "./dflash_config.ts";
import { dflashWindowRows } from "./dflash_head.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";

/** The shape of a planned step. */
export interface DflashStepShape {
  /** nb, S, N. */
  batches: number;
  seq: number;
  blocks: number;
  /** With the backward. */
  train: boolean;
  /** The head's window rows (./dflash_head.ts `dflashWindowRows`'s input; null: every row). */
  headRows: number | null;
  /** Row counts of the embedding's and lm_head's blocks (one entry: bound whole). */
  embedBlockRows: number[];
  lmHeadBlockRows: number[];
  /** The device's minStorageBufferOffsetAlignment (the key rows' padding, the row blocks' offsets). */
  alignment: number;
  /** The device's maxStorageBufferBindingSize (a draft matrix over it goes by row blocks). */
  binding: number;
  /** The dtype a training step keeps the MLP's gate and up in (default f32). */
  mlpSaved?: MlpSavedDtype;
}

/** The step's tensors in allocation order (the features are the feed's). */
export function dflashStepTensors(cfg: DflashConfig, s: DflashStepShape): PlannedTensor[] {
  const { hiddenSize: H, headDim: hd, blockSize: B } = cfg;
  const R = s.batches * s.blocks * B, C = s.batches * s.seq;
  const R0 = dflashBlockRow0(C, cfg.numKvHeads * hd, s.alignment), table = R * 4 + (R0 + R) * 2;
  const W = dflashWindowRows(R, s.headRows, B);
  const f = (label: string, shape: number[]) => planned(label, shape, "f32");
  const out = [
    planned("noise ids", [R], "i32"),
    planned("labels", [R], "i32"),
    f("weights", [R]),
    f("omega", [R]),
    f("gradient scale", [1]),
    f("block cos", [R, hd / 2]),
    f("block sin", [R, hd / 2]),
    planned("full ranges", [table], "u32"),
    planned("sliding ranges", [table], "u32"),
    f("row stats", [R, 3]),
    f("slot sums", [B, SLOT_SUM_COLS]),
    f("final hidden", [R, H]),
    f("logits", [W, cfg.vocabSize]),
    f("context cos", [s.seq, hd / 2]),
    f("context sin", [s.seq, hd / 2]),
    f("fc out", [C, H]),
    f("rstd c", [C]),
    f("c", [C, H]),
    f("noise", [R, H]),
  ];
  if (s.embedBlockRows.length > 1) {
    out.push(planned("embedding block ids", [R], "i32"), f("embedding block rows", [R, H]));
  }
  out.push(f("act (every layer)", [R, cfg.intermediateSize]));
  const saved = s.train ? s.mlpSaved ?? "f32" : "f32";
  for (let j = 0; j < cfg.numLayers; j++) out.push(...layerTensors(cfg, R, R0 + R, j, saved));
  out.push(...splitMatrixTransients(cfg, s, R, C));
  out.push(f("rstd final", [R]));
  if (s.train) out.push(f("d hidden", [R, H]));
  out.push(...headTransients(R, W, s.lmHeadBlockRows, s.train));
  if (!s.train) return out;
  const scratch = Math.max(
    rmsnormScratchSize(R, H),
    rmsnormScratchSize(C, H),
    rmsnormScratchSize(R * cfg.numHeads, hd),
    rmsnormScratchSize((R0 + R) * cfg.numKvHeads, hd),
  );
  out.push(f("d h", [R, H]), f("norm scratch", [Math.max(1, scratch)]), f("d c", [C, H]));
  out.push(...backwardTransients(cfg, R, R0 + R), f("d fc out", [C, H]));
  return out;
}

/** One layer's saved activations (./dflash_step.ts `#layerActs`), KR = R0 + R key rows, gate and up `saved`. */
function layerTensors(
  cfg: DflashConfig,
  R: number,
  KR: number,
  j: number,
  saved: MlpSavedDtype,
): PlannedTensor[] {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const f = (label: string, shape: number[], dtype: MlpSavedDtype = "f32") =>
    planned(`layer ${j} ${label}`, shape, dtype);
  return [
    f("rstd x", [R]),
    f("x", [R, H]),
    f("q raw", [R, nh * hd]),
    f("rstd q", [R * nh]),
    f("q", [R, nh * hd]),
    f("k raw", [KR, nkv * hd]),
    f("rstd k", [KR * nkv]),
    f("k", [KR, nkv * hd]),
    f("v", [KR, nkv * hd]),
    f("att", [R, nh * hd]),
    f("attention stats", [R * nh, 2]),
    f("residual", [R, H]),
    f("rstd post", [R]),
    f("post norm", [R, H]),
    f("gate", [R, I], saved),
    f("up", [R, I], saved),
    f("out", [R, H]),
  ];
}

/**
 * The head's transients over a split lm_head (lib/ops/row_split.ts `linearRowBlocks`' "head rows", and
 * ./dflash_head.ts `headBackward`'s "head grad rows"): one per window height and block height, in first use.
 */
function headTransients(R: number, W: number, blockRows: number[], train: boolean): PlannedTensor[] {
  if (blockRows.length < 2) return [];
  const seen = new Set<string>(), out: PlannedTensor[] = [];
  const use = (kind: string, n: number, vb: number) => {
    const key = `${kind}|${n}x${vb}`;
    if (seen.has(key)) return;
    seen.add(key);
    out.push(planned(kind, [n, vb], "f32"));
  };
  for (let row0 = 0; row0 < R; row0 += W) {
    const n = Math.min(W, R - row0);
    for (const vb of blockRows) use("head rows", n, vb);
    if (train) { for (const vb of blockRows) use("head grad rows", n, vb); }
  }
  return out;
}

/**
 * The column blocks of the draft's matrices that do not bind whole (lib/ops/matmul.ts `linear` and
 * `linearBackward` by row blocks: a shared [rows of x, block rows] scratch per distinct shape): fc over the C
 * context rows, k_proj and v_proj over C and R, q, o, gate, up and down over R.
 */
function splitMatrixTransients(cfg: DflashConfig, s: DflashStepShape, R: number, C: number): PlannedTensor[] {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const limits = { maxStorageBufferBindingSize: s.binding, minStorageBufferOffsetAlignment: s.alignment };
  const uses: [number, number, number[]][] = [[H, cfg.targetLayerIds.length * H, [C]]];
  if (cfg.numLayers > 0) {
    uses.push([nh * hd, H, [R]], [nkv * hd, H, [C, R]], [H, nh * hd, [R]], [I, H, [R]], [H, I, [R]]);
  }
  const seen = new Set<string>(), out: PlannedTensor[] = [];
  for (const [rows, cols, xRows] of uses) {
    const blocks = rowBlocks(limits, rows, cols, [4, 4]);
    if (blocks.length < 2) continue;
    for (const n of xRows) {
      for (const b of blocks) {
        if (seen.has(`${n}x${b.rows}`)) continue;
        seen.add(`${n}x${b.rows}`);
        out.push(planned("split linear column block", [n, b.rows], "f32"));
      }
    }
  }
  return out;
}

/** The layers' backward transients (./dflash_step.ts `#layerBackward`), shared by every layer. */
function backwardTransients(cfg: DflashConfig, R: number, KR: number): PlannedTensor[] {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const f = (label: string, shape: number[]) => planned(`dflash ${label}`, shape, "f32");
  return [
    f("d act", [R, I]),
    f("d gate", [R, I]),
    f("d up", [R, I]),
    f("d post", [R, H]),
    f("d att", [R, nh * hd]),
    f("d q", [R, nh * hd]),
    f("d k", [KR, nkv * hd]),
    f("d v", [KR, nkv * hd]),
    f("d x", [R, H]),
    f("d q raw", [R, nh * hd]),
    f("d k raw", [KR, nkv * hd]),
  ];
}
