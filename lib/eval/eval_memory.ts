/**
 * The GPU tensors of an evaluation's sessions and programs, listed from the shapes alone for the memory plan
 * (./eval_plan.ts), each list in step with the code that allocates it:
 *
 * - the speculative target session (./target_infer.ts `TargetSession`): per-layer KV caches, the aux
 *   features in row blocks, and its prefill, verify and compact programs;
 * - the draft session (./draft_infer.ts `DraftSession`): its KV cache, fed-back states, RoPE tables, and its
 *   extend and step programs;
 * - plain decoding (lib/models/generate.ts `Generator`): a KV cache per cache length, and a program per
 *   (query length, offset).
 *
 * Shared scratch (`Program.transient`) is listed once per kind and shape, as the program keeps it: the
 * embedding lookup over row blocks, the column blocks of matrices over one binding (lib/ops/matmul.ts
 * `linear`), the lm_head's row blocks (lib/models/target.ts `recordHead`), the aux gather over blocks.
 */
import { rowBlocks } from "../ops/blocks.ts";
import { SPLIT_LINEAR_BLOCK } from "../ops/matmul.ts";
import type { TargetConfig } from "../models/config.ts";
import type { DraftConfig } from "../models/draft_config.ts";
import { eagle3ParamNames, eagle3ParamShapes } from "../models/eagle3.ts";
import {
  eagle3FcActivations,
  eagle3HeadActivations,
  eagle3LayerActivations,
  type MakeTensor,
} from "../models/eagle3_layer.ts";
import { planned, type PlannedTensor, type TargetSplits, trunkTensors } from "../models/target_memory.ts";
import { extendWindows } from "./draft_infer.ts";

/** The device limits the lists depend on. */
export interface EvalLimits {
  maxStorageBufferBindingSize: number;
  minStorageBufferOffsetAlignment: number;
}

/** How the target's and the draft's matrices split on the device (what shared scratch depends on). */
export interface EvalSplits extends TargetSplits {
  /** Row counts of the blocks of the draft's f32 matrices over one binding (fc, midlayer, lm_head). */
  draftMatrices: { fc: number[]; layer: number[]; lmHead: number[] };
}

/** Shared scratch of a program: one tensor per (kind, shape, dtype), as `Program.transient` keeps them. */
class Transients {
  readonly #seen = new Set<string>();
  readonly out: PlannedTensor[] = [];

  add(kind: string, shape: number[], dtype: "f32" | "i32"): void {
    const key = `${kind}|${shape.join("x")}|${dtype}`;
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.out.push(planned(kind, shape, dtype));
  }

  /** The column blocks of `rows` rows through matrices split in `blockRows` (lib/ops/matmul.ts `linear`). */
  linear(rows: number, blockRows: number[]): void {
    for (const n of blockRows) this.add(SPLIT_LINEAR_BLOCK, [rows, n], "f32");
  }

  /** The lookup of `rows` ids [rows, cols] over a table in several row blocks (lib/ops/row_split.ts). */
  embedding(rows: number, cols: number, split: boolean): void {
    if (!split) return;
    this.add("embedding block ids", [rows], "i32");
    this.add("embedding block rows", [rows, cols], "f32");
  }
}

/** The draft's f32 weights as `Eagle3Draft.create` allocates them (its gradients are made only by training). */
export function draftWeightTensors(cfg: DraftConfig): PlannedTensor[] {
  const shapes = eagle3ParamShapes(cfg);
  return eagle3ParamNames(cfg).map((n) => planned(`draft ${n}`, shapes[n]!, "f32"));
}

/** The row counts of the aux features' blocks [auxRows, 3H] f32 (lib/ops/row_split.ts `emptyRowSplit`). */
export function auxBlockRows(limits: EvalLimits, auxRows: number, hidden: number): number[] {
  return rowBlocks(limits, auxRows, 3 * hidden, [4]).map((b) => b.rows);
}

/** A `TargetSession` of `maxLen` cache slots and `auxRows` aux rows: caches, aux blocks, prefix, lengths. */
export function targetSessionTensors(
  cfg: TargetConfig,
  limits: EvalLimits,
  maxLen: number,
  auxRows: number,
): { caches: PlannedTensor[]; aux: PlannedTensor[]; rest: PlannedTensor[] } {
  const cache = (kind: string) =>
    Array.from(
      { length: cfg.numLayers },
      (_, l) => planned(`spec target ${kind} cache ${l}`, [maxLen, cfg.numKvHeads, cfg.headDim], "f32"),
    );
  return {
    caches: [...cache("k"), ...cache("v")],
    aux: auxBlockRows(limits, auxRows, cfg.hiddenSize).map((n) =>
      planned("spec target aux", [n, 3 * cfg.hiddenSize], "f32")
    ),
    rest: [planned("spec target prefix", [1], "i32"), planned("spec target lengths", [1], "i32")],
  };
}

/**
 * The final norm and lm_head of `rows` rows (./target_infer.ts `finalLogits`, lib/models/generate.ts): the
 * normed rows, their rstd, the logits [rows, V], and the lm_head's row-block columns when it is split.
 */
function headTensors(cfg: TargetConfig, rows: number, splits: TargetSplits, t: Transients): PlannedTensor[] {
  if (splits.lmHeadBlockRows.length > 1) {
    for (const n of splits.lmHeadBlockRows) t.add("head rows", [rows, n], "f32");
  }
  return [
    planned("final hidden", [rows, cfg.hiddenSize], "f32"),
    planned("final rstd", [rows], "f32"),
    planned("logits", [rows, cfg.vocabSize], "f32"),
  ];
}

/**
 * A cached trunk pass of B × Tq tokens and its head on each sequence's last row: the speculative prefill
 * (B 1, Tq the prompt) and every plain-decoding pass (lib/models/target.ts `recordTrunk`).
 */
export function cachedPassTensors(
  cfg: TargetConfig,
  B: number,
  Tq: number,
  splits: TargetSplits,
  plain: boolean,
): PlannedTensor[] {
  const t = new Transients(), rows = B * Tq;
  const out = [planned("ids", [rows], "i32"), ...(plain ? [planned("lengths", [B], "i32")] : [])];
  out.push(...trunkTensors(cfg, B, Tq));
  t.embedding(rows, cfg.hiddenSize, splits.embedBlockRows.length > 1);
  t.linear(rows, splits.matrixBlockRows);
  // The prefill copies its last row out; plain decoding only when a pass has several rows per sequence.
  if (!plain || Tq > 1) out.push(planned("last hidden", [B, cfg.hiddenSize], "f32"));
  out.push(...headTensors(cfg, B, splits, t));
  return [...out, ...t.out];
}

/** The verify program of an N-node tree (./target_infer.ts `#buildVerify`). */
export function verifyTensors(cfg: TargetConfig, N: number, splits: TargetSplits): PlannedTensor[] {
  const t = new Transients();
  const out = [
    planned("ids", [N], "i32"),
    planned("positions", [N], "i32"),
    planned("tree mask", [N, N], "u32"),
    ...trunkTensors(cfg, 1, N).filter((x) => x.label !== "attention lse"),
  ];
  t.embedding(N, cfg.hiddenSize, splits.embedBlockRows.length > 1);
  t.linear(N, splits.matrixBlockRows);
  out.push(...headTensors(cfg, N, splits, t));
  return [...out, ...t.out];
}

/** The compact program of an N-node tree (./target_infer.ts `#buildCompact`). */
export function compactTensors(cfg: TargetConfig, N: number): PlannedTensor[] {
  return [
    planned("path slots", [N], "i32"),
    planned("path rows", [N, cfg.numKvHeads * cfg.headDim], "f32"),
  ];
}

/** A plain-decoding KV cache of B sequences × maxLen positions (lib/models/generate.ts `#cache`). */
export function plainCacheTensors(cfg: TargetConfig, B: number, maxLen: number): PlannedTensor[] {
  const make = (kind: string) =>
    Array.from(
      { length: cfg.numLayers },
      (_, l) => planned(`${kind} cache B=${B} layer ${l}`, [B, maxLen, cfg.numKvHeads, cfg.headDim], "f32"),
    );
  return [...make("k"), ...make("v")];
}

/** A `DraftSession`'s own tensors: KV cache, fed-back states, meta and RoPE tables. */
export function draftSessionTensors(
  cfg: DraftConfig,
  o: { maxLen: number; maxExtendRows: number; topk: number },
): { caches: PlannedTensor[]; rest: PlannedTensor[] } {
  const cache = [o.maxLen, cfg.numKvHeads, cfg.headDim];
  return {
    caches: [planned("spec draft k cache", cache, "f32"), planned("spec draft v cache", cache, "f32")],
    rest: [
      planned("draft y", [Math.max(o.maxExtendRows, o.topk), cfg.hiddenSize], "f32"),
      planned("spec draft meta", [2], "i32"),
      planned("draft rope cos", [o.maxLen, cfg.headDim / 2], "f32"),
      planned("draft rope sin", [o.maxLen, cfg.headDim / 2], "f32"),
    ],
  };
}

const make: MakeTensor<PlannedTensor> = (shape, dtype, label) => planned(label, shape, dtype);

/**
 * The midlayer and head of a draft pass over R rows (./draft_infer.ts `#layer`): ids, positions, mask
 * [R, treeLen], the layer's activations (y goes to the session's states unless they are normed), the head's
 * `headRows` rows, and the shared scratch of split matrices and a split embedding.
 */
function draftLayerTensors(
  cfg: DraftConfig,
  R: number,
  treeLen: number,
  headRows: number,
  splits: EvalSplits,
  t: Transients,
): PlannedTensor[] {
  const feedNormed = cfg.feedNormedHidden;
  const out = [
    planned("ids", [R], "i32"),
    planned("positions", [R], "i32"),
    planned("mask", [R, treeLen], "u32"),
  ];
  const act = eagle3LayerActivations(make, cfg, R, feedNormed ? {} : { out: planned("", [0], "f32") });
  out.push(...Object.values(act).filter((x) => x.label !== ""));
  const head = eagle3HeadActivations(make, cfg, headRows);
  out.push(head.normed, head.rstd, head.logits);
  if (feedNormed) out.push(planned("rstd", [R], "f32"));
  out.push(planned("head rows", [headRows, cfg.hiddenSize], "f32"));
  t.embedding(R, cfg.hiddenSize, splits.embedBlockRows.length > 1);
  t.linear(R, splits.draftMatrices.layer);
  t.linear(headRows, splits.draftMatrices.lmHead);
  return out;
}

/**
 * A draft extend of R rows (./draft_infer.ts `#buildExtend`): aux row indices, fc's output, per window size
 * the gathered aux rows and fc_norm's scratch (and the gather's over aux blocks), then the layer and head.
 */
export function draftExtendTensors(
  cfg: DraftConfig,
  limits: EvalLimits,
  R: number,
  auxBlocks: number,
  splits: EvalSplits,
): PlannedTensor[] {
  const t = new Transients(), Ht = cfg.targetHiddenSize;
  const out = [planned("aux rows", [R], "i32"), planned("fc out", [R, cfg.hiddenSize], "f32")];
  const sizes = new Set(extendWindows(limits, R, Ht).map(([, rows]) => rows));
  for (const w of sizes) {
    out.push(planned("aux", [w, 3 * Ht], "f32"));
    const fc = eagle3FcActivations(make, cfg, w);
    if (fc) out.push(...fc.states, ...fc.rstd, fc.normedState, fc.normed);
    if (auxBlocks > 1) {
      t.add("row block index", [w], "i32");
      t.add("row block rows", [w, 3 * Ht], "f32");
    }
    t.linear(w, splits.draftMatrices.fc);
  }
  out.push(...draftLayerTensors(cfg, R, R, 1, splits, t));
  return [...out, ...t.out];
}

/** The draft step program of `topk` branches over `numSteps` levels (./draft_infer.ts `#stepProgram`). */
export function draftStepTensors(
  cfg: DraftConfig,
  topk: number,
  numSteps: number,
  splits: EvalSplits,
): PlannedTensor[] {
  const t = new Transients();
  const out = [
    planned("parent rows", [topk], "i32"),
    planned("fed-back hidden", [topk, cfg.hiddenSize], "f32"),
  ];
  out.push(...draftLayerTensors(cfg, topk, (numSteps - 1) * topk, topk, splits, t));
  return [...out, ...t.out];
}
