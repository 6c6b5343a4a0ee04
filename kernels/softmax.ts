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
 *
 * For CPU adapters, `softmaxRowsKernels` holds the same entry points as one-row-per-invocation kernels (no
 * workgroup memory, no barriers, vec4 loads when cols % 4 = 0); `rowsPrelude`, `rowsStatsFn` and `ROWS_WG`
 * are shared with the rows kernels of the losses and reductions.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup of every workgroup-per-row kernel (one workgroup per row). */
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

/** Invocations per workgroup of the one-row-per-invocation ("rows") kernels: one 8-lane SIMD group on lavapipe. */
export const ROWS_WG = 8;

/**
 * The element type of a rows kernel's row arrays: `vec4<f32>` when the row width is a multiple of 4 (each
 * load brings four columns), else `f32`.
 */
export function rowsType(vec4: boolean): string {
  return vec4 ? "vec4<f32>" : "f32";
}

/**
 * WGSL helpers of the "rows" kernels (one invocation per row, no workgroup memory, no barriers; for CPU
 * adapters such as Mesa lavapipe, where a workgroup runs on one core, every load is costly and a barrier more
 * so). A row of `cols` f32 is read as `cols / W` units of type `rowsType(vec4)`. Defines `W` (columns per
 * unit), `NEG_MAX`, `hsum(v)` and `hmax(v)` (sum and max of a unit's columns), `row_index(wg, nwg, lid)` (the
 * invocation's row, with {@link ROWS_WG} invocations per workgroup), and `stats_push(st, v)`: the online
 * softmax statistics st = (m, s = Σ exp(x − m)) extended by one unit. The max is raised once per unit, so the
 * rescaling exp(m_old − m_new) is paid only when the unit holds a new maximum, and each column costs one exp.
 * Needs `LINEAR_WORKGROUP`.
 */
export function rowsPrelude(vec4: boolean): string {
  const T = rowsType(vec4);
  return /* wgsl */ `
const W = ${vec4 ? 4 : 1}u;
// Lowest finite f32, the start of a running max (see ROW_REDUCE): exp(m - m') never sees -inf - -inf.
const NEG_MAX = -3.40282347e+38f;
fn hsum(v: ${T}) -> f32 { return ${vec4 ? "(v.x + v.y) + (v.z + v.w)" : "v"}; }
fn hmax(v: ${T}) -> f32 { return ${vec4 ? "max(max(v.x, v.y), max(v.z, v.w))" : "v"}; }
fn row_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return linear_workgroup(wg, nwg) * ${ROWS_WG}u + lid;
}
fn stats_push(st: vec2<f32>, v: ${T}) -> vec2<f32> {
  var m = st.x;
  var s = st.y;
  let mv = hmax(v);
  if (mv > m) { s = s * exp(m - mv); m = mv; }
  return vec2<f32>(m, s + hsum(exp(v - m)));
}
`;
}

/**
 * `fn <name>(base: u32, n: u32) -> vec2<f32>`: the online softmax statistics (max m, Σ exp(x − m)) of units
 * base .. base + n of the global array `buffer`, in one pass (WGSL functions cannot take storage pointers, so
 * one function is generated per array). Needs {@link rowsPrelude}.
 */
export function rowsStatsFn(name: string, buffer: string): string {
  return /* wgsl */ `
fn ${name}(base: u32, n: u32) -> vec2<f32> {
  var st = vec2<f32>(NEG_MAX, 0.0);
  for (var i = 0u; i < n; i++) { st = stats_push(st, ${buffer}[base + i]); }
  return st;
}
`;
}

/**
 * One-row-per-invocation variants of {@link softmaxForward} and {@link softmaxBackward} for CPU adapters:
 * same entry points, bindings and params; workgroups: ceil(rows / {@link ROWS_WG}). With `vec4` (cols a
 * multiple of 4) the row arrays are read four columns at a time.
 */
export function softmaxRowsKernels(vec4: boolean): { forward: string; backward: string } {
  const T = rowsType(vec4);
  const header = /* wgsl */ `
struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${rowsPrelude(vec4)}
@group(0) @binding(0) var<uniform> p: Params;
`;
  const entry = (name: string, body: string) => /* wgsl */ `
@compute @workgroup_size(${ROWS_WG})
fn ${name}(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  let n = p.cols / W;
  let base = row * n;
${body}
}
`;
  return {
    forward: /* wgsl */ `
${header}
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;
${rowsStatsFn("row_stats", "x")}
${
      entry(
        "softmax",
        `  let st = row_stats(base, n);
  let inv = 1.0 / st.y;
  for (var i = 0u; i < n; i++) { y[base + i] = exp(x[base + i] - st.x) * inv; }`,
      )
    }
${
      entry(
        "log_softmax",
        `  let st = row_stats(base, n);
  let lse = st.x + log(st.y);
  for (var i = 0u; i < n; i++) { y[base + i] = x[base + i] - lse; }`,
      )
    }
`,
    backward: /* wgsl */ `
${header}
@group(0) @binding(1) var<storage, read> dy: array<${T}>;
@group(0) @binding(2) var<storage, read> y: array<${T}>;
@group(0) @binding(3) var<storage, read_write> dx: array<${T}>;
${
      entry(
        "softmax_backward",
        `  var acc = ${T}(0.0);
  for (var i = 0u; i < n; i++) { acc = fma(dy[base + i], y[base + i], acc); }
  let dot = hsum(acc);
  for (var i = 0u; i < n; i++) { dx[base + i] = y[base + i] * (dy[base + i] - dot); }`,
      )
    }
${
      entry(
        "log_softmax_backward",
        `  var acc = ${T}(0.0);
  for (var i = 0u; i < n; i++) { acc = acc + dy[base + i]; }
  let total = hsum(acc);
  for (var i = 0u; i < n; i++) { dx[base + i] = dy[base + i] - exp(y[base + i]) * total; }`,
      )
    }
`,
  };
}
