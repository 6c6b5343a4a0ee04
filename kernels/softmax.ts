/**
 * Softmax and log-softmax over the last dimension of a row-major [rows, cols] f32 array, forward and backward.
 * One workgroup of {@link ROW_WG} invocations per row: invocation `lid` owns columns lid, lid + WG, ...; the row
 * statistics are combined by a tree reduction in workgroup memory. All arithmetic is f32.
 *
 * The row maximum and the sum of exponentials come from one pass over the row ("online softmax": a running
 * max m and s = Σ exp(x − m), rescaled by exp(m_old − m_new) when the max grows), so the forward pass reads
 * each row twice (statistics, then output) instead of three times.
 *
 * `ROW_REDUCE` is shared with the loss kernels (kernels/loss.ts).
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup of every row kernel (one workgroup per row). */
export const ROW_WG = 256;

/**
 * WGSL helpers for one-workgroup-per-row kernels: `WG`, `NEG_MAX` (the lowest finite f32, the start of a
 * running max), `wg_sum(v, lid)` (workgroup-wide sum, fixed order), `softmax_push(st, x)` and
 * `wg_max_sumexp(st, lid)` (online softmax statistics (m, Σ exp(x − m)) of a thread, then of the workgroup).
 * Every function with a barrier must be called from workgroup-uniform control flow.
 */
export const ROW_REDUCE = /* wgsl */ `
const WG = ${ROW_WG}u;
// Lowest finite f32. A running max starts here rather than at -inf so that exp(m - m') never sees -inf - -inf
// (NaN) for threads that own no column or see only -inf; a row of only -inf still ends with s = 0.
const NEG_MAX = -3.40282347e+38f;

var<workgroup> red_sum: array<f32, ${ROW_WG}>;
var<workgroup> red_ms: array<vec2<f32>, ${ROW_WG}>;

// Sum of v over the workgroup. The tree has a fixed shape, so the result is the same on every run.
fn wg_sum(v: f32, lid: u32) -> f32 {
  red_sum[lid] = v;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) { red_sum[lid] = red_sum[lid] + red_sum[lid + stride]; }
    workgroupBarrier();
  }
  let total = red_sum[0];
  workgroupBarrier(); // everyone has read red_sum[0] before the next call overwrites it
  return total;
}

// Online softmax statistics st = (m, s): m the running max, s = Σ exp(x - m). Adds x.
fn softmax_push(st: vec2<f32>, x: f32) -> vec2<f32> {
  if (x > st.x) { return vec2<f32>(x, st.y * exp(st.x - x) + 1.0); }
  return vec2<f32>(st.x, st.y + exp(x - st.x));
}

// Combines the statistics of two disjoint sets of columns.
fn softmax_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// The row's (max, Σ exp(x - max)) from each thread's statistics.
fn wg_max_sumexp(st: vec2<f32>, lid: u32) -> vec2<f32> {
  red_ms[lid] = st;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) { red_ms[lid] = softmax_merge(red_ms[lid], red_ms[lid + stride]); }
    workgroupBarrier();
  }
  let total = red_ms[0];
  workgroupBarrier();
  return total;
}
`;

const HEADER = /* wgsl */ `
struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${ROW_REDUCE}
`;

/**
 * Forward: x [rows, cols] -> y [rows, cols] (y must not alias x). Entry points:
 * `softmax` y = exp(x − m) / s, `log_softmax` y = x − m − log s, with m = max x and s = Σ exp(x − m).
 */
export const softmaxForward = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn row_stats(base: u32, lid: u32) -> vec2<f32> {
  var st = vec2<f32>(NEG_MAX, 0.0);
  for (var c = lid; c < p.cols; c = c + WG) { st = softmax_push(st, x[base + c]); }
  return wg_max_sumexp(st, lid);
}

@compute @workgroup_size(${ROW_WG})
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  let st = row_stats(base, lid);
  let inv = 1.0 / st.y;
  for (var c = lid; c < p.cols; c = c + WG) { y[base + c] = exp(x[base + c] - st.x) * inv; }
}

@compute @workgroup_size(${ROW_WG})
fn log_softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  let st = row_stats(base, lid);
  let lse = st.x + log(st.y);
  for (var c = lid; c < p.cols; c = c + WG) { y[base + c] = x[base + c] - lse; }
}
`;

/**
 * Backward: dy, y (the forward output) -> dx (dx must alias neither). Entry points:
 * `softmax_backward` dx = y ⊙ (dy − Σ dy·y); `log_softmax_backward` dx = dy − exp(y) · Σ dy.
 */
export const softmaxBackward = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(${ROW_WG})
fn softmax_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c = c + WG) { acc = acc + dy[base + c] * y[base + c]; }
  let dot = wg_sum(acc, lid);
  for (var c = lid; c < p.cols; c = c + WG) { dx[base + c] = y[base + c] * (dy[base + c] - dot); }
}

@compute @workgroup_size(${ROW_WG})
fn log_softmax_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c = c + WG) { acc = acc + dy[base + c]; }
  let total = wg_sum(acc, lid);
  for (var c = lid; c < p.cols; c = c + WG) { dx[base + c] = dy[base + c] - exp(y[base + c]) * total; }
}
`;
