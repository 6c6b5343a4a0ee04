/**
 * Kernels of the EAGLE-3 training step that no other op family provides: the teacher of TTT position k read
 * straight from the UNshifted target outputs (SpecForge `specforge/core/eagle3.py` `_compute_target_p` and
 * the input alignment of `OnlineEagle3Model.forward`; `specforge/utils.py` `padding`), and the per-position
 * metric accumulation (`acces` in `OnlineEagle3Model.forward`). Rows are r = b·T + t of a right-padded batch
 * [B, T].
 *
 * The shift by one position (target'_j = L_{j+1}, u⁰_j = x_{j+1}, zero fill at j = T−1) and the TTT window
 * (TTT position k reads teacher row t + k, padded past the end with p = 1/Vd, id 0, mask 0) are folded into
 * the index arithmetic: at TTT position k, row t uses target row j = t + k + 1 when j < T. The teacher p^k
 * itself is made where the loss reads it (./eagle3_loss.ts).
 *
 * SpecForge's classic scripts are [C], its current runtime (`specforge train`) [H].
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { ROW_REDUCE, ROW_WG } from "./softmax.ts";

/** Invocations per workgroup of {@link teacherRows}. */
export const TEACHER_ROWS_WG = 64;

/**
 * The per-row inputs of TTT position k, one invocation per row (b, t), with j = t + k:
 *   ids_k[r]       = x[b, t+k+1] if t+k+1 < T else 0               (token fed, teacher-forced)
 *   full           = argmax L[b, j+1] if j+1 < T else 0             (SpecForge's ids_pad)
 *   loss_mask_k[r] = M[b, j] if j < T else 0                        (accuracy mask, SpecForge's acces)
 *   target_k[r]    = draft index of `full`, −1 when not in the draft vocab (t2d[full] = 0)
 *   pos_mask_k[r]  = loss_mask_k[r] if target_k[r] ≥ 0 else 0       (t2d[argmax] · loss_mask)
 * Bindings: 0 params {rows, seq, vocab, k}, 1 ids i32, 2 argmax i32, 3 loss mask f32, 4 target-to-draft map
 * i32 [V], 5 ids_k i32 (out), 6 pos_mask_k f32 (out), 7 loss_mask_k f32 (out), 8 target_k i32 (out).
 */
export const teacherRows = /* wgsl */ `
struct Params { rows: u32, seq: u32, vocab: u32, k: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read> argmax_full: array<i32>;
@group(0) @binding(3) var<storage, read> loss_mask: array<f32>;
@group(0) @binding(4) var<storage, read> to_draft: array<i32>;
@group(0) @binding(5) var<storage, read_write> ids_k: array<i32>;
@group(0) @binding(6) var<storage, read_write> pos_mask_k: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss_mask_k: array<f32>;
@group(0) @binding(8) var<storage, read_write> target_k: array<i32>;

@compute @workgroup_size(${TEACHER_ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = linear_workgroup(wg, nwg) * ${TEACHER_ROWS_WG}u + lid;
  if (r >= p.rows) { return; }
  let t = r % p.seq;
  let j = t + p.k;
  var tok = 0i;
  var full = 0i;
  var m = 0.0;
  if (j + 1u < p.seq) {
    tok = ids[r + p.k + 1u];
    full = argmax_full[r + p.k + 1u];
  }
  if (j < p.seq) { m = loss_mask[r + p.k]; }
  var d = -1i;
  if (full >= 0i && u32(full) < p.vocab) { d = to_draft[u32(full)]; }
  ids_k[r] = tok;
  loss_mask_k[r] = m;
  target_k[r] = d;
  pos_mask_k[r] = select(0.0, m, d >= 0i);
}
`;

/**
 * Columns of one TTT position's row in the metrics tensor [K, METRIC_COLS]: Σ loss_k·B·T, acc correct, acc
 * total, Σ B·T, Σ m·α (expected acceptance, kernels/lk_loss.ts), Σ m.
 */
export const METRIC_COLS = 6;

/**
 * metrics[k] += (tokens · Σ_r row_loss[r], counts[0], counts[1], tokens, acceptance[0], acceptance[1]): the
 * step's loss_k (row_loss already divided by B·T) weighted by the micro-batch's B·T rows, as SpecForge [H]
 * aggregates ploss_k, the acc_k numerator and denominator, and (when `has_acceptance`) the masked sums of the
 * expected acceptance α. One workgroup (fixed-shape tree sum: deterministic). Bindings: 0 params
 * {rows, k, tokens, has_acceptance}, 1 row_loss [rows], 2 counts [2], 3 metrics [K, 6] (read_write),
 * 4 acceptance [4] (lk stats: Σ m α, Σ m, ...; any buffer when has_acceptance is 0).
 */
export const metricsAdd = /* wgsl */ `
struct Params { rows: u32, k: u32, tokens: f32, has_acceptance: u32 }
${ROW_REDUCE}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> counts: array<f32>;
@group(0) @binding(3) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(4) var<storage, read> acceptance: array<f32>;

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var r = lid; r < p.rows; r = r + WG) { s = s + row_loss[r]; }
  let total = wg_sum(s, lid);
  if (lid == 0u) {
    let o = p.k * ${METRIC_COLS}u;
    metrics[o] = metrics[o] + p.tokens * total;
    metrics[o + 1u] = metrics[o + 1u] + counts[0];
    metrics[o + 2u] = metrics[o + 2u] + counts[1];
    metrics[o + 3u] = metrics[o + 3u] + p.tokens;
    if (p.has_acceptance != 0u) {
      metrics[o + 4u] = metrics[o + 4u] + acceptance[0];
      metrics[o + 5u] = metrics[o + 5u] + acceptance[1];
    }
  }
}
`;
