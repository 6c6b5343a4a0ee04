/**
 * The GPU tensors a target allocates, as lists of (label, bytes) computed from its config and the checkpoint's
 * tensor headers, without reading a weight: its weights as lib/models/target.ts uploads them (stored dtype,
 * embedding and lm_head in row blocks that fit one binding) and the scratch of one batched forward
 * (`TargetForward`). The memory plan (lib/train/memory_plan.ts) replays them; the rules that decide dtypes and
 * row blocks live here and target.ts uses them, so the plan and the load cannot disagree.
 */
import { LimitError } from "../gpu/errors.ts";
import { allocationBytes, type DType, DTYPE_BYTES } from "../tensor.ts";
import type {
  LayerWeightNames,
  MoeConfig,
  MoeLayerNames,
  TargetConfig,
  TargetWeightNames,
} from "./config.ts";
import { moeScratchShapes } from "../ops/moe.ts";
import { fusedRows, moeShapeOf } from "./config.ts";
import { mlaKeyShapes, mlaScratchShapes } from "./mla.ts";

/** One tensor of a plan: its label and the bytes it asks the buffer pool for. */
export interface PlannedTensor {
  /** What it holds (the label the allocation gives it). */
  label: string;
  /** Bytes asked of the buffer pool (before its size classes). */
  bytes: number;
}

/** A tensor of `shape` and `dtype` as planned. */
export function planned(label: string, shape: readonly number[], dtype: DType): PlannedTensor {
  return { label, bytes: allocationBytes(shape, dtype) };
}

/** The rows of a layer's k and v (and of their caches) per token: [nkv, hd] each, MLA's [1, rope] and [1, r]. */
export function kvRowShapes(cfg: TargetConfig): { k: [number, number]; v: [number, number] } {
  if (cfg.mla) return { k: [1, cfg.mla.ropeDim], v: [1, cfg.mla.kvLoraRank] };
  return { k: [cfg.numKvHeads, cfg.headDim], v: [cfg.numKvHeads, cfg.headDim] };
}

/** What a checkpoint's header says of a tensor. */
export interface StoredTensor {
  /** Safetensors dtype ("BF16", "F16", "F32", ...). */
  dtype: string;
  shape: number[];
}

/** The dtype a stored matrix is uploaded as: bf16 and f32 kept, f16 kept with shader-f16, else f32. */
export function uploadDtype(stored: string, shaderF16: boolean): DType {
  if (stored === "BF16") return "bf16";
  if (stored === "F16" && shaderF16) return "f16";
  return "f32";
}

/** Rows per block so that each block (its own tensor) fits `maxBytes`. */
export function rowsPerBlock(rows: number, bytesPerRow: number, maxBytes: number, name: string): number {
  if (rows * bytesPerRow <= maxBytes) return rows;
  const fit = Math.floor(maxBytes / bytesPerRow);
  if (fit < 1) {
    throw new LimitError(
      `tensor ${name}: one row of ${bytesPerRow} bytes exceeds the binding limit of ${maxBytes}`,
    );
  }
  return fit;
}

/**
 * Experts per block when `experts` matrices of `expertBytes` each are stacked into blocks of at most `maxBytes`
 * (a sparse MLP's projections, lib/ops/moe.ts); a LimitError names `name` when one expert alone is larger.
 */
export function expertsPerBlock(
  experts: number,
  expertBytes: number,
  maxBytes: number,
  name: string,
): number {
  const fit = Math.min(experts, Math.floor(maxBytes / expertBytes));
  if (fit < 1) {
    throw new LimitError(
      `tensor ${name}: one expert's ${expertBytes} bytes exceed the binding limit of ${maxBytes}`,
    );
  }
  return fit;
}

/** The expert ranges [first, first + count) of the blocks {@link expertsPerBlock} gives. */
export function expertBlocks(experts: number, perBlock: number): Array<{ first: number; count: number }> {
  return Array.from({ length: Math.ceil(experts / perBlock) }, (_, b) => ({
    first: b * perBlock,
    count: Math.min(perBlock, experts - b * perBlock),
  }));
}

/** The row counts of the blocks a [rows, cols] matrix of `dtype` splits into to fit `maxBlockBytes` each. */
export function rowBlockSizes(
  name: string,
  rows: number,
  cols: number,
  dtype: DType,
  maxBlockBytes: number,
): number[] {
  const per = rowsPerBlock(rows, cols * DTYPE_BYTES[dtype], maxBlockBytes, name);
  return Array.from({ length: Math.ceil(rows / per) }, (_, b) => Math.min(per, rows - b * per));
}

/** The row blocks of a [rows, cols] matrix of `dtype` split to fit `maxBlockBytes`. */
export function rowSplitTensors(
  name: string,
  rows: number,
  cols: number,
  dtype: DType,
  maxBlockBytes: number,
): PlannedTensor[] {
  let row0 = 0;
  return rowBlockSizes(name, rows, cols, dtype, maxBlockBytes).map((n) => {
    row0 += n;
    return planned(`${name}[${row0 - n}:${row0}]`, [n, cols], dtype);
  });
}

/** The fields of a decoder layer's weights that hold matrices (uploaded in their stored dtype). */
export const LAYER_MATRICES = ["q", "k", "v", "o", "qA", "kvA", "kPe", "kvB", "gate", "up", "down"] as const;
/** The fields that hold vectors (norms and biases, uploaded as f32; null when the architecture has none). */
export const LAYER_VECTORS = [
  "inputNorm",
  "qANorm",
  "kvANorm",
  "postAttentionNorm",
  "preFeedforwardNorm",
  "postFeedforwardNorm",
  "qBias",
  "kBias",
  "vBias",
  "oBias",
  "qNorm",
  "kNorm",
  "sinks",
  "gateBias",
  "upBias",
  "downBias",
] as const;

/** One weight of a decoder layer as it is uploaded. */
export interface LayerWeight {
  /** Its field in the layer's weights. */
  field: typeof LAYER_MATRICES[number] | typeof LAYER_VECTORS[number] | "moe";
  /** Its checkpoint name (rows of a fused matrix: `fusedRows`). */
  name: string;
  /** A projection matrix (stored dtype) rather than a norm or bias vector (f32). */
  matrix: boolean;
  /** Experts stacked along the rows (a sparse MLP's projection), else absent. */
  experts?: number;
  shape: number[];
  dtype: DType;
}

/** The weights of decoder layer `l` as they are uploaded: matrices in their upload dtype, vectors f32. */
export function layerWeights(
  stored: (name: string) => StoredTensor,
  l: LayerWeightNames,
  shaderF16: boolean,
): LayerWeight[] {
  const out: LayerWeight[] = [];
  for (const field of LAYER_MATRICES) {
    const name = l[field];
    if (!name) continue; // a sparse MoE layer's dense MLP
    const fused = fusedRows(name);
    const info = stored(fused ? fused.tensor : name);
    const shape = fused ? [fused.to - fused.from, ...info.shape.slice(1)] : info.shape;
    out.push({ field, name, matrix: true, shape, dtype: uploadDtype(info.dtype, shaderF16) });
  }
  for (const field of LAYER_VECTORS) {
    const name = l[field];
    if (name) out.push({ field, name, matrix: false, shape: stored(name).shape, dtype: "f32" });
  }
  if (l.moe) out.push(...moeLayerWeights(stored, l.moe, shaderF16));
  return out;
}

/** A sparse MLP's weights as uploaded: the router, each projection's experts stacked in one matrix, the shared expert. */
function moeLayerWeights(
  stored: (name: string) => StoredTensor,
  n: MoeLayerNames,
  shaderF16: boolean,
): LayerWeight[] {
  const one = (name: string): LayerWeight => {
    const info = stored(name);
    return { field: "moe", name, matrix: true, shape: info.shape, dtype: uploadDtype(info.dtype, shaderF16) };
  };
  const stacked = (names: string[]): LayerWeight => {
    const w = one(names[0]);
    return {
      ...w,
      name: stackedName(names),
      shape: [names.length * w.shape[0], ...w.shape.slice(1)],
      experts: names.length,
    };
  };
  const out = [
    one(n.router),
    ...[n.routerBias, n.correctionBias].filter((b) => b).map((b) => vector(stored, b!)),
  ];
  if (n.fused) out.push(...fusedWeights(stored, n.fused, shaderF16));
  else out.push(stacked(n.gate), stacked(n.up), stacked(n.down));
  if (n.shared) out.push(one(n.shared.gate), one(n.shared.up), one(n.shared.down));
  if (n.shared?.gateProj) out.push(one(n.shared.gateProj));
  return out;
}

/** A vector weight as uploaded: f32, flat. */
function vector(stored: (name: string) => StoredTensor, name: string): LayerWeight {
  const n = stored(name).shape.reduce((a, b) => a * b, 1);
  return { field: "moe", name, matrix: false, shape: [n], dtype: "f32" };
}

/**
 * GPT-OSS's fused experts as uploaded (lib/models/moe_weights.ts): bf16 [E, K, N] as [E·K, N], or MXFP4's
 * code and scale bytes as u32 words, each with its f32 bias [E·N] (`experts` lets the plan split them in
 * blocks of whole experts).
 */
function fusedWeights(
  stored: (name: string) => StoredTensor,
  f: NonNullable<MoeLayerNames["fused"]>,
  shaderF16: boolean,
): LayerWeight[] {
  const out: LayerWeight[] = [];
  for (const name of [f.gateUp, f.down]) {
    if (f.mxfp4) {
      const [E, N, G] = stored(`${name}_blocks`).shape;
      out.push(
        {
          field: "moe",
          name: `${name}_blocks`,
          matrix: true,
          shape: [E * N * G * 4],
          dtype: "u32",
          experts: E,
        },
        {
          field: "moe",
          name: `${name}_scales`,
          matrix: true,
          shape: [Math.ceil(E * N * G / 4)],
          dtype: "u32",
        },
      );
    } else {
      const info = stored(name), [E, K, N] = info.shape;
      const dtype = uploadDtype(info.dtype, shaderF16);
      out.push({ field: "moe", name, matrix: true, shape: [E * K, N], dtype, experts: E });
    }
    if (f.bias) out.push(vector(stored, `${name}_bias`));
  }
  return out;
}

/** The label of experts' matrices stacked into one tensor: the first name and the count. */
export function stackedName(names: string[]): string {
  return `${names[0]} (${names.length} experts stacked)`;
}

/** The bytes one decoder layer's weights take on the device (in their upload dtypes). */
export function layerBytes(
  stored: (name: string) => StoredTensor,
  l: LayerWeightNames,
  shaderF16: boolean,
): number {
  return layerWeights(stored, l, shaderF16).reduce((sum, w) => sum + allocationBytes(w.shape, w.dtype), 0);
}

/**
 * The program a streamed target runs decoder layer `layer` with (lib/models/target_stream.ts): its slot's, with
 * the RoPE tables of its kind (Gemma 3's local or global).
 */
export function streamProgramKey(cfg: TargetConfig, slots: number, layer: number): string {
  return `${layer % slots}${cfg.gemma?.slidingLayers[layer] ? " local" : ""}`;
}

/** How many layer programs a target streamed through `slots` slots records. */
export function streamProgramCount(cfg: TargetConfig, slots: number): number {
  return new Set(Array.from({ length: cfg.numLayers }, (_, i) => streamProgramKey(cfg, slots, i))).size;
}

/** The layer slots of a streamed target: as many layers as `budgetBytes` holds, at least one, at most all. */
export function streamSlotCount(budgetBytes: number, perLayerBytes: number, numLayers: number): number {
  return Math.min(numLayers, Math.max(1, Math.floor(budgetBytes / perLayerBytes)));
}

/** Which parts of a target are loaded: all of it (`TargetModel`), or its ends (`TargetEnds`, offline). */
export type TargetParts =
  /** Every layer resident, or (`slots`) that many layers' weight slots of a streamed target. */
  | { layers: true; slots?: number }
  | { layers: false; lmHead: boolean };

/**
 * Positions the RoPE tables of a loaded target cover: `requested` (default max_position_embeddings), at most
 * max_position_embeddings, and for LongRoPE at most its original context (its long factors beyond it are not
 * supported).
 */
export function targetRopePositions(cfg: TargetConfig, requested?: number): number {
  const limit = cfg.ropeScaling.type === "longrope"
    ? cfg.ropeScaling.originalMaxPositionEmbeddings
    : cfg.maxPositionEmbeddings;
  return Math.min(requested ?? limit, limit);
}

/** How a target is uploaded. */
export interface TargetUpload {
  /** Whether the device has shader-f16 (F16 weights stay f16). */
  shaderF16: boolean;
  /** The largest block of the embedding and lm_head (the binding limit). */
  maxBlockBytes: number;
  /** Positions the RoPE tables cover (full targets only). */
  maxPositions: number;
}

/**
 * The weights `TargetModel.load` (or `TargetEnds.load`) uploads: each layer's matrices in their upload dtype
 * and vectors in f32, the embedding and lm_head as row blocks (one set when tied), the final norm and the
 * RoPE tables [maxPositions, rotary_dim/2] f32 (cos and sin; Gemma 3's sliding layers have a second pair).
 */
export function targetWeightTensors(
  cfg: TargetConfig,
  names: TargetWeightNames,
  stored: (name: string) => StoredTensor,
  parts: TargetParts,
  u: TargetUpload,
): PlannedTensor[] {
  const out: PlannedTensor[] = [];
  const split = (name: string) => {
    const s = stored(name);
    out.push(
      ...rowSplitTensors(name, s.shape[0], s.shape[1], uploadDtype(s.dtype, u.shaderF16), u.maxBlockBytes),
    );
  };
  if (parts.layers) {
    for (const l of names.layers.slice(0, parts.slots ?? names.layers.length)) {
      for (const w of layerWeights(stored, l, u.shaderF16)) out.push(...expertSplit(w, u.maxBlockBytes));
    }
  }
  split(names.embed);
  const lmHead = parts.layers || parts.lmHead;
  if (lmHead && names.lmHead !== names.embed) split(names.lmHead);
  if (parts.layers) {
    out.push(planned(names.finalNorm, stored(names.finalNorm).shape, "f32"));
    const table = [u.maxPositions, cfg.rotaryDim / 2];
    for (const kind of cfg.gemma ? ["rope", "local rope"] : ["rope"]) {
      out.push(planned(`${kind} cos`, table, "f32"), planned(`${kind} sin`, table, "f32"));
    }
  }
  return out;
}

/** A layer weight as uploaded: one tensor, or a sparse MLP's stacked experts in blocks of one binding each. */
function expertSplit(w: LayerWeight, maxBlockBytes: number): PlannedTensor[] {
  if (!w.experts) return [planned(w.name, w.shape, w.dtype)];
  // Each expert's part: rows [E·R, C] → [R, C]; a flat [E·n] (MXFP4 words) → [n].
  const [rows, ...rest] = w.shape, perRows = rows / w.experts;
  const per = expertsPerBlock(w.experts, allocationBytes([perRows, ...rest], w.dtype), maxBlockBytes, w.name);
  return expertBlocks(w.experts, per).map(({ first, count }) =>
    planned(`${w.name}[${first}:${first + count}]`, [count * perRows, ...rest], w.dtype)
  );
}

/** What a forward computes (lib/models/target.ts `TargetOutputs`, the parts that allocate). */
export interface ForwardOutputs {
  aux?: boolean;
  /** Layers the aux states hold (default 3, an EAGLE-3 draft's; a DFlash draft's target_layer_ids count). */
  auxCount?: number;
  finalHidden?: boolean;
  logits?: boolean;
  /** Rows of the lm_head subset (the draft vocabulary), and its row blocks' sizes when it is split. */
  subset?: { size: number; blockRows: number[] };
  vocabStats?: boolean;
  vocabChunk?: number;
  topk?: number;
}

/** How a target's weights are split on a device: what its forward's shared scratch depends on. */
export interface TargetSplits {
  /** Row counts of the embedding's blocks (lib/ops/row_split.ts). */
  embedBlockRows: number[];
  /** Row counts of the lm_head's blocks. */
  lmHeadBlockRows: number[];
  /** The block row counts of the decoder matrices over one binding (lib/ops/matmul.ts `linear`). */
  matrixBlockRows: number[];
  /** Programs the decoder layers are recorded in: 1, or a streamed target's slots (default 1). */
  layerPrograms?: number;
}

/**
 * The shared scratch (lib/gpu/program.ts `Program.transient`) of R rows through split weights: the embedding
 * lookup's ids and rows when the table is split, and one column block per distinct block size of the split
 * matrices.
 */
export function splitScratchTensors(
  R: number,
  hidden: number,
  embedSplit: boolean,
  blockRows: number[],
): PlannedTensor[] {
  const out = embedSplit
    ? [planned("embedding block ids", [R], "i32"), planned("embedding block rows", [R, hidden], "f32")]
    : [];
  for (const n of new Set(blockRows)) out.push(planned("split linear column block", [R, n], "f32"));
  return out;
}

/**
 * The scratch of one `TargetForward` of B sequences of T tokens (ids, lengths, the aux states, the trunk's
 * residual and layer scratch, the shared scratch of split weights, the final norm and the head outputs).
 */
export function targetForwardTensors(
  cfg: TargetConfig,
  B: number,
  T: number,
  outputs: ForwardOutputs,
  splits: TargetSplits,
): PlannedTensor[] {
  const rows = B * T, H = cfg.hiddenSize, V = cfg.vocabSize;
  const out = [planned("ids", [rows], "i32"), planned("lengths", [B], "i32")];
  if (outputs.aux) out.push(planned("aux hidden states", [rows, (outputs.auxCount ?? 3) * H], "f32"));
  out.push(...trunkTensors(cfg, B, T));
  out.push(...splitScratchTensors(rows, H, splits.embedBlockRows.length > 1, splits.matrixBlockRows));
  // A streamed target records each slot's layer in a program of its own, each with its transient scratch.
  for (let k = 1; k < (splits.layerPrograms ?? 1); k++) {
    out.push(...splitScratchTensors(rows, H, false, splits.matrixBlockRows));
  }
  if (!(outputs.finalHidden || outputs.logits || outputs.subset || outputs.vocabStats)) return out;
  out.push(planned("final hidden", [rows, H], "f32"), planned("final rstd", [rows], "f32"));
  const headRows = new Set<number>();
  const addBlocks = (blockRows: number[]) => {
    if (blockRows.length > 1) { for (const n of blockRows) headRows.add(n); }
  };
  if (outputs.logits) {
    out.push(planned("logits", [rows, V], "f32"));
    addBlocks(splits.lmHeadBlockRows);
  }
  if (outputs.subset) {
    out.push(planned("subset logits", [rows, outputs.subset.size], "f32"));
    addBlocks(outputs.subset.blockRows);
  }
  for (const n of headRows) out.push(planned("head rows", [rows, n], "f32"));
  if (outputs.vocabStats) {
    const chunk = outputs.vocabChunk ?? 4096;
    out.push(
      planned("vocab max/sum", [rows, 2], "f32"),
      planned("vocab argmax", [rows], "i32"),
      planned("logits chunk", [rows, Math.min(chunk, V)], "f32"),
    );
    const k = outputs.topk ?? 0;
    if (k > 0) out.push(planned("top-k ids", [rows, k], "i32"), planned("top-k logits", [rows, k], "f32"));
  }
  return out;
}

/** The trunk's scratch for B × T tokens: the residual stream, one layer's scratch (shared by every layer), lse. */
export function trunkTensors(cfg: TargetConfig, B: number, T: number): PlannedTensor[] {
  const rows = B * T;
  const { hiddenSize: H, headDim: hd, numHeads: nh, numKvHeads: nkv, intermediateSize: I } = cfg;
  const out = [
    planned("residual", [rows, H], "f32"),
    planned("normed", [rows, H], "f32"),
    planned("rstd", [rows], "f32"),
    planned("q", [rows, nh, hd], "f32"),
    planned("k", [rows, ...kvRowShapes(cfg).k], "f32"),
    planned("v", [rows, ...kvRowShapes(cfg).v], "f32"),
  ];
  if (cfg.qkNorm) {
    out.push(
      planned("q normed", [rows, nh, hd], "f32"),
      planned("k normed", [rows, nkv, hd], "f32"),
      planned("head rstd", [rows * nh], "f32"),
    );
  }
  out.push(
    planned("attention out", [rows, nh, hd], "f32"),
    planned("gate", [rows, I], "f32"),
    planned("up", [rows, I], "f32"),
    planned("swiglu", [rows, I], "f32"),
    ...(cfg.gemma ? [planned("branch", [rows, H], "f32"), planned("branch normed", [rows, H], "f32")] : []),
    ...(cfg.moe ? moeTensors(cfg.moe, rows, H) : []),
    ...(cfg.mla ? mlaScratchShapes(cfg, rows).map(([k, dims]) => planned(`mla ${k}`, dims, "f32")) : []),
    planned("attention lse", [B, nh, T], "f32"),
    // MLA's per-head keys and values of the pass's positions, shared by the layers (lib/models/mla.ts).
    ...(cfg.mla ? mlaKeyShapes(cfg, rows).map(([label, dims]) => planned(label, dims, "f32")) : []),
  );
  return out;
}

/** A sparse MLP's scratch for `rows` tokens (lib/ops/moe.ts `moeScratch`). */
function moeTensors(moe: MoeConfig, rows: number, H: number): PlannedTensor[] {
  return moeScratchShapes(rows, H, moeShapeOf(moe), moe.sharedIntermediate).map((t) =>
    planned(t.label, t.dims, t.dtype)
  );
}
