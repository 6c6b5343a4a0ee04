/**
 * The EAGLE-3 draft loss of one TTT position (SpecForge `specforge/core/loss.py` `LogSoftmaxLoss`) and its
 * accuracy metric (`acces` in `specforge/core/eagle3.py` `OnlineEagle3Model.forward`), one workgroup per row
 * of logits z [rows, V] against target probabilities p [rows, V]:
 *
 *   rowLoss = [mask ≠ 0] · (− Σ_v p_v · log_softmax(z)_v) / denominator
 *   grad    = gradScale · [mask ≠ 0] · (softmax(z) · Σ_v p_v − p) / denominator
 *
 * fused, without storing probabilities: pass 1 reads z and p once for the online softmax statistics
 * (m, s = Σ exp(z − m)) and Σ p; pass 2 reads them again and writes the gradient, accumulating the loss
 * Σ p · (lse − z) with lse = m + log s. Invocation `lid` owns the same columns in both passes, so the
 * gradient may overwrite the logits in place (`softCrossEntropyInPlace`): each element is read before the
 * invocation that owns it writes it. `softCrossEntropyRows` and `agreementRows` are one-row-per-invocation
 * variants for CPU adapters (no workgroup memory or barriers, vec4 loads when V % 4 = 0).
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { ARGMAX, ARGMAX_ORDER, rowsArgmaxFn } from "./reduce.ts";
import { ROW_REDUCE, ROW_WG, ROWS_WG, rowsPrelude, rowsType } from "./softmax.ts";

function crossEntropySource(inPlace: boolean): string {
  const logits = inPlace
    ? "@group(0) @binding(1) var<storage, read_write> logits: array<f32>;"
    : "@group(0) @binding(1) var<storage, read> logits: array<f32>;";
  const grad = inPlace ? "logits" : "grad";
  return /* wgsl */ `
struct Params { rows: u32, cols: u32, denominator: f32, grad_factor: f32 }
${LINEAR_WORKGROUP}
${ROW_REDUCE}
@group(0) @binding(0) var<uniform> p: Params;
${logits}
@group(0) @binding(2) var<storage, read> target_p: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;
${inPlace ? "" : "@group(0) @binding(5) var<storage, read_write> grad: array<f32>;"}

// grad_factor = gradScale / denominator, folded on the host.
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  if (mask[row] == 0.0) { // a skipped row: no loss, no gradient
    for (var c = lid; c < p.cols; c = c + WG) { ${grad}[base + c] = 0.0; }
    if (lid == 0u) { row_loss[row] = 0.0; }
    return;
  }
${crossEntropyPasses(grad, (c) => `target_p[base + ${c}]`)}
}
`;
}

/**
 * The two passes of the workgroup-per-row soft cross-entropy over row `base` (WGSL statements; needs
 * `ROW_REDUCE`, `logits`, `row_loss` and the params above): online (m, Σ exp(z − m)) and Σ p, then the loss and
 * the gradient into `grad`. `target(c)` is the WGSL expression of p at column c (./eagle3_loss.ts makes p there).
 */
export function crossEntropyPasses(grad: string, target: (c: string) => string): string {
  return `  var st = vec2<f32>(NEG_MAX, 0.0);
  var p_sum = 0.0;
  for (var c = lid; c < p.cols; c = c + WG) {
    st = softmax_push(st, logits[base + c]);
    p_sum = p_sum + ${target("c")};
  }
  let stats = wg_max_sumexp(st, lid);
  let total_p = wg_sum(p_sum, lid);
  let lse = stats.x + log(stats.y);
  var loss = 0.0;
  for (var c = lid; c < p.cols; c = c + WG) {
    let log_q = logits[base + c] - lse;
    let t = ${target("c")};
    loss = loss - t * log_q;
    ${grad}[base + c] = p.grad_factor * (exp(log_q) * total_p - t);
  }
  let row_total = wg_sum(loss, lid);
  if (lid == 0u) { row_loss[row] = row_total / p.denominator; }`;
}

/**
 * Soft cross-entropy with a separate gradient output. Bindings: 0 params {rows, cols, denominator,
 * gradScale / denominator}, 1 logits (read), 2 target probabilities, 3 mask [rows], 4 rowLoss [rows] (out),
 * 5 grad [rows, cols] (out).
 */
export const softCrossEntropy = crossEntropySource(false);

/** Soft cross-entropy writing the gradient over the logits (binding 1, read_write); no binding 5. */
export const softCrossEntropyInPlace = crossEntropySource(true);

function agreementSource(targetIsIds: boolean): string {
  const target = targetIsIds
    ? "@group(0) @binding(2) var<storage, read> target_ids: array<i32>;"
    : "@group(0) @binding(2) var<storage, read> target_p: array<f32>;";
  const targetIndex = targetIsIds ? "target_ids[row]" : "i32(target_best)";
  return /* wgsl */ `
struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${ROW_REDUCE}
${ARGMAX}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
${target}
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> correct_mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> per_row: array<f32>;

// per_row[2r] = 1 if row r may count as correct (correct_mask ≠ 0) and argmax logits == the target index;
// per_row[2r + 1] = 1 if row r is counted (mask ≠ 0).
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let counted = select(0.0, 1.0, mask[row] != 0.0);
  if (correct_mask[row] == 0.0) {
    if (lid == 0u) { per_row[2u * row] = 0.0; per_row[2u * row + 1u] = counted; }
    return;
  }
  let base = row * p.cols;
  var bv = 0.0;
  var bi = NO_INDEX;
  ${targetIsIds ? "" : "var tv = 0.0;\n  var ti = NO_INDEX;"}
  for (var c = lid; c < p.cols; c = c + WG) {
    let v = logits[base + c];
    if (argmax_better(v, c, bv, bi)) { bv = v; bi = c; }
    ${
    targetIsIds ? "" : "let t = target_p[base + c];\n    if (argmax_better(t, c, tv, ti)) { tv = t; ti = c; }"
  }
  }
  let best = wg_argmax(bv, bi, lid);
  ${targetIsIds ? "" : "let target_best = wg_argmax(tv, ti, lid);"}
  if (lid == 0u) {
    per_row[2u * row] = select(0.0, 1.0, i32(best) == ${targetIndex});
    per_row[2u * row + 1u] = counted;
  }
}
`;
}

/** Agreement per row against target token ids (i32 [rows], draft-vocab indices; −1 never matches). */
export const agreementIds = agreementSource(true);

/** Agreement per row against the argmax of target probabilities (f32 [rows, cols]). */
export const agreementProbs = agreementSource(false);

/**
 * counts[0] = (accumulate ? counts[0] : 0) + Σ_r per_row[2r], counts[1] likewise with per_row[2r + 1]. One
 * workgroup; each count is a sum of 0/1 values in a fixed order (exact below 2^24).
 */
export const agreementTotal = /* wgsl */ `
struct Params { rows: u32, accumulate: u32, _pad0: u32, _pad1: u32 }
${ROW_REDUCE}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> per_row: array<f32>;
@group(0) @binding(2) var<storage, read_write> counts: array<f32>;

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var correct = 0.0;
  var counted = 0.0;
  for (var r = lid; r < p.rows; r = r + WG) {
    correct = correct + per_row[2u * r];
    counted = counted + per_row[2u * r + 1u];
  }
  let total_correct = wg_sum(correct, lid);
  let total_counted = wg_sum(counted, lid);
  if (lid == 0u) {
    let keep = p.accumulate != 0u;
    counts[0] = select(0.0, counts[0], keep) + total_correct;
    counts[1] = select(0.0, counts[1], keep) + total_counted;
  }
}
`;

/**
 * One-row-per-invocation variant of {@link softCrossEntropy} (`inPlace`: of {@link softCrossEntropyInPlace})
 * for CPU adapters (see `rowsPrelude` in ./softmax.ts): the same two passes over the row, run by one
 * invocation, so each element is read before the same invocation overwrites it in place. Same bindings and
 * params, entry point `main`; workgroups: ceil(rows / ROWS_WG). With `vec4` (cols a multiple of 4) the row
 * arrays are read four columns at a time.
 */
export function softCrossEntropyRows(inPlace: boolean, vec4: boolean): string {
  const T = rowsType(vec4);
  const grad = inPlace ? "logits" : "grad";
  return /* wgsl */ `
struct Params { rows: u32, cols: u32, denominator: f32, grad_factor: f32 }
${LINEAR_WORKGROUP}
${rowsPrelude(vec4)}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, ${inPlace ? "read_write" : "read"}> logits: array<${T}>;
@group(0) @binding(2) var<storage, read> target_p: array<${T}>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;
${inPlace ? "" : `@group(0) @binding(5) var<storage, read_write> grad: array<${T}>;`}

@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  let n = p.cols / W;
  let base = row * n;
  if (mask[row] == 0.0) { // a skipped row: no loss, no gradient
    for (var i = 0u; i < n; i++) { ${grad}[base + i] = ${T}(0.0); }
    row_loss[row] = 0.0;
    return;
  }
${crossEntropyPassesRows(T, grad, (i) => `target_p[base + ${i}]`)}
}
`;
}

/**
 * The two passes of the one-row-per-invocation soft cross-entropy over units base .. base + n (WGSL
 * statements; needs `rowsPrelude`, `logits`, `row_loss` and the params above), as {@link crossEntropyPasses}.
 */
export function crossEntropyPassesRows(T: string, grad: string, target: (i: string) => string): string {
  return `  // Pass 1: online (m, Σ exp(z − m)) and Σ p.
  var st = vec2<f32>(NEG_MAX, 0.0);
  var p_sum = ${T}(0.0);
  for (var i = 0u; i < n; i++) {
    st = stats_push(st, logits[base + i]);
    p_sum = p_sum + ${target("i")};
  }
  let lse = st.x + log(st.y);
  let total_p = hsum(p_sum);
  // Pass 2: loss −Σ p·log q and the gradient, log q = z − lse.
  var loss = ${T}(0.0);
  for (var i = 0u; i < n; i++) {
    let log_q = logits[base + i] - lse;
    let t = ${target("i")};
    loss = loss - t * log_q;
    ${grad}[base + i] = p.grad_factor * (exp(log_q) * total_p - t);
  }
  row_loss[row] = hsum(loss) / p.denominator;`;
}

/**
 * One-row-per-invocation variant of {@link agreementIds} (`targetIsIds`) or {@link agreementProbs} for CPU
 * adapters: same bindings, params and per_row output, entry point `main`; workgroups: ceil(rows / ROWS_WG).
 * The argmax scans the row in column order (see `rowsArgmaxFn` in ./reduce.ts), with vec4 loads when `vec4`.
 */
export function agreementRows(targetIsIds: boolean, vec4: boolean): string {
  const T = rowsType(vec4);
  const target = targetIsIds
    ? "@group(0) @binding(2) var<storage, read> target_ids: array<i32>;"
    : `@group(0) @binding(2) var<storage, read> target_p: array<${T}>;`;
  return /* wgsl */ `
struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${rowsPrelude(vec4)}
${ARGMAX_ORDER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<${T}>;
${target}
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> correct_mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> per_row: array<f32>;
${rowsArgmaxFn("logits_argmax", "logits", vec4)}
${targetIsIds ? "" : rowsArgmaxFn("target_argmax", "target_p", vec4)}

@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  var correct = 0.0;
  if (correct_mask[row] != 0.0) {
    let n = p.cols / W;
    let best = i32(logits_argmax(row * n, n));
    let want = ${targetIsIds ? "target_ids[row]" : "i32(target_argmax(row * n, n))"};
    correct = select(0.0, 1.0, best == want);
  }
  per_row[2u * row] = correct;
  per_row[2u * row + 1u] = select(0.0, 1.0, mask[row] != 0.0);
}
`;
}
