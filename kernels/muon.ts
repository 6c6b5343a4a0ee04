/**
 * The element-wise kernels of one Muon update (Jordan et al., "Muon: an optimizer for hidden layers", 2024;
 * torch.optim.Muon, which vLLM's speculators trains drafts with), one invocation per element. The
 * orthogonalisation between them is matmuls (lib/ops/muon.ts):
 *
 *   coef = min(1, max_norm / (sqrt(normSq) + 1e-6))      (the global clip, as kernels/adamw.ts; 1 when off)
 *   g    = coef · grad
 *   buf  = buf + (1 − μ) · (g − buf)                      (torch: buf.lerp_(g, 1 − μ))
 *   u    = g + μ · (buf − g)   with Nesterov, else buf     (torch: g.lerp(buf, μ))
 *   X₀   = u / max(‖u‖_F, eps)                           (muonNormalize)
 *   X    = NewtonSchulz₅(X₀)                              (lib/ops/muon.ts)
 *   w    = w · (1 − lr · weight_decay) − lr · adjust · X  (muonApply; lr = state[0] · lr_ratio)
 *
 * `state` is the AdamW update's state tensor (lr, 1 − β1^t, 1 − β2^t, max_norm): Muon's learning rate is
 * AdamW's scheduled one times a fixed ratio, so one schedule drives both.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup. */
export const MUON_WG = 256;

/** Bindings: 0 params, 1 grad, 2 buf (rw), 3 out (rw), 4 normSq [1], 5 state [4]. */
export const muonMomentum = /* wgsl */ `
struct Params { n: u32, momentum: f32, one_minus_momentum: f32, nesterov: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> buf: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> norm_sq: array<f32>;
@group(0) @binding(5) var<storage, read> state: array<f32>;

@compute @workgroup_size(${MUON_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${MUON_WG}u + lid;
  if (i >= p.n) { return; }
  let max_norm = state[3];
  var coef = 1.0;
  if (max_norm > 0.0) { coef = min(1.0, max_norm / (sqrt(norm_sq[0]) + 1e-6)); }
  let g = grad[i] * coef;
  let b = buf[i] + p.one_minus_momentum * (g - buf[i]);
  buf[i] = b;
  if (p.nesterov != 0u) { out[i] = g + p.momentum * (b - g); } else { out[i] = b; }
}
`;

/** Bindings: 0 params, 1 x (rw), 2 normSq [1] (Σ x²). */
export const muonNormalize = /* wgsl */ `
struct Params { n: u32, eps: f32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> norm_sq: array<f32>;

@compute @workgroup_size(${MUON_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${MUON_WG}u + lid;
  if (i >= p.n) { return; }
  x[i] = x[i] / max(sqrt(norm_sq[0]), p.eps);
}
`;

/** Bindings: 0 params, 1 param (rw), 2 update, 3 state [4]. */
export const muonApply = /* wgsl */ `
struct Params { n: u32, lr_ratio: f32, adjust: f32, weight_decay: f32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> update: array<f32>;
@group(0) @binding(3) var<storage, read> state: array<f32>;

@compute @workgroup_size(${MUON_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${MUON_WG}u + lid;
  if (i >= p.n) { return; }
  let lr = state[0] * p.lr_ratio;
  param[i] = param[i] * (1.0 - lr * p.weight_decay) - lr * p.adjust * update[i];
}
`;
