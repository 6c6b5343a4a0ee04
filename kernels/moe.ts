/**
 * Mixture-of-experts kernels (a frozen target's sparse MLP, forward only; transformers `Qwen3MoeSparseMoeBlock`,
 * `Qwen2MoeSparseMoeBlock`):
 * - `route`: per token, the router's softmax p = softmax(logits) in f32, the k largest p (the lower expert id
 *   first on ties), optionally renormalised to sum 1 (`norm_topk_prob`).
 * - `sort`: one workgroup groups the N·k assignments by expert, tokens in row order within an expert: the
 *   token row of each sorted slot, the slot of each assignment, and a tile schedule (expert, first slot, end)
 *   of at most `tileRows` slots per tile, so that each expert's rows are one dense block of a grouped matmul.
 * - `matmul`: the grouped product C[s, :] = A[row(s), :] · W_e(s)ᵀ over the schedule's tiles (row(s) the token
 *   row when gathering from the tokens, else s), W stored [E, N, K] as f32, f16 or bf16.
 * - `combine`: x[r] += Σ_j w[r, j]·y[slot(r, j)] (+ σ(g[r])·shared[r], Qwen2-MoE's gated shared expert).
 */
import { BF16_UNPACK, LINEAR_WORKGROUP } from "./common.ts";
import type { MatmulBType } from "./matmul.ts";

/** Largest expert count the sort kernel holds in workgroup memory. */
export const MOE_MAX_EXPERTS = 1024;
/** Invocations of the sort kernel's one workgroup. */
export const MOE_SORT_WG = 256;
/** Slots (rows) and output columns of one grouped-matmul tile: 8×8 invocations of 4×4 values. */
export const MOE_TILE_ROWS = 32;
export const MOE_TILE_COLS = 32;
/** Invocations per workgroup of the route and combine kernels. */
export const MOE_WG = 64;
/** A tile past the schedule's end. */
export const MOE_NO_TILE = 0xffffffff;

/** Bindings: params, logits [N, E], ids u32 [N, k], weights f32 [N, k]. */
export const route = /* wgsl */ `
struct Params { rows: u32, experts: u32, k: u32, renorm: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;

fn taken(base: u32, j: u32, e: u32) -> bool {
  for (var i = 0u; i < j; i++) { if (ids[base + i] == e) { return true; } }
  return false;
}

@compute @workgroup_size(${MOE_WG})
fn route(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let r = linear_workgroup(wg, nwg) * ${MOE_WG}u + lid;
  if (r >= p.rows) { return; }
  let row = r * p.experts;
  var m = logits[row];
  for (var e = 1u; e < p.experts; e++) { m = max(m, logits[row + e]); }
  var sum = 0.0;
  for (var e = 0u; e < p.experts; e++) { sum += exp(logits[row + e] - m); }
  let base = r * p.k;
  var picked = 0.0;
  for (var j = 0u; j < p.k; j++) {
    var best = 0u;
    var bestLogit = -3.4e38;
    var found = false;
    for (var e = 0u; e < p.experts; e++) {
      let l = logits[row + e];
      if ((!found || l > bestLogit) && !taken(base, j, e)) { best = e; bestLogit = l; found = true; }
    }
    ids[base + j] = best;
    let w = exp(bestLogit - m) / sum;
    weights[base + j] = w;
    picked += w;
  }
  if (p.renorm != 0u) {
    for (var j = 0u; j < p.k; j++) { weights[base + j] = weights[base + j] / picked; }
  }
}
`;

/** Bindings: params, ids u32 [N·k], sortedRow u32 [N·k], slotOf u32 [N·k], tiles vec4<u32> [maxTiles]. */
export const sort = /* wgsl */ `
struct Params { assignments: u32, experts: u32, k: u32, maxTiles: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> sortedRow: array<u32>;
@group(0) @binding(3) var<storage, read_write> slotOf: array<u32>;
@group(0) @binding(4) var<storage, read_write> tiles: array<vec4<u32>>;

var<workgroup> counts: array<u32, ${MOE_MAX_EXPERTS}>;
var<workgroup> offsets: array<u32, ${MOE_MAX_EXPERTS}>;

@compute @workgroup_size(${MOE_SORT_WG})
fn sort(@builtin(local_invocation_index) lid: u32) {
  for (var e = lid; e < p.experts; e += ${MOE_SORT_WG}u) {
    var c = 0u;
    for (var a = 0u; a < p.assignments; a++) { c += select(0u, 1u, ids[a] == e); }
    counts[e] = c;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var off = 0u;
    var t = 0u;
    for (var e = 0u; e < p.experts; e++) {
      offsets[e] = off;
      let end = off + counts[e];
      for (var s = off; s < end; s += ${MOE_TILE_ROWS}u) {
        tiles[t] = vec4<u32>(e, s, min(end, s + ${MOE_TILE_ROWS}u), 0u);
        t++;
      }
      off = end;
    }
    for (; t < p.maxTiles; t++) { tiles[t] = vec4<u32>(${MOE_NO_TILE}u, 0u, 0u, 0u); }
  }
  workgroupBarrier();
  for (var e = lid; e < p.experts; e += ${MOE_SORT_WG}u) {
    var pos = offsets[e];
    for (var a = 0u; a < p.assignments; a++) {
      if (ids[a] == e) {
        sortedRow[pos] = a / p.k;
        slotOf[a] = pos;
        pos++;
      }
    }
  }
}
`;

/** The expert-weight binding and its loader `load_w(e) -> f32` for stored type `t`. */
function weightBinding(t: MatmulBType): string {
  if (t === "f32") {
    return `@group(0) @binding(2) var<storage, read> w: array<f32>;
fn load_w(e: u32) -> f32 { return w[e]; }`;
  }
  if (t === "f16") {
    return `@group(0) @binding(2) var<storage, read> w: array<f16>;
fn load_w(e: u32) -> f32 { return f32(w[e]); }`;
  }
  return `${BF16_UNPACK}
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn load_w(e: u32) -> f32 {
  let v = w[e >> 1u];
  return select(bf16_hi(v), bf16_lo(v), (e & 1u) == 0u);
}`;
}

/**
 * The grouped matmul for expert weights stored as `t`, over the tiles of experts [first, first + count) whose
 * weights `w` holds ([count·N, K]). Grid: [⌈N / 32⌉, maxTiles, 1]. Bindings: params (n, kdim, gather, first,
 * count), a f32 ([tokens, K] when gathering, else [slots, K]), w, sortedRow u32, tiles, c f32 [slots, N].
 */
export function matmul(t: MatmulBType): string {
  return /* wgsl */ `${t === "f16" ? "enable f16;" : ""}
struct Params { n: u32, kdim: u32, gather: u32, first: u32, count: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
${weightBinding(t)}
@group(0) @binding(3) var<storage, read> sortedRow: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(8, 8)
fn grouped_matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
  let tile = tiles[wg.y];
  // Tiles past the schedule (MOE_NO_TILE) or of experts outside this dispatch's block.
  if (tile.x < p.first || tile.x >= p.first + p.count) { return; }
  let K = p.kdim;
  var arow: array<u32, 4>;
  var valid: array<bool, 4>;
  for (var i = 0u; i < 4u; i++) {
    let s = tile.y + li.y * 4u + i;
    valid[i] = s < tile.z;
    let sc = min(s, tile.z - 1u);
    arow[i] = select(sc, sortedRow[sc], p.gather != 0u) * K;
  }
  let col0 = wg.x * ${MOE_TILE_COLS}u + li.x * 4u;
  var wrow: array<u32, 4>;
  for (var j = 0u; j < 4u; j++) { wrow[j] = ((tile.x - p.first) * p.n + min(col0 + j, p.n - 1u)) * K; }
  var acc: array<vec4<f32>, 4>;
  for (var kk = 0u; kk < K; kk++) {
    let b = vec4<f32>(load_w(wrow[0] + kk), load_w(wrow[1] + kk), load_w(wrow[2] + kk), load_w(wrow[3] + kk));
    for (var i = 0u; i < 4u; i++) { acc[i] += a[arow[i] + kk] * b; }
  }
  for (var i = 0u; i < 4u; i++) {
    if (!valid[i]) { continue; }
    let s = tile.y + li.y * 4u + i;
    for (var j = 0u; j < 4u; j++) {
      if (col0 + j < p.n) { c[s * p.n + col0 + j] = acc[i][j]; }
    }
  }
}
`;
}

/**
 * x[r, :] += Σ_j w[r, j]·y[slot(r, j), :], with `shared` also + σ(g[r])·shared[r, :]. Bindings: params
 * (rows, h, k), y [slots, H], weights [N, k], slotOf, x [N, H] and, with `shared`, shared [N, H], g [N].
 */
export function combine(shared: boolean): string {
  return /* wgsl */ `
struct Params { rows: u32, h: u32, k: u32, _pad: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> slotOf: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
${
    shared
      ? `@group(0) @binding(5) var<storage, read> shared_out: array<f32>;
@group(0) @binding(6) var<storage, read> gate: array<f32>;
fn sigmoid(g: f32) -> f32 {
  let e = exp(-abs(g));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), g >= 0.0);
}`
      : ""
  }

@compute @workgroup_size(${MOE_WG})
fn combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${MOE_WG}u + lid;
  if (i >= p.rows * p.h) { return; }
  let r = i / p.h;
  let col = i % p.h;
  var s = 0.0;
  for (var j = 0u; j < p.k; j++) {
    let a = r * p.k + j;
    s += weights[a] * y[slotOf[a] * p.h + col];
  }
  ${shared ? "s += sigmoid(gate[r]) * shared_out[i];" : ""}
  x[i] += s;
}
`;
}
