/**
 * Decoding the compact features of offline training on the GPU (see kernels/features.ts), each op with a
 * plain-TS CPU reference:
 *
 *   dequantizeGroups    grouped symmetric int8/int4 codes of hidden states → f32
 *   topkMerge           running top-k (value, id) of logit rows over vocabulary chunks
 *   scatterTopkTeacher  a dense teacher row over the draft vocabulary rebuilt from a stored top-k
 *
 * These are inputs of training, not trained, so there are no backward ops.
 */
import * as K from "../../kernels/features.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { shapeString, type Tensor } from "../tensor.ts";
import { expectDisjoint, expectDtype, expectShape } from "./check.ts";

export { TOPK_EMPTY_VALUE, TOPK_MAX } from "../../kernels/features.ts";

/** Code width and group size of {@link dequantizeGroups}. */
export interface QuantGroups {
  /** 8: int8 codes, 4 per u32 word; 4: codes nibble − 8 in -8..7, 8 per u32 word. */
  bits: 8 | 4;
  /** Consecutive elements of a row that share one scale. */
  groupSize: number;
}

/**
 * Throws a ShapeError unless codes of a [rows, cols] matrix can be packed `32 / bits` per word with whole
 * words and whole groups per row: cols % (32 / bits) = 0, cols % groupSize = 0, groupSize % (32 / bits) = 0.
 */
function checkQuantLayout(op: string, rows: number, cols: number, { bits, groupSize }: QuantGroups): void {
  const perWord = 32 / bits;
  const fail = (why: string) => {
    throw new ShapeError(`${op}: [${rows}, ${cols}] with bits ${bits}, groupSize ${groupSize}: ${why}`);
  };
  if (bits !== 8 && bits !== 4) fail("bits must be 8 or 4");
  if (!Number.isInteger(groupSize) || groupSize <= 0) fail("groupSize must be a positive integer");
  if (cols % perWord !== 0) fail(`cols must be a multiple of ${perWord} (codes per u32 word)`);
  if (cols % groupSize !== 0) fail("cols must be a multiple of groupSize");
  if (groupSize % perWord !== 0) fail(`groupSize must be a multiple of ${perWord} (codes per u32 word)`);
}

/**
 * out[r, c] = code(r, c) · scales[r, ⌊c / groupSize⌋]: grouped symmetric integer codes to f32.
 *
 * `out` f32 [rows, cols]; `scales` f32 [rows, cols / groupSize]; `codes` u32 [rows · cols · bits / 32], the
 * row-major codes packed little-endian: with bits 8, word i holds elements 4i..4i+3, element 4i+j being byte j
 * (bits 8j..8j+7) as a two's-complement int8; with bits 4, word i holds elements 8i..8i+7, element 8i+j being
 * the nibble at bits 4j..4j+3, whose code is nibble − 8. One invocation per word.
 */
export async function dequantizeGroups(
  p: Program,
  codes: Tensor,
  scales: Tensor,
  out: Tensor,
  o: QuantGroups,
): Promise<void> {
  const op = "dequantizeGroups";
  expectDtype(op, "codes", codes, "u32");
  expectDtype(op, "scales", scales, "f32");
  expectDtype(op, "out", out, "f32");
  expectShape(op, "out", out, [-1, -1]);
  const [rows, cols] = out.shape;
  checkQuantLayout(op, rows, cols, o);
  const words = rows * cols * o.bits / 32;
  expectShape(op, "codes", codes, [words]);
  expectShape(op, "scales", scales, [rows, cols / o.groupSize]);
  if (words === 0) return;
  await p.add(
    { name: `features.dequantize.int${o.bits}`, code: K.dequantize, entryPoint: `int${o.bits}` },
    [
      params(["u32", words], ["u32", cols], ["u32", o.groupSize], ["u32", cols / o.groupSize]),
      codes,
      scales,
      out,
    ],
    Math.ceil(words / K.FEATURES_WG),
  );
}

/** CPU reference of {@link dequantizeGroups} on host arrays (same layout and checks). */
export function dequantizeGroupsCpu(
  codes: Uint32Array,
  scales: Float32Array,
  rows: number,
  cols: number,
  o: QuantGroups,
): Float32Array {
  const op = "dequantizeGroupsCpu";
  checkQuantLayout(op, rows, cols, o);
  const perWord = 32 / o.bits;
  if (codes.length !== rows * cols / perWord || scales.length !== rows * cols / o.groupSize) {
    throw new ShapeError(`${op}: ${codes.length} codes and ${scales.length} scales for [${rows}, ${cols}]`);
  }
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const e = r * cols + c;
      const word = codes[Math.floor(e / perWord)];
      const j = e % perWord;
      const code = o.bits === 8
        ? ((word >>> (8 * j)) & 0xff) << 24 >> 24 // sign-extend the byte
        : ((word >>> (4 * j)) & 0xf) - 8;
      out[e] = code * scales[r * (cols / o.groupSize) + Math.floor(c / o.groupSize)];
    }
  }
  return out;
}

/**
 * Folds the logits `chunk` f32 [rows, n] of columns colOffset..colOffset+n-1 into the running top-k of each
 * row: `ids` i32 [rows, k] and `values` f32 [rows, k], sorted by value descending and, on equal values, by id
 * ascending (the lowest id wins ties, as torch.argmax does). `first` starts from an empty list, ignoring the
 * previous contents; otherwise chunks must arrive in ascending colOffset order. 1 <= k <= {@link TOPK_MAX}.
 *
 * While fewer than k columns have been seen, the unfilled slots hold id -1 and value
 * {@link TOPK_EMPTY_VALUE} (-3.4e38 as f32). NaN logits never enter the list (so a row with NaNs may keep unfilled
 * slots); -Infinity logits do enter when the list is not full. One invocation per row.
 */
export async function topkMerge(
  p: Program,
  chunk: Tensor,
  ids: Tensor,
  values: Tensor,
  { colOffset, first }: { colOffset: number; first: boolean },
): Promise<void> {
  const op = "topkMerge";
  expectDtype(op, "chunk", chunk, "f32");
  expectDtype(op, "ids", ids, "i32");
  expectDtype(op, "values", values, "f32");
  expectShape(op, "chunk", chunk, [-1, -1]);
  const [rows, cols] = chunk.shape;
  expectShape(op, "ids", ids, [rows, -1]);
  const k = ids.shape[1];
  expectShape(op, "values", values, [rows, k]);
  if (k < 1 || k > K.TOPK_MAX) {
    throw new ShapeError(`${op}: ids ${shapeString(ids.shape)}: k = ${k}, expected 1..${K.TOPK_MAX}`);
  }
  if (!Number.isInteger(colOffset) || colOffset < 0 || colOffset + cols > 2 ** 31) {
    throw new ShapeError(
      `${op}: chunk ${shapeString(chunk.shape)} at colOffset ${colOffset}: ids must fit in i32`,
    );
  }
  expectDisjoint(op, "ids", ids, "values", values);
  expectDisjoint(op, "chunk", chunk, "ids", ids);
  expectDisjoint(op, "chunk", chunk, "values", values);
  if (rows === 0) return;
  await p.add(
    { name: "features.topkMerge", code: K.topkMerge, entryPoint: "main" },
    [
      params(["u32", rows], ["u32", cols], ["u32", k], ["u32", colOffset], ["u32", first ? 1 : 0]),
      chunk,
      ids,
      values,
    ],
    Math.ceil(rows / K.ROWS_WG),
  );
}

/**
 * CPU reference of {@link topkMerge} over whole rows: the k largest (value, id) pairs of each row of
 * `logits` [rows, cols], in the same order, with the same empty slots and NaN rule.
 */
export function topkCpu(
  logits: Float32Array,
  rows: number,
  cols: number,
  k: number,
): { ids: Int32Array; values: Float32Array } {
  const ids = new Int32Array(rows * k).fill(-1);
  const values = new Float32Array(rows * k).fill(K.TOPK_EMPTY_VALUE);
  for (let r = 0; r < rows; r++) {
    const order: number[] = [];
    for (let c = 0; c < cols; c++) if (!Number.isNaN(logits[r * cols + c])) order.push(c);
    const at = (c: number) => logits[r * cols + c];
    order.sort((a, b) => at(a) === at(b) ? a - b : at(b) > at(a) ? 1 : -1);
    order.slice(0, k).forEach((c, i) => {
      ids[r * k + i] = c;
      values[r * k + i] = at(c);
    });
  }
  return { ids, values };
}

/** Tensors of {@link scatterTopkTeacher}. */
export interface TopkTeacher {
  /** i32 [rows, k]: target-vocabulary ids of the stored top-k; -1 marks an empty slot. */
  ids: Tensor;
  /** f32 [rows, k]: the teacher's log-probabilities of those ids. */
  logprobs: Tensor;
  /** f32 [rows]: the value of every draft token outside the stored top-k. */
  tail: Tensor;
  /** i32 [V]: draft index of each target id, -1 when the token is not in the draft vocabulary. */
  toDraft: Tensor;
  /** f32 [rows, Vd]: the dense teacher row over the draft vocabulary (written). */
  out: Tensor;
}

/**
 * Rebuilds dense teacher rows over the draft vocabulary from a stored top-k: out[r, d] = tail[r] for every d,
 * then out[r, toDraft[ids[r, i]]] = logprobs[r, i] for each slot i in order. Slots are skipped when the id is
 * negative (empty) or >= V (a GPU kernel cannot raise, so out-of-range ids are guarded rather than reported),
 * or when the token has no draft index (toDraft -1, or outside 0..Vd-1). If two slots of a row map to one draft index, the later slot wins.
 * Two dispatches in order: fill, then scatter (one invocation per row).
 */
export async function scatterTopkTeacher(p: Program, t: TopkTeacher): Promise<void> {
  const op = "scatterTopkTeacher";
  expectDtype(op, "ids", t.ids, "i32");
  expectDtype(op, "logprobs", t.logprobs, "f32");
  expectDtype(op, "tail", t.tail, "f32");
  expectDtype(op, "toDraft", t.toDraft, "i32");
  expectDtype(op, "out", t.out, "f32");
  expectShape(op, "out", t.out, [-1, -1]);
  const [rows, draftVocab] = t.out.shape;
  expectShape(op, "ids", t.ids, [rows, -1]);
  const k = t.ids.shape[1];
  expectShape(op, "logprobs", t.logprobs, [rows, k]);
  expectShape(op, "tail", t.tail, [rows]);
  expectShape(op, "toDraft", t.toDraft, [-1]);
  const vocab = t.toDraft.shape[0];
  for (
    const [name, x] of [["ids", t.ids], ["logprobs", t.logprobs], ["tail", t.tail], [
      "toDraft",
      t.toDraft,
    ]] as const
  ) {
    expectDisjoint(op, name, x, "out", t.out);
  }
  const total = rows * draftVocab;
  if (total === 0) return;
  await p.add(
    { name: "features.fillRows", code: K.fillRows, entryPoint: "main" },
    [params(["u32", total], ["u32", draftVocab]), t.tail, t.out],
    Math.ceil(total / K.FEATURES_WG),
  );
  if (k === 0 || vocab === 0) return;
  await p.add(
    { name: "features.scatterTopk", code: K.scatterTopk, entryPoint: "main" },
    [
      params(["u32", rows], ["u32", k], ["u32", vocab], ["u32", draftVocab]),
      t.ids,
      t.logprobs,
      t.toDraft,
      t.out,
    ],
    Math.ceil(rows / K.ROWS_WG),
  );
}

/** CPU reference of {@link scatterTopkTeacher}: returns out [rows, draftVocab] (V = toDraft.length). */
export function scatterTopkTeacherCpu(
  ids: Int32Array,
  logprobs: Float32Array,
  tail: Float32Array,
  toDraft: Int32Array,
  rows: number,
  k: number,
  draftVocab: number,
): Float32Array {
  const out = new Float32Array(rows * draftVocab);
  for (let r = 0; r < rows; r++) {
    out.fill(tail[r], r * draftVocab, (r + 1) * draftVocab);
    for (let i = 0; i < k; i++) {
      const id = ids[r * k + i];
      if (id < 0 || id >= toDraft.length) continue;
      const d = toDraft[id];
      if (d < 0 || d >= draftVocab) continue;
      out[r * draftVocab + d] = logprobs[r * k + i];
    }
  }
  return out;
}
