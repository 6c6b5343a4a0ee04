/**
 * RMSNorm kernels (f32): y = w ⊙ x·rstd with rstd = 1/sqrt(mean(x²) + eps) per row (Llama's LlamaRMSNorm,
 * statistics in f32).
 *
 * - `forward` (also saves rstd) and `backwardDx`: one workgroup per row, a fixed-order tree reduction in
 *   workgroup memory (any H: each invocation first strides over the row).
 * - The strided operand (y of the forward, dy of the backward) is row r's elements at
 *   io_off + r·io_stride + i, so a norm can write into (or read from) a column block of a wider matrix (the
 *   EAGLE-3 attention input [R, 2H]) without a copy; io_stride = h, io_off = 0 for a plain [rows, h] tensor.
 * - `dwPartials` / `dwReduce`: the weight gradient dw = Σ_rows dy ⊙ x·rstd in two deterministic stages: column
 *   sums over blocks of rows into partials[P, H], then a column sum of the partials.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup of the row kernels (one row per workgroup). */
export const RMSNORM_ROW_WG = 256;
/** Invocations per workgroup of the column-sum kernels of dw. */
export const RMSNORM_COL_WG = 256;

/** Shared by the row kernels: the params struct and a deterministic workgroup sum. */
const ROW_HEADER = /* wgsl */ `
struct Params { rows: u32, h: u32, eps: f32, accumulate: u32, io_stride: u32, io_off: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;

const WG = ${RMSNORM_ROW_WG}u;
var<workgroup> partial: array<f32, WG>;

// Sum of v over the workgroup, in a fixed order (a tree), returned to every invocation.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) { partial[lid] = partial[lid] + partial[lid + stride]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}
`;

/** Forward: y = w ⊙ x·rstd and rstd[row]; one workgroup per row. */
export const forward = /* wgsl */ `
${ROW_HEADER}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.h;
  let yb = row * p.io_stride + p.io_off;
  var sum_sq = 0.0;
  for (var i = lid; i < p.h; i += WG) {
    let v = x[base + i];
    sum_sq += v * v;
  }
  let r = 1.0 / sqrt(workgroup_sum(lid, sum_sq) / f32(p.h) + p.eps);
  for (var i = lid; i < p.h; i += WG) {
    y[yb + i] = w[i] * (x[base + i] * r);
  }
  if (lid == 0u) { rstd[row] = r; }
}
`;

/**
 * dx = r·(w ⊙ dy) − x·r³·(Σ_j w_j dy_j x_j)/H, the derivative of y = w ⊙ x·r through r = (mean(x²)+eps)^(-1/2)
 * (∂r/∂x_j = −r³·x_j/H). With `accumulate` the result is added to dx.
 */
export const backwardDx = /* wgsl */ `
${ROW_HEADER}
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(WG)
fn backward_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.h;
  let db = row * p.io_stride + p.io_off;
  var dot = 0.0;
  for (var i = lid; i < p.h; i += WG) {
    dot += w[i] * dy[db + i] * x[base + i];
  }
  let r = rstd[row];
  let c = workgroup_sum(lid, dot) * r * r * r / f32(p.h);
  for (var i = lid; i < p.h; i += WG) {
    let g = r * w[i] * dy[db + i] - x[base + i] * c;
    if (p.accumulate != 0u) { dx[base + i] += g; } else { dx[base + i] = g; }
  }
}
`;

/**
 * Stage 1 of dw: invocation (block b, column h) writes out[b·H + h] = Σ_{rows r of block b} dy[r,h]·x[r,h]·rstd[r]
 * (blocks of p.rows_per_block rows, in row order; dy's row r at dy_off + r·dy_stride). When there is a single block, out is dw itself and
 * `accumulate` adds to it.
 */
export const dwPartials = /* wgsl */ `
struct Params { rows: u32, h: u32, rows_per_block: u32, accumulate: u32, dy_stride: u32, dy_off: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${RMSNORM_COL_WG})
fn dw_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${RMSNORM_COL_WG}u + lid;
  let blocks = (p.rows + p.rows_per_block - 1u) / p.rows_per_block;
  if (i >= blocks * p.h) { return; }
  let block = i / p.h;
  let col = i % p.h;
  let r0 = block * p.rows_per_block;
  let r1 = min(r0 + p.rows_per_block, p.rows);
  var sum = 0.0;
  for (var r = r0; r < r1; r++) {
    sum += dy[r * p.dy_stride + p.dy_off + col] * (x[r * p.h + col] * rstd[r]);
  }
  if (p.accumulate != 0u) { out[i] += sum; } else { out[i] = sum; }
}
`;

/** Invocations per workgroup of {@link dwPartialsVec4}: as many workgroups as {@link dwPartials} has. */
export const RMSNORM_COL4_WG = RMSNORM_COL_WG / 4;

/**
 * {@link dwPartials} four columns per invocation, with vec4 loads of dy and x (H, dy's stride and offset
 * multiples of 4): invocation (block b, columns 4j..4j+3) sums the same products in the same row order, so
 * each column gets the scalar kernel's bits with a quarter of its loads. Same bindings and params.
 */
export const dwPartialsVec4 = /* wgsl */ `
struct Params { rows: u32, h: u32, rows_per_block: u32, accumulate: u32, dy_stride: u32, dy_off: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(${RMSNORM_COL4_WG})
fn dw_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${RMSNORM_COL4_WG}u + lid;
  let h4 = p.h / 4u;
  let blocks = (p.rows + p.rows_per_block - 1u) / p.rows_per_block;
  if (i >= blocks * h4) { return; }
  let block = i / h4;
  let col4 = i % h4;
  let r0 = block * p.rows_per_block;
  let r1 = min(r0 + p.rows_per_block, p.rows);
  var sum = vec4<f32>(0.0);
  for (var r = r0; r < r1; r++) {
    sum += dy[(r * p.dy_stride + p.dy_off) / 4u + col4] * (x[r * h4 + col4] * rstd[r]);
  }
  if (p.accumulate != 0u) { out[i] += sum; } else { out[i] = sum; }
}
`;

/** Stage 2 of dw: dw[h] = Σ_b partials[b·H + h] (b in order), added to dw with `accumulate`. */
export const dwReduce = /* wgsl */ `
struct Params { blocks: u32, h: u32, _unused: u32, accumulate: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size(${RMSNORM_COL_WG})
fn dw_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let col = linear_workgroup(wg, nwg) * ${RMSNORM_COL_WG}u + lid;
  if (col >= p.h) { return; }
  var sum = 0.0;
  for (var b = 0u; b < p.blocks; b++) {
    sum += partials[b * p.h + col];
  }
  if (p.accumulate != 0u) { dw[col] += sum; } else { dw[col] = sum; }
}
`;

/** Invocations per workgroup of the one-row-per-invocation kernels (one 8-lane SIMD register on lavapipe). */
export const RMSNORM_ROWS_WG = 8;

/**
 * One-row-per-invocation variants of {@link forward} and {@link backwardDx} for CPU adapters (Mesa lavapipe,
 * llvmpipe), where a workgroup runs on one core, every load is costly and barriers more so: each invocation
 * reduces its own row with vec4 loads (when `h` is a multiple of 4) and no workgroup memory or barrier.
 * Same bindings and params as the workgroup-per-row kernels; workgroups: ceil(rows / 8).
 */
export function rowsKernels(vec4: boolean): { forward: string; backwardDx: string } {
  const T = vec4 ? "vec4<f32>" : "f32";
  // Elements per loaded unit, the number of units per row, and the horizontal sum of a unit.
  const header = /* wgsl */ `
struct Params { rows: u32, h: u32, eps: f32, accumulate: u32, io_stride: u32, io_off: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
const W: u32 = ${vec4 ? 4 : 1}u;
fn hsum(v: ${T}) -> f32 { return ${vec4 ? "v.x + v.y + v.z + v.w" : "v"}; }
fn row_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return linear_workgroup(wg, nwg) * ${RMSNORM_ROWS_WG}u + lid;
}
`;
  return {
    forward: /* wgsl */ `
${header}
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> w: array<${T}>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;

@compute @workgroup_size(${RMSNORM_ROWS_WG})
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  let n = p.h / W;
  let base = row * n;
  let yb = (row * p.io_stride + p.io_off) / W;
  var sum_sq = ${T}(0.0);
  for (var i = 0u; i < n; i++) {
    let v = x[base + i];
    sum_sq = fma(v, v, sum_sq);
  }
  let r = 1.0 / sqrt(hsum(sum_sq) / f32(p.h) + p.eps);
  for (var i = 0u; i < n; i++) { y[yb + i] = w[i] * (x[base + i] * r); }
  rstd[row] = r;
}
`,
    backwardDx: /* wgsl */ `
${header}
@group(0) @binding(1) var<storage, read> dy: array<${T}>;
@group(0) @binding(2) var<storage, read> x: array<${T}>;
@group(0) @binding(3) var<storage, read> w: array<${T}>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<${T}>;

@compute @workgroup_size(${RMSNORM_ROWS_WG})
fn backward_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  let n = p.h / W;
  let base = row * n;
  let db = (row * p.io_stride + p.io_off) / W;
  var acc = ${T}(0.0);
  for (var i = 0u; i < n; i++) { acc = fma(w[i] * dy[db + i], x[base + i], acc); }
  let r = rstd[row];
  let c = hsum(acc) * r * r * r / f32(p.h);
  for (var i = 0u; i < n; i++) {
    let g = r * w[i] * dy[db + i] - x[base + i] * c;
    if (p.accumulate != 0u) { dx[base + i] += g; } else { dx[base + i] = g; }
  }
}
`,
  };
}
