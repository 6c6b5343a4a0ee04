/**
 * SwiGLU kernels (elementwise over gate and up of the same shape): out = silu(gate)·up with
 * silu(g) = g·σ(g). Backward: dup = dout·silu(g), dgate = dout·up·σ(g)·(1 + g·(1 − σ(g))), since
 * silu'(g) = σ(g) + g·σ(g)·(1 − σ(g)). All f32, or with gate and up saved as f16 (`forwardHalf`,
 * `backwardHalf`: two elements per invocation, one u32 word of each); one invocation per element (four in
 * `forwardVec4`), grids folded into 2-D.
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { HALF_BITS } from "./convert.ts";

/** Invocations per workgroup. */
export const SWIGLU_WG = 256;

/**
 * WGSL helpers shared with the matmul kernels that fuse a gated MLP into their store (kernels/matmul.ts
 * `GatedEpilogue`): `silu_gate(g)` = g·σ(g), `gelu_tanh_gate(g)`, and `swiglu_grads(d, g, u)` = (∂/∂gate,
 * ∂/∂up) of silu(g)·u with output gradient d. The elementwise kernels below call the same functions, so a
 * fused store gives the same bits as the product followed by the elementwise kernel.
 */
export const GATE_FUNCTIONS = /* wgsl */ `
// σ(g) without overflow: exp of a non-positive argument only.
fn sigmoid(g: f32) -> f32 {
  let e = exp(-abs(g));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), g >= 0.0);
}

fn silu_gate(g: f32) -> f32 { return g * sigmoid(g); }

// ½g·(1 + tanh(√(2/π)·(g + 0.044715g³))), tanh(u) = 1 − 2/(e^{2u} + 1), u clamped to ±15.
fn gelu_tanh_gate(g: f32) -> f32 {
  let u = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -15.0, 15.0);
  let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
  return 0.5 * g * (1.0 + t);
}

// (∂/∂gate, ∂/∂up) of silu(g)·u: d·u·σ(g)·(1 + g·(1 − σ(g))) and d·g·σ(g).
fn swiglu_grads(d: f32, g: f32, u: f32) -> vec2<f32> {
  let s = sigmoid(g);
  return vec2<f32>(d * u * s * (1.0 + g * (1.0 - s)), d * g * s);
}
`;

/**
 * WGSL for gate and up saved as f16, a u32 word per pair of elements (element 2i in the low half, as
 * kernels/convert.ts stores f16): `to_half_pair(a, b)` rounds two f32s to the nearest even f16s and packs them,
 * `half_pair(w)` widens a word's two f16s back to f32 (exactly). Integer operations only, so the same bits on
 * every device, with or without `shader-f16`. The fused matmul stores (kernels/matmul.ts) and the elementwise
 * kernels below share them.
 */
export const HALF_SAVED_FUNCTIONS = /* wgsl */ `
${HALF_BITS}
fn to_half_pair(a: f32, b: f32) -> u32 {
  return f32_to_f16_bits(bitcast<u32>(a)) | (f32_to_f16_bits(bitcast<u32>(b)) << 16u);
}
fn half_pair(w: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(f16_to_f32_bits(w & 0xffffu)), bitcast<f32>(f16_to_f32_bits(w >> 16u)));
}
`;

const HEADER = /* wgsl */ `
struct Params { n: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
${GATE_FUNCTIONS}
`;

/** out = silu(gate)·up. Bindings: params, gate, up, out. */
export const forward = /* wgsl */ `
${HEADER}
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${SWIGLU_WG})
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${SWIGLU_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = silu_gate(gate[i]) * up[i];
}
`;

/**
 * {@link forward} four elements per invocation (n a multiple of 4): vec4 loads and stores, each element through
 * the same `silu_gate`, so the same bits with a quarter of the loads (a CPU driver pays per load, not per
 * byte). Bindings as {@link forward}; p.n counts elements.
 */
export const forwardVec4 = /* wgsl */ `
${HEADER}
@group(0) @binding(1) var<storage, read> gate: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> up: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(${SWIGLU_WG})
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${SWIGLU_WG}u + lid;
  if (i >= p.n / 4u) { return; }
  let g = gate[i];
  let u = up[i];
  out[i] = vec4<f32>(silu_gate(g.x) * u.x, silu_gate(g.y) * u.y, silu_gate(g.z) * u.z, silu_gate(g.w) * u.w);
}
`;

/**
 * out = gelu_tanh(gate)·up (Gemma's gated MLP, PyTorch `gelu(approximate="tanh")`): gelu_tanh(g) =
 * ½g·(1 + tanh(√(2/π)·(g + 0.044715g³))), tanh taken as 1 − 2/(e^{2u} + 1) with u clamped to ±15 (where it is
 * ±1 in f32) so that no exp overflows. Forward only: the frozen target's. Bindings: params, gate, up, out.
 */
export const forwardGeluTanh = /* wgsl */ `
${HEADER}
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${SWIGLU_WG})
fn forward_gelu_tanh(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${SWIGLU_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = gelu_tanh_gate(gate[i]) * up[i];
}
`;

/** dgate and dup from dout, gate, up. Bindings: params, dout, gate, up, dgate, dup. */
export const backward = /* wgsl */ `
${HEADER}
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;

@compute @workgroup_size(${SWIGLU_WG})
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${SWIGLU_WG}u + lid;
  if (i >= p.n) { return; }
  let grads = swiglu_grads(dout[i], gate[i], up[i]);
  dgate[i] = grads.x;
  dup[i] = grads.y;
}
`;

/**
 * {@link forward} from gate and up saved as f16 (words of two elements, n even): out = silu(g)·u with g and u
 * the f16 values widened exactly, so the same bits as {@link forward} over those values in f32. Two elements
 * per invocation. Bindings: params, gate words, up words, out (vec2 per word).
 */
export const forwardHalf = /* wgsl */ `
${HEADER}
${HALF_SAVED_FUNCTIONS}
@group(0) @binding(1) var<storage, read> gate: array<u32>;
@group(0) @binding(2) var<storage, read> up: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec2<f32>>;

@compute @workgroup_size(${SWIGLU_WG})
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let w = linear_workgroup(wg, nwg) * ${SWIGLU_WG}u + lid;
  if (w >= p.n / 2u) { return; }
  let g = half_pair(gate[w]);
  let u = half_pair(up[w]);
  out[w] = vec2<f32>(silu_gate(g.x) * u.x, silu_gate(g.y) * u.y);
}
`;

/**
 * {@link backward} from gate and up saved as f16 (n even), the same bits as {@link backward} over their f32
 * values; two elements per invocation. Bindings: params, dout (vec2), gate words, up words, dgate, dup (vec2).
 */
export const backwardHalf = /* wgsl */ `
${HEADER}
${HALF_SAVED_FUNCTIONS}
@group(0) @binding(1) var<storage, read> dout: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> gate: array<u32>;
@group(0) @binding(3) var<storage, read> up: array<u32>;
@group(0) @binding(4) var<storage, read_write> dgate: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> dup: array<vec2<f32>>;

@compute @workgroup_size(${SWIGLU_WG})
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let w = linear_workgroup(wg, nwg) * ${SWIGLU_WG}u + lid;
  if (w >= p.n / 2u) { return; }
  let d = dout[w];
  let g = half_pair(gate[w]);
  let u = half_pair(up[w]);
  let lo = swiglu_grads(d.x, g.x, u.x);
  let hi = swiglu_grads(d.y, g.y, u.y);
  dgate[w] = vec2<f32>(lo.x, hi.x);
  dup[w] = vec2<f32>(lo.y, hi.y);
}
`;
