/**
 * Elementwise kernels over flat f32 arrays: out = a + b, out = a * b (and its backward), out = alpha·a + beta·b,
 * fill. One invocation per element, 256 per workgroup, grids folded into 2-D for large tensors.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Workgroup size of every elementwise kernel. */
export const ELEMENTWISE_WG = 256;

const HEADER = /* wgsl */ `
struct Params { n: u32, alpha: f32, beta: f32, _pad: u32 }
${LINEAR_WORKGROUP}
`;

/** Binary ops: a, b -> out. Entry points: add, mul, axpby (alpha·a + beta·b). */
export const binary = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = a[i] + b[i];
}

@compute @workgroup_size(${ELEMENTWISE_WG})
fn mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = a[i] * b[i];
}

@compute @workgroup_size(${ELEMENTWISE_WG})
fn axpby(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = p.alpha * a[i] + p.beta * b[i];
}
`;

/** Unary ops: a -> out. Entry points: scale (alpha·a), fill (alpha everywhere, a unused but bound). */
export const unary = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = p.alpha * a[i];
}
`;

/** out[i] = alpha. */
export const fill = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = p.alpha;
}
`;
