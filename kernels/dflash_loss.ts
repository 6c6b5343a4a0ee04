/**
 * The DFlash objective's per-row kernels (lib/ops/dflash_loss.ts; SpecForge
 * `specforge/algorithms/common/dflash_family_model.py` `OnlineDFlashModel`), f32, over logits z [rows, V] of the
 * frozen target head and one label y per row:
 *
 *   `rowStats`:     lse = log Σ_v exp(z_v), ce = lse − z_y, correct = [argmax z = y] (the first maximum, as
 *                   torch.argmax), one invocation per row → stats [rows, 3]
 *   `dpaceWeights`: the detached D-PACE weights along each block of B rows (arXiv 2605.18810 Eq. 7-8):
 *                   s_k = (1−α)·exp(−ce_k) + α where w_k > 0, else 1; P_k = Π_{i≤k} s_i;
 *                   U_k = Σ_{m≥k} P_m·w_m; ω_k = w_k·U_k (dpace), w_k·P_k (cumulative confidence only) or
 *                   w_k·U_k / max(P_k, tiny) (continuation value only); one invocation per block
 *   `gradient`:     ∂(scale · Σ_r ω_r·ce_r)/∂z = scale·ω_r·(softmax(z) − onehot(y)), one invocation per element,
 *                   scale read from a one-element buffer the host writes before each run; it overwrites the
 *                   logits (each element is read, then written, by one invocation)
 *   `slotSums`:     per block slot k, added to sums [B, 4]: Σ w·ce, Σ w, Σ [argmax = y]·[w > 0.5], Σ ω·ce over
 *                   the rows of that slot (the metrics per block position, read at log intervals)
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup. */
export const DFLASH_LOSS_WG = 64;

/** Bindings: params, logits, labels (i32), stats. */
export const rowStats = /* wgsl */ `
struct Params { rows: u32, vocab: u32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(${DFLASH_LOSS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = linear_workgroup(wg, nwg) * ${DFLASH_LOSS_WG}u + lid;
  if (r >= p.rows) { return; }
  let base = r * p.vocab;
  var m = logits[base];
  var best = 0u;
  for (var v = 1u; v < p.vocab; v++) {
    let z = logits[base + v];
    if (z > m) { m = z; best = v; }
  }
  var s = 0.0;
  for (var v = 0u; v < p.vocab; v++) { s += exp(logits[base + v] - m); }
  let lse = m + log(s);
  let y = u32(labels[r]);
  stats[3u * r] = lse;
  stats[3u * r + 1u] = lse - logits[base + y];
  stats[3u * r + 2u] = select(0.0, 1.0, best == y);
}
`;

/** Bindings: params, stats, w (per-row weights), omega (output). kind: 0 dpace, 1 cumulative, 2 continuation. */
export const dpaceWeights = /* wgsl */ `
struct Params { blocks: u32, block_size: u32, alpha: f32, kind: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> omega: array<f32>;

const TINY: f32 = 1.17549435e-38;

@compute @workgroup_size(${DFLASH_LOSS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let n = linear_workgroup(wg, nwg) * ${DFLASH_LOSS_WG}u + lid;
  if (n >= p.blocks) { return; }
  let r0 = n * p.block_size;
  // Pass 1: the prefix products P_k into omega (as scratch), and the block's total Σ P·w.
  var prefix = 1.0;
  var total = 0.0;
  for (var k = 0u; k < p.block_size; k++) {
    let r = r0 + k;
    let s = select(1.0, (1.0 - p.alpha) * exp(-stats[3u * r + 1u]) + p.alpha, w[r] > 0.0);
    prefix *= s;
    omega[r] = prefix;
    total += prefix * w[r];
  }
  // Pass 2: U_k = Σ_{m≥k} P_m·w_m, the running total less what came before k.
  var before = 0.0;
  for (var k = 0u; k < p.block_size; k++) {
    let r = r0 + k;
    let big_p = omega[r];
    let u = total - before;
    before += big_p * w[r];
    var weight = u;
    if (p.kind == 1u) { weight = big_p; }
    if (p.kind == 2u) { weight = u / max(big_p, TINY); }
    omega[r] = w[r] * weight;
  }
}
`;

/** Bindings: params, logits (read-write: the gradient overwrites them), labels, stats, omega, scale. */
export const gradient = /* wgsl */ `
struct Params { rows: u32, vocab: u32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> omega: array<f32>;
@group(0) @binding(5) var<storage, read> scale: array<f32>;

@compute @workgroup_size(${DFLASH_LOSS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${DFLASH_LOSS_WG}u + lid;
  if (i >= p.rows * p.vocab) { return; }
  let r = i / p.vocab;
  let v = i % p.vocab;
  let onehot = select(0.0, 1.0, v == u32(labels[r]));
  logits[i] = scale[0] * omega[r] * (exp(logits[i] - stats[3u * r]) - onehot);
}
`;

/** Bindings: params, stats, w, omega, sums (read-write, [B, 4], accumulated). */
export const slotSums = /* wgsl */ `
struct Params { rows: u32, block_size: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> omega: array<f32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(${DFLASH_LOSS_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let k = gid.x;
  if (k >= p.block_size) { return; }
  var acc = vec4<f32>(0.0);
  for (var r = k; r < p.rows; r += p.block_size) {
    let ce = stats[3u * r + 1u];
    acc += vec4<f32>(w[r] * ce, w[r], select(0.0, stats[3u * r + 2u], w[r] > 0.5), omega[r] * ce);
  }
  for (var i = 0u; i < 4u; i++) { sums[4u * k + i] += acc[i]; }
}
`;
