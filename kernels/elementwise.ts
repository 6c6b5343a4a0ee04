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

/** x[r, c] += bias[c] in place, over rows of width n (bias broadcast along rows). */
export const addBias = /* wgsl */ `
struct Params { n: u32, width: u32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  x[i] = x[i] + bias[i % p.width];
}
`;

/**
 * A 3-D strided copy: for (i2, i1, i0) < count, dst[dstOffset + Σ i·dstStride] = src[srcOffset + Σ i·srcStride]
 * (strides and offsets in elements). Concatenating columns, slicing rows and writing into KV caches are all
 * this copy.
 */
export const copyStrided = copyStridedKernel("f32");

/**
 * {@link copyStrided} over vec4 units: the same copy when every count, stride and offset of the innermost
 * dimension's units is a multiple of 4 (the op passes them divided by 4), with a quarter of the loads.
 */
export const copyStridedVec4 = copyStridedKernel("vec4<f32>");

function copyStridedKernel(unit: string): string {
  return /* wgsl */ `
struct Params {
  n0: u32, n1: u32, n2: u32, total: u32,
  src0: u32, src1: u32, src2: u32, srcOffset: u32,
  dst0: u32, dst1: u32, dst2: u32, dstOffset: u32,
}
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<${unit}>;
@group(0) @binding(2) var<storage, read_write> dst: array<${unit}>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.total) { return; }
  let i0 = i % p.n0;
  let i1 = (i / p.n0) % p.n1;
  let i2 = i / (p.n0 * p.n1);
  dst[p.dstOffset + i0 * p.dst0 + i1 * p.dst1 + i2 * p.dst2] =
      src[p.srcOffset + i0 * p.src0 + i1 * p.src1 + i2 * p.src2];
}
`;
}

/** x[i] += y[i] in place (residual accumulation). */
export const accumulate = /* wgsl */ `
struct Params { n: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  x[i] = x[i] + y[i];
}
`;

/** {@link accumulate} four elements per invocation (n a multiple of 4): the same sums, a quarter of the loads. */
export const accumulateVec4 = /* wgsl */ `
struct Params { n: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> y: array<vec4<f32>>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n / 4u) { return; }
  x[i] = x[i] + y[i];
}
`;

/** out[i] = ids[i] + delta (i32): token ids made relative to a block of vocabulary rows. */
export const shiftIds = /* wgsl */ `
struct Params { n: u32, delta: i32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;

@compute @workgroup_size(${ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ELEMENTWISE_WG}u + lid;
  if (i >= p.n) { return; }
  out[i] = ids[i] + p.delta;
}
`;
