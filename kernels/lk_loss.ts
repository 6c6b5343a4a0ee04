/**
 * Kernels of the acceptance-targeted "LK" losses (Samarin et al., "LK Losses: Direct Acceptance Rate
 * Optimization for Speculative Decoding", arXiv 2602.23881; SpecForge `specforge/core/lk_loss.py`
 * `compute_lk_loss` and `expected_acceptance_rate`). Per row (b, t) of TTT position k, with j = t + k + 1 the
 * target row it is taught by (same sequence, j < T; past the end p ≡ 0 and α = 0):
 *
 *   q_v = softmax(z)_v over the draft vocabulary            z: the draft's logits [rows, Vd]
 *   p_v = exp(L_j[d2t(v)] − logsumexp_V L_j)                the target's probability, NOT renormalised to the
 *                                                            draft vocabulary (L: unshifted target logits)
 *   α   = Σ_v min(p_v, q_v)                                 the expected acceptance of the draft token
 *   S   = Σ_v s_v q_v,  s_v = [q_v < p_v] + ½[q_v = p_v]    (PyTorch's `minimum` backward)
 *   ∂α/∂z_u = q_u (s_u − S)
 *
 * Over the rows with position mask m (pos_mask^k): Ā = Σ m α / max(Σ m, 1e-8), L̄ = Σ m ℓ / max(Σ m, 1e-8) with
 * ℓ = log α (0 when α = 0), and the per-position loss
 *   alpha:   −L̄                       ∂/∂z_u = −(m / (M α)) q_u (s_u − S)              (M = max(Σ m, 1e-8))
 *   lambda:  λ·L_KL + (1 − λ)(1 − Ā),  λ = kl_scale · exp(−kl_decay · sg(Ā))
 *            ∂/∂z_u = λ ∂L_KL/∂z_u − (1 − λ)(m / M) q_u (s_u − S)
 * Logits and teacher logits are read one row per invocation; the target's log-sum-exp comes as the running
 * (max, Σexp) pair [rows, 2] of the full-vocabulary head (kernels/vocab_stats.ts). The per-row kernels may run
 * on a window of rows: row r of their tensors is row row0 + r of the batch (t = (row0 + r) mod T), and the
 * teacher tensors hold at least the rows the window's rows are taught by.
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { ROW_REDUCE, ROW_WG } from "./softmax.ts";

/** Invocations per workgroup of the per-row LK kernels. */
export const LK_ROWS_WG = 64;

/** Loss variants of {@link lkGrad}'s `variant` parameter. */
export const LK_VARIANT = { alpha: 0, lambda: 1 } as const;

const ROW_HELPERS = /* wgsl */ `
${LINEAR_WORKGROUP}
fn row_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return linear_workgroup(wg, nwg) * ${LK_ROWS_WG}u + lid;
}
// (max, Σ exp(z − max)) of the draft logits of the row starting at element base.
fn draft_stats(base: u32, cols: u32) -> vec2<f32> {
  var m = -3.4028234663852886e38;
  for (var v = 0u; v < cols; v++) { m = max(m, z[base + v]); }
  var s = 0.0;
  for (var v = 0u; v < cols; v++) { s = s + exp(z[base + v] - m); }
  return vec2<f32>(m, s);
}
// Whether row r has a target row j = t + k + 1 inside its sequence (past the end p ≡ 0 and α = 0).
fn has_teacher(r: u32) -> bool {
  return (r + p.row0) % p.seq + p.k + 1u < p.seq;
}
// The target's full-vocabulary log-sum-exp of row src, from its running (max, Σexp).
fn target_lse(src: u32) -> f32 {
  let ms = max_sum[src];
  return ms.x + log(ms.y);
}
fn weight_of(q: f32, pv: f32) -> f32 {
  return select(select(0.0, 0.5, q == pv), 1.0, q < pv);
}
`;

/**
 * α and S of every row (formulas in the module doc). Bindings: 0 params {rows, seq, cols, k, row0}, 1 z [rows, Vd],
 * 2 teacher logits [rows, Vd] (unshifted, draft vocabulary), 3 the target's (max, Σexp) [rows, 2]
 * (unshifted), 4 out [rows, 2] = (α, S). Workgroups: ceil(rows / LK_ROWS_WG).
 */
export const lkRows = /* wgsl */ `
struct Params { rows: u32, seq: u32, cols: u32, k: u32, row0: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> teacher: array<f32>;
@group(0) @binding(3) var<storage, read> max_sum: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec2<f32>>;
${ROW_HELPERS}

@compute @workgroup_size(${LK_ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = row_index(wg, nwg, lid);
  if (r >= p.rows) { return; }
  if (!has_teacher(r)) { out[r] = vec2<f32>(0.0, 0.0); return; }
  let src = r + p.k + 1u;
  let lse = target_lse(src);
  let base = r * p.cols;
  let st = draft_stats(base, p.cols);
  var alpha = 0.0;
  var s = 0.0;
  for (var v = 0u; v < p.cols; v++) {
    let q = exp(z[base + v] - st.x) / st.y;
    let pv = exp(teacher[src * p.cols + v] - lse);
    alpha = alpha + min(q, pv);
    s = s + weight_of(q, pv) * q;
  }
  out[r] = vec2<f32>(alpha, s);
}
`;

/**
 * stats = (Σ m α, Σ m, Σ m ℓ, 0) over the rows (ℓ = log α, 0 when α = 0). One workgroup (fixed-shape tree
 * sums: deterministic). Bindings: 0 params {rows}, 1 (α, S) [rows, 2], 2 mask [rows], 3 stats [4] (out).
 */
export const lkReduce = /* wgsl */ `
struct Params { rows: u32, _a: u32, _b: u32, _c: u32 }
${ROW_REDUCE}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> alpha_s: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var ma = 0.0;
  var mm = 0.0;
  var ml = 0.0;
  for (var r = lid; r < p.rows; r = r + WG) {
    let m = select(0.0, 1.0, mask[r] != 0.0);
    let a = alpha_s[r].x;
    ma = ma + m * a;
    mm = mm + m;
    if (a > 0.0) { ml = ml + m * log(a); }
  }
  let sa = wg_sum(ma, lid);
  let sm = wg_sum(mm, lid);
  let sl = wg_sum(ml, lid);
  if (lid == 0u) {
    stats[0] = sa;
    stats[1] = sm;
    stats[2] = sl;
    stats[3] = 0.0;
  }
}
`;

/**
 * The gradient of the LK loss of TTT position k, written over the logits z (in place: each invocation reads
 * its row of z before writing it): z_u ← w_KL · g_u + scale · c · q_u (s_u − S), with g the KL gradient
 * (already scaled by `scale`), w_KL = λ (lambda) or 0 (alpha), c = −(1 − λ)·m/M (lambda) or −m/(M α)
 * (alpha, 0 when α = 0). Bindings: 0 params {rows, seq, cols, k, variant, scale, kl_scale, kl_decay, row0}, 1 z
 * [rows, Vd] (read_write), 2 g [rows, Vd], 3 teacher logits, 4 the target's (max, Σexp), 5 (α, S) [rows, 2],
 * 6 mask [rows], 7 stats [4].
 */
export const lkGrad = /* wgsl */ `
struct Params {
  rows: u32, seq: u32, cols: u32, k: u32, variant: u32, scale: f32, kl_scale: f32, kl_decay: f32,
  row0: u32, _a: u32, _b: u32, _c: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> teacher: array<f32>;
@group(0) @binding(4) var<storage, read> max_sum: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> alpha_s: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> mask: array<f32>;
@group(0) @binding(7) var<storage, read> stats: array<f32>;
${ROW_HELPERS}

@compute @workgroup_size(${LK_ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = row_index(wg, nwg, lid);
  if (r >= p.rows) { return; }
  let total = max(stats[1], 1e-8);
  let lambda = p.kl_scale * exp(-p.kl_decay * stats[0] / total);
  let w_kl = select(0.0, lambda, p.variant == ${LK_VARIANT.lambda}u);
  let base = r * p.cols;
  let m = select(0.0, 1.0, mask[r] != 0.0);
  let as_ = alpha_s[r];
  var c = 0.0;
  if (p.variant == ${LK_VARIANT.lambda}u) {
    c = -(1.0 - lambda) * m / total;
  } else if (as_.x > 0.0) {
    c = -m / (total * as_.x);
  }
  if (c == 0.0 || !has_teacher(r)) {
    for (var v = 0u; v < p.cols; v++) { z[base + v] = w_kl * g[base + v]; }
    return;
  }
  let src = r + p.k + 1u;
  let lse = target_lse(src);
  let st = draft_stats(base, p.cols);
  for (var v = 0u; v < p.cols; v++) {
    let q = exp(z[base + v] - st.x) / st.y;
    let pv = exp(teacher[src * p.cols + v] - lse);
    z[base + v] = w_kl * g[base + v] + p.scale * c * q * (weight_of(q, pv) - as_.y);
  }
}
`;
