/**
 * The EAGLE-3 loss of one TTT position in one pass over its logits: the teacher p^k made on the fly from the
 * UNshifted target logits (SpecForge `specforge/core/eagle3.py` `_compute_target_p`, with the TTT shift and
 * padding of kernels/eagle3.ts), the soft cross-entropy and its gradient
 * (kernels/loss.ts `softCrossEntropy`, SpecForge `specforge/core/loss.py` `LogSoftmaxLoss`) and the acc_k
 * agreement (kernels/loss.ts `agreementIds`, the `acces` of `specforge/core/eagle3.py`
 * `OnlineEagle3Model.forward`). For row r (t = (row0 + r) mod T) of logits z [rows, Vd]:
 *
 *   p^k_r   = softmax(L[r + k + 1, :]) if t + k + 1 < T, else 1/Vd          (L: the target's draft-vocab logits)
 *   rowLoss = [posMask_r ≠ 0] · (− Σ_v p_v · log_softmax(z_r)_v) / denominator
 *   grad    = gradScale · [posMask_r ≠ 0] · (softmax(z_r) · Σ_v p_v − p) / denominator
 *   perRow  = ([lossMask_r ≠ 0] · [argmax z_r = target_r], [lossMask_r ≠ 0])
 *
 * p^k is never stored: each pass that reads it computes it from L and the teacher row's statistics, with the
 * operations of kernels/softmax.ts `softmaxForward` (exp(L − m) · (1/s)), so every output matches that
 * softmax, the agreement and the soft cross-entropy run one after the other. The
 * argmax reads z before the gradient overwrites it (in place, the default). One workgroup per row
 * (`eagle3Loss`) or, for CPU adapters, one invocation per row (`eagle3LossRows`, vec4 loads when Vd % 4 = 0).
 *
 * Bindings: 0 params {rows, cols, seq, k, row0, denominator, gradScale / denominator}, 1 logits (read_write;
 * the gradient goes over them in place), 2 teacher logits L [≥ rows, Vd] from row0 on, 3 posMask [rows],
 * 4 lossMask [rows], 5 target ids i32 [rows] (draft indices, −1 never matches), 6 rowLoss [rows] (out),
 * 7 perRow [rows, 2] (out), and without `inPlace` 8 grad [rows, Vd] (out).
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { ARGMAX, ARGMAX_ORDER, rowsArgmaxFn } from "./reduce.ts";
import { crossEntropyPasses, crossEntropyPassesRows } from "./loss.ts";
import { ROW_REDUCE, ROW_WG, ROWS_WG, rowsPrelude, rowsStatsFn, rowsType } from "./softmax.ts";

const PARAMS = /* wgsl */ `
struct Params {
  rows: u32, cols: u32, seq: u32, k: u32,
  row0: u32, denominator: f32, grad_factor: f32, _pad: u32,
}
@group(0) @binding(0) var<uniform> p: Params;`;

/**
 * Bindings 1-8 with row arrays of `T` (f32 or vec4<f32>), and `teacher_p(k, uniform_p, m, inv)`: p^k at unit k
 * of the teacher rows, exp(L − m)·(1/s) as softmax makes it, or 1/Vd past the sequence's end.
 */
function bindings(T: string, inPlace: boolean): string {
  const at = (b: number, access: string, name: string, type: string) =>
    `@group(0) @binding(${b}) var<storage, ${access}> ${name}: array<${type}>;`;
  return [
    at(1, inPlace ? "read_write" : "read", "logits", T),
    at(2, "read", "teacher", T),
    at(3, "read", "pos_mask", "f32"),
    at(4, "read", "loss_mask", "f32"),
    at(5, "read", "target_ids", "i32"),
    at(6, "read_write", "row_loss", "f32"),
    at(7, "read_write", "per_row", "f32"),
    ...(inPlace ? [] : [at(8, "read_write", "grad", T)]),
    `fn teacher_p(k: u32, uniform_p: bool, m: f32, inv: f32) -> ${T} {
  if (uniform_p) { return ${T}(1.0 / f32(p.cols)); }
  return exp(teacher[k] - m) * inv;
}`,
  ].join("\n");
}

/** The one-workgroup-per-row kernel (GPUs); `inPlace`: the gradient overwrites the logits. */
export function eagle3Loss(inPlace: boolean): string {
  const grad = inPlace ? "logits" : "grad";
  return /* wgsl */ `
${PARAMS}
${LINEAR_WORKGROUP}
${ROW_REDUCE}
${ARGMAX}
${bindings("f32", inPlace)}

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  // The agreement, from the logits before the gradient replaces them.
  let counted = loss_mask[row] != 0.0;
  var correct = 0.0;
  if (counted) {
    var bv = 0.0;
    var bi = NO_INDEX;
    for (var c = lid; c < p.cols; c = c + WG) {
      let v = logits[base + c];
      if (argmax_better(v, c, bv, bi)) { bv = v; bi = c; }
    }
    correct = select(0.0, 1.0, i32(wg_argmax(bv, bi, lid)) == target_ids[row]);
  }
  if (lid == 0u) {
    per_row[2u * row] = correct;
    per_row[2u * row + 1u] = select(0.0, 1.0, counted);
  }
  if (pos_mask[row] == 0.0) { // a skipped row: no loss, no gradient
    for (var c = lid; c < p.cols; c = c + WG) { ${grad}[base + c] = 0.0; }
    if (lid == 0u) { row_loss[row] = 0.0; }
    return;
  }
  // The teacher row's softmax statistics: past the sequence's end, p = 1/Vd (SpecForge's TTT padding).
  let uniform_p = (row + p.row0) % p.seq + p.k + 1u >= p.seq;
  let src = (row + p.k + 1u) * p.cols;
  var ts = vec2<f32>(0.0, 1.0);
  if (!uniform_p) {
    var st = vec2<f32>(NEG_MAX, 0.0);
    for (var c = lid; c < p.cols; c = c + WG) { st = softmax_push(st, teacher[src + c]); }
    ts = wg_max_sumexp(st, lid);
  }
  let inv = 1.0 / ts.y;
${crossEntropyPasses(grad, (c) => `teacher_p(src + ${c}, uniform_p, ts.x, inv)`)}
}
`;
}

/**
 * The one-row-per-invocation kernel (CPU adapters: no workgroup memory or barriers); `vec4` when Vd % 4 = 0.
 * Workgroups: ceil(rows / ROWS_WG).
 */
export function eagle3LossRows(inPlace: boolean, vec4: boolean): string {
  const T = rowsType(vec4);
  const grad = inPlace ? "logits" : "grad";
  return /* wgsl */ `
${PARAMS}
${LINEAR_WORKGROUP}
${rowsPrelude(vec4)}
${ARGMAX_ORDER}
${bindings(T, inPlace)}
${rowsArgmaxFn("logits_argmax", "logits", vec4)}
${rowsStatsFn("teacher_stats", "teacher")}

@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  let n = p.cols / W;
  let base = row * n;
  // The agreement, from the logits before the gradient replaces them.
  let counted = loss_mask[row] != 0.0;
  var correct = 0.0;
  if (counted) { correct = select(0.0, 1.0, i32(logits_argmax(base, n)) == target_ids[row]); }
  per_row[2u * row] = correct;
  per_row[2u * row + 1u] = select(0.0, 1.0, counted);
  if (pos_mask[row] == 0.0) { // a skipped row: no loss, no gradient
    for (var i = 0u; i < n; i++) { ${grad}[base + i] = ${T}(0.0); }
    row_loss[row] = 0.0;
    return;
  }
  // The teacher row's softmax statistics: past the sequence's end, p = 1/Vd (SpecForge's TTT padding).
  let uniform_p = (row + p.row0) % p.seq + p.k + 1u >= p.seq;
  let src = (row + p.k + 1u) * n;
  var ts = vec2<f32>(0.0, 1.0);
  if (!uniform_p) { ts = teacher_stats(src, n); }
  let inv = 1.0 / ts.y;
${crossEntropyPassesRows(T, grad, (i) => `teacher_p(src + ${i}, uniform_p, ts.x, inv)`)}
}
`;
}
