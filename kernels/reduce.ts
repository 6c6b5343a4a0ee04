/**
 * Reductions over f32 arrays: argmax and sum of each row, and deterministic whole-array sums and sums of
 * squares. No atomics: a large array is cut into chunks of {@link REDUCE_CHUNK} elements, one workgroup per
 * chunk writes one partial sum, and one workgroup sums the partials, always in the same order, so that a
 * result is bit-identical from run to run. `reduceRowsKernels` holds one-row-per-invocation variants of the
 * per-row kernels for CPU adapters (no workgroup memory or barriers, vec4 loads when cols % 4 = 0).
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { ROW_REDUCE, ROW_WG, ROWS_WG, rowsPrelude, rowsType } from "./softmax.ts";

/** Invocations per workgroup of the whole-array reductions. */
export const REDUCE_WG = 256;
/** Elements per chunk (per workgroup) of the first stage of a two-stage reduction: 16 per invocation. */
export const REDUCE_CHUNK = REDUCE_WG * 16;

/**
 * WGSL argmax order: `NO_INDEX`, `is_nan(x)` and `argmax_better(av, ai, bv, bi)`. NaN is larger than any
 * number (the first NaN wins, as in torch.argmax); among equal values the lowest index wins; an empty
 * candidate (`NO_INDEX`) always loses.
 */
export const ARGMAX_ORDER = /* wgsl */ `
const NO_INDEX = 0xffffffffu;

// Bit test, since compilers may fold x != x away.
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }

// Whether candidate (av, ai) beats (bv, bi).
fn argmax_better(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
  if (ai == NO_INDEX) { return false; }
  if (bi == NO_INDEX) { return true; }
  let a_nan = is_nan(av);
  let b_nan = is_nan(bv);
  if (a_nan != b_nan) { return a_nan; }
  if (a_nan || av == bv) { return ai < bi; }
  return av > bv;
}
`;

/**
 * WGSL argmax helpers for one-workgroup-per-row kernels (with `ROW_REDUCE`): {@link ARGMAX_ORDER} and
 * `wg_argmax(v, i, lid) -> u32`, the workgroup's best candidate in that order.
 */
export const ARGMAX = /* wgsl */ `
${ARGMAX_ORDER}
var<workgroup> red_arg_v: array<f32, ${ROW_WG}>;
var<workgroup> red_arg_i: array<u32, ${ROW_WG}>;

// The workgroup's best (value, index) candidate; returns its index (NO_INDEX if every thread had none).
fn wg_argmax(v: f32, i: u32, lid: u32) -> u32 {
  red_arg_v[lid] = v;
  red_arg_i[lid] = i;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) {
      let ov = red_arg_v[lid + stride];
      let oi = red_arg_i[lid + stride];
      if (argmax_better(ov, oi, red_arg_v[lid], red_arg_i[lid])) {
        red_arg_v[lid] = ov;
        red_arg_i[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  let best = red_arg_i[0];
  workgroupBarrier();
  return best;
}
`;

const ROW_HEADER = /* wgsl */ `
struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${ROW_REDUCE}
${ARGMAX}
`;

/** out[r] = index of the largest x[r, :] (i32; order as in `ARGMAX`). One workgroup per row. */
export const argmax = /* wgsl */ `
${ROW_HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var bv = 0.0;
  var bi = NO_INDEX;
  for (var c = lid; c < p.cols; c = c + WG) {
    let v = x[base + c];
    if (argmax_better(v, c, bv, bi)) { bv = v; bi = c; }
  }
  let best = wg_argmax(bv, bi, lid);
  if (lid == 0u) { out[row] = i32(best); }
}
`;

/** out[r] = Σ_c x[r, c]. One workgroup per row. */
export const rowSum = /* wgsl */ `
${ROW_HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  var acc = 0.0;
  for (var c = lid; c < p.cols; c = c + WG) { acc = acc + x[base + c]; }
  let total = wg_sum(acc, lid);
  if (lid == 0u) { out[row] = total; }
}
`;

/**
 * `fn <name>(base: u32, n: u32) -> u32`: the column of the best value (in {@link ARGMAX_ORDER}) of the row held
 * in units base .. base + n of the global array `buffer` (n ≥ 1; units as in `rowsPrelude(vec4)`, which it
 * needs, with {@link ARGMAX_ORDER}). With vec4 units, each of the four lanes keeps the first best of its own
 * columns (c ≡ lane mod 4) with a vector compare and select, and the four lane winners are merged at the end
 * in the argmax order (ties to the lowest column), which gives the row's first best.
 */
export function rowsArgmaxFn(name: string, buffer: string, vec4: boolean): string {
  const T = rowsType(vec4);
  const U = vec4 ? "vec4<u32>" : "u32";
  const B = vec4 ? "vec4<bool>" : "bool";
  const lanes = vec4 ? "vec4<u32>(0u, 1u, 2u, 3u)" : "0u";
  const merge = vec4
    ? `var best = bi.x;
  var best_v = bv.x;
  for (var j = 1u; j < 4u; j++) {
    if (argmax_better(bv[j], bi[j], best_v, best)) { best_v = bv[j]; best = bi[j]; }
  }
  return best;`
    : "return bi;";
  return /* wgsl */ `
fn ${name}_nan(v: ${T}) -> ${B} { return (bitcast<${U}>(v) & ${U}(0x7fffffffu)) > ${U}(0x7f800000u); }
fn ${name}(base: u32, n: u32) -> u32 {
  var bv = ${buffer}[base];
  var bi = ${lanes};
  for (var i = 1u; i < n; i++) {
    let v = ${buffer}[base + i];
    // Scanning columns upwards, a later value wins only if strictly better: NaN over numbers, then larger.
    let take = !${name}_nan(bv) & (${name}_nan(v) | (v > bv));
    bv = select(bv, v, take);
    bi = select(bi, ${U}(i * W) + ${lanes}, take);
  }
  ${merge}
}
`;
}

/**
 * One-row-per-invocation variants of {@link argmax} and {@link rowSum} for CPU adapters (see `rowsPrelude`):
 * same bindings and params, entry point `main`; workgroups: ceil(rows / ROWS_WG). With `vec4` (cols a multiple
 * of 4) rows are read four columns at a time (a row sum then adds four column-strided partial sums).
 */
export function reduceRowsKernels(vec4: boolean): { argmax: string; rowSum: string } {
  const T = rowsType(vec4);
  const header = (out: string) => /* wgsl */ `
struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${rowsPrelude(vec4)}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> out: array<${out}>;
`;
  const entry = (body: string) => /* wgsl */ `
@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = row_index(wg, nwg, lid);
  if (row >= p.rows) { return; }
  let n = p.cols / W;
  let base = row * n;
  ${body}
}
`;
  return {
    argmax: `${header("i32")}
${ARGMAX_ORDER}
${rowsArgmaxFn("row_argmax", "x", vec4)}
${entry("out[row] = i32(row_argmax(base, n));")}`,
    rowSum: `${header("f32")}
${
      entry(`var acc = ${T}(0.0);
  for (var i = 0u; i < n; i++) { acc = acc + x[base + i]; }
  out[row] = hsum(acc);`)
    }`,
  };
}

const TREE = /* wgsl */ `
var<workgroup> tree: array<f32, ${REDUCE_WG}>;

// Sum of v over the workgroup in a fixed order (the result is in tree[0] for thread 0).
fn tree_sum(v: f32, lid: u32) -> f32 {
  tree[lid] = v;
  workgroupBarrier();
  for (var stride = ${REDUCE_WG / 2}u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) { tree[lid] = tree[lid] + tree[lid + stride]; }
    workgroupBarrier();
  }
  return tree[0];
}
`;

/**
 * First stage: partials[base + chunk] = Σ x (entry `sum_chunks`) or Σ x² (entry `sum_squares_chunks`) over
 * chunk `chunk` of {@link REDUCE_CHUNK} elements of x[0 .. n). One workgroup per chunk; invocation `lid` adds
 * elements lid, lid + WG, ... of its chunk in order, then a tree adds the invocations' sums.
 */
export const sumChunks = /* wgsl */ `
struct Params { n: u32, base: u32, _pad0: u32, _pad1: u32 }
${LINEAR_WORKGROUP}
${TREE}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

fn chunk_sum(chunk: u32, lid: u32, squares: bool) -> f32 {
  let start = chunk * ${REDUCE_CHUNK}u;
  let end = min(start + ${REDUCE_CHUNK}u, p.n);
  var acc = 0.0;
  for (var i = start + lid; i < end; i = i + ${REDUCE_WG}u) {
    let v = x[i];
    acc = acc + select(v, v * v, squares);
  }
  return tree_sum(acc, lid);
}

@compute @workgroup_size(${REDUCE_WG})
fn sum_chunks(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let chunk = linear_workgroup(wg, nwg);
  if (chunk * ${REDUCE_CHUNK}u >= p.n) { return; }
  let total = chunk_sum(chunk, lid, false);
  if (lid == 0u) { partials[p.base + chunk] = total; }
}

@compute @workgroup_size(${REDUCE_WG})
fn sum_squares_chunks(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  let chunk = linear_workgroup(wg, nwg);
  if (chunk * ${REDUCE_CHUNK}u >= p.n) { return; }
  let total = chunk_sum(chunk, lid, true);
  if (lid == 0u) { partials[p.base + chunk] = total; }
}
`;

/**
 * Single-workgroup sum of x[0 .. n): out[0] = (accumulate ? out[0] : 0) + scale · Σ x. The second stage of a
 * two-stage reduction (x = the partials), or the whole reduction of a small array. Invocation `lid` adds
 * x[lid], x[lid + WG], ... in order, then a tree adds the invocations' sums.
 */
export const sumFinish = /* wgsl */ `
struct Params { n: u32, scale: f32, accumulate: u32, _pad0: u32 }
${TREE}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < p.n; i = i + ${REDUCE_WG}u) { acc = acc + x[i]; }
  let total = tree_sum(acc, lid);
  if (lid == 0u) { out[0] = select(0.0, out[0], p.accumulate != 0u) + p.scale * total; }
}
`;
