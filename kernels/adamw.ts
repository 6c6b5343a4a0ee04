/**
 * One AdamW update of an f32 parameter tensor after global grad-norm clipping (SpecForge
 * `specforge/optimizer.py` `BF16Optimizer.step`; torch.nn.utils.clip_grad_norm_ then torch.optim.AdamW), one
 * invocation per element:
 *
 *   coef = min(1, max_norm / (sqrt(normSq) + 1e-6))      (1 when max_norm ≤ 0: clipping off)
 *   g    = coef · grad
 *   w    = w · (1 − lr · weight_decay)                     (decoupled weight decay, applied first)
 *   m    = β1 · m + (1 − β1) · g
 *   v    = β2 · v + (1 − β2) · g²
 *   w    = w − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
 *
 * Per-update scalars (lr, 1 − β1^t, 1 − β2^t, max_norm) come from a small storage tensor that the host
 * rewrites before every update, and normSq from the GPU's global norm reduction, so the dispatch is built once and replayed.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup. */
export const ADAMW_WG = 256;

/** Bindings: 0 params, 1 param (rw), 2 grad, 3 m (rw), 4 v (rw), 5 normSq [1], 6 state [4]. */
export const adamw = /* wgsl */ `
// one_minus_beta1/2 come from the host in f64: 1 - f32(0.999) would be off by 1.3e-5 relative.
struct Params {
  n: u32,
  beta1: f32,
  one_minus_beta1: f32,
  beta2: f32,
  one_minus_beta2: f32,
  eps: f32,
  weight_decay: f32,
  _pad: u32,
}
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> norm_sq: array<f32>;
// state: lr, 1 - beta1^t, 1 - beta2^t, max_norm
@group(0) @binding(6) var<storage, read> state: array<f32>;

@compute @workgroup_size(${ADAMW_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ADAMW_WG}u + lid;
  if (i >= p.n) { return; }
  let lr = state[0];
  let max_norm = state[3];
  var coef = 1.0;
  if (max_norm > 0.0) { coef = min(1.0, max_norm / (sqrt(norm_sq[0]) + 1e-6)); }
  let g = grad[i] * coef;
  let w = param[i] * (1.0 - lr * p.weight_decay);
  let m_new = p.beta1 * m[i] + p.one_minus_beta1 * g;
  let v_new = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
  m[i] = m_new;
  v[i] = v_new;
  let denom = sqrt(v_new) / sqrt(state[2]) + p.eps;
  param[i] = w - (lr / state[1]) * m_new / denom;
}
`;
