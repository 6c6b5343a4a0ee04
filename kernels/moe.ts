/**
 * Mixture-of-experts kernels (a frozen target's sparse MLP, forward only; transformers `Qwen3MoeSparseMoeBlock`,
 * `Qwen2MoeSparseMoeBlock`, `GptOssMLP`, `Llama4TextMoe`):
 * - `route`: per token, the k largest router logits (the lower expert id first on ties) and their weights:
 *   softmax over all experts then the k picked, optionally renormalised to sum 1 (`norm_topk_prob`; Qwen), the
 *   softmax of the k picked logits alone (GPT-OSS `GptOssTopKRouter`), or the sigmoid of each picked logit
 *   (Llama 4 `Llama4Router`); `routeGrouped`: DeepSeek-V3's group-limited sigmoid routing with its correction
 *   bias (`DeepseekV3TopkRouter`).
 * - `sort`: one workgroup groups the N·k assignments by expert, tokens in row order within an expert: the
 *   token row of each sorted slot, the slot of each assignment, and a tile schedule (expert, first slot, end)
 *   of at most `tileRows` slots per tile, so that each expert's rows are one dense block of a grouped matmul.
 * - `matmul`: the grouped product C[s, :] = A[row(s), :] · W_e(s)ᵀ (+ b_e(s)) over the schedule's tiles (row(s)
 *   the token row when gathering from the tokens, else s), W stored [E, N, K] as f32, f16, bf16 or MXFP4, or
 *   [E, K, N] (GPT-OSS's and Llama 4's bf16 experts) as f32, f16 or bf16.
 * - `clampedGlu`: GPT-OSS's activation of the interleaved gate/up projection; `slotWeights` and
 *   `scaledHalvesGlu`: Llama 4's, of its gate/up halves with the routing weight on the input.
 * - `combine`: x[r] += Σ_j w[r, j]·y[slot(r, j)] (+ σ(g[r])·shared[r], Qwen2-MoE's gated shared expert; Llama 4:
 *   unweighted, + its ungated shared expert).
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

/**
 * Bindings: params (rows, experts, k, renorm, mode: 0 softmax of all, 1 softmax of the picked, 2 sigmoid of the
 * picked), logits [N, E], ids u32 [N, k], weights f32 [N, k].
 */
export const route = /* wgsl */ `
struct Params { rows: u32, experts: u32, k: u32, renorm: u32, mode: u32, _a: u32, _b: u32, _c: u32 }
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
    if (p.mode == 2u) {
      // Llama 4: the sigmoid of the picked logit (it scales the expert's input).
      weights[base + j] = 1.0 / (1.0 + exp(-bestLogit));
    } else if (p.mode == 1u) {
      // GPT-OSS: softmax over the picked logits alone; the first picked is their largest.
      let w = exp(bestLogit - logits[row + ids[base]]);
      weights[base + j] = w;
      picked += w;
    } else {
      let w = exp(bestLogit - m) / sum;
      weights[base + j] = w;
      picked += w;
    }
  }
  if (p.renorm != 0u || p.mode == 1u) {
    for (var j = 0u; j < p.k; j++) { weights[base + j] = weights[base + j] / picked; }
  }
}
`;

/** Most expert groups the grouped route kernel holds per token (DeepSeek-V3 and Kimi-K2 have 8 and 1). */
export const MOE_MAX_GROUPS = 64;

/**
 * DeepSeek-V3's group-limited routing (transformers `DeepseekV3TopkRouter.forward`, noaux_tc; DeepSeek-V3
 * paper §2.1.2): s_e = σ(logit_e), c_e = s_e + bias_e; each of the `groups` groups of E/groups experts scores
 * the sum of its two largest c; the `topkGroup` best groups are kept (lower group first on ties); the k
 * largest c among their experts are picked (lower id first on ties); w_j = s_{i_j}, / (Σ_j s_{i_j} + 1e−20)
 * when renormalised, × scale (`routed_scaling_factor`). Bindings: params, logits [N, E], bias f32 [E],
 * ids u32 [N, k], weights f32 [N, k].
 */
export const routeGrouped = /* wgsl */ `
struct Params { rows: u32, experts: u32, k: u32, renorm: u32, groups: u32, topkGroup: u32, scale: f32, _a: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;

fn score(row: u32, e: u32) -> f32 { return 1.0 / (1.0 + exp(-logits[row + e])); }

fn taken(base: u32, j: u32, e: u32) -> bool {
  for (var i = 0u; i < j; i++) { if (ids[base + i] == e) { return true; } }
  return false;
}

@compute @workgroup_size(${MOE_WG})
fn route_grouped(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let r = linear_workgroup(wg, nwg) * ${MOE_WG}u + lid;
  if (r >= p.rows) { return; }
  let row = r * p.experts;
  let per = p.experts / p.groups;
  var groupScore: array<f32, ${MOE_MAX_GROUPS}>;
  var kept: array<bool, ${MOE_MAX_GROUPS}>;
  for (var g = 0u; g < p.groups; g++) {
    var b1 = -3.4e38;
    var b2 = -3.4e38;
    for (var e = g * per; e < (g + 1u) * per; e++) {
      let c = score(row, e) + bias[e];
      if (c > b1) { b2 = b1; b1 = c; } else if (c > b2) { b2 = c; }
    }
    groupScore[g] = b1 + b2;
    kept[g] = false;
  }
  for (var j = 0u; j < p.topkGroup; j++) {
    var best = 0u;
    var found = false;
    for (var g = 0u; g < p.groups; g++) {
      if (!kept[g] && (!found || groupScore[g] > groupScore[best])) { best = g; found = true; }
    }
    kept[best] = true;
  }
  let base = r * p.k;
  var picked = 0.0;
  for (var j = 0u; j < p.k; j++) {
    var best = 0u;
    var bestChoice = -3.4e38;
    var found = false;
    for (var e = 0u; e < p.experts; e++) {
      let c = score(row, e) + bias[e];
      if (kept[e / per] && (!found || c > bestChoice) && !taken(base, j, e)) { best = e; bestChoice = c; found = true; }
    }
    ids[base + j] = best;
    let w = score(row, best);
    weights[base + j] = w;
    picked += w;
  }
  for (var j = 0u; j < p.k; j++) {
    let w = select(weights[base + j], weights[base + j] / (picked + 1e-20), p.renorm != 0u);
    weights[base + j] = w * p.scale;
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

/** How experts' weights are stored: an element type, or MXFP4 (e2m1 codes with an e8m0 scale per 32). */
export type ExpertFormat = MatmulBType | "mxfp4";

/**
 * The expert-weight bindings and the loader `load_w(e) -> f32` of element e for stored format `t`. MXFP4 (the
 * published GPT-OSS experts): w holds the bytes of `*_blocks` (two codes per byte, element 2i in the low
 * nibble) and binding 6 those of `*_scales` (one byte per 32 elements: 2^(byte − 127)).
 */
function weightBinding(t: ExpertFormat): string {
  if (t === "mxfp4") {
    return `@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
const FP4 = array<f32, 16>(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0);
fn byte_at(word: u32, i: u32) -> u32 { return (word >> ((i & 3u) * 8u)) & 0xffu; }
fn load_w(e: u32) -> f32 {
  let byte = byte_at(w[e >> 3u], e >> 1u);
  let code = select(byte & 0xfu, byte >> 4u, (e & 1u) == 1u);
  let s = byte_at(scales[e >> 7u], e >> 5u);
  return FP4[code] * exp2(f32(s) - 127.0);
}`;
  }
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
 * The head of both grouped-matmul entry points (this file's `matmul` and kernels/moe_matmul.ts `matmulVec4`):
 * returns for tiles past the schedule, of experts outside the dispatch's block, or whose 4 rows this invocation
 * would not reach; else defines `tile`, `K`, `arow[i]` (the first element of slot i's A row, gathered through
 * `sortedRow` when p.gather), `valid[i]` and `col0` (the invocation's first output column).
 */
export const MOE_TILE_SLOTS = /* wgsl */ `
  let tile = tiles[wg.y];
  // Tiles past the schedule (MOE_NO_TILE) or of experts outside this dispatch's block.
  if (tile.x < p.first || tile.x >= p.first + p.count) { return; }
  // An invocation whose 4 rows are past the tile's (a decoded token's expert holds one slot of 32) does nothing.
  if (tile.y + li.y * 4u >= tile.z) { return; }
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
`;

/**
 * The grouped matmul for expert weights stored as `t`, over the tiles of experts [first, first + count) whose
 * weights `w` holds ([count, N, K], or with `kn` [count, K, N]), plus each expert's bias [count, N] with
 * `bias`. Grid: [⌈N / 32⌉, maxTiles, 1]. Bindings: params (n, kdim, gather, first, count), a f32 ([tokens, K]
 * when gathering, else [slots, K]), w, sortedRow u32, tiles, c f32 [slots, N], MXFP4 scales (6), bias (7).
 */
export function matmul(t: ExpertFormat, kn = false, bias = false): string {
  if (t === "mxfp4" && kn) throw new Error("moe matmul: MXFP4 experts are stored [N, K]");
  return /* wgsl */ `${t === "f16" ? "enable f16;" : ""}
struct Params { n: u32, kdim: u32, gather: u32, first: u32, count: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
${weightBinding(t)}
@group(0) @binding(3) var<storage, read> sortedRow: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
${bias ? "@group(0) @binding(7) var<storage, read> bias: array<f32>;" : ""}

@compute @workgroup_size(8, 8)
fn grouped_matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
${MOE_TILE_SLOTS}  // Element (n, kk) of this expert's weights: wrow[j] + kk·step.
  let e_local = tile.x - p.first;
  var wrow: array<u32, 4>;
  for (var j = 0u; j < 4u; j++) {
    let n = min(col0 + j, p.n - 1u);
    wrow[j] = ${kn ? "e_local * K * p.n + n" : "(e_local * p.n + n) * K"};
  }
  let step = ${kn ? "p.n" : "1u"};
  var acc: array<vec4<f32>, 4>;
  for (var kk = 0u; kk < K; kk++) {
    let o = kk * step;
    let b = vec4<f32>(load_w(wrow[0] + o), load_w(wrow[1] + o), load_w(wrow[2] + o), load_w(wrow[3] + o));
    for (var i = 0u; i < 4u; i++) { acc[i] += a[arow[i] + kk] * b; }
  }
  ${
    bias
      ? `for (var j = 0u; j < 4u; j++) {
    let bj = bias[e_local * p.n + min(col0 + j, p.n - 1u)];
    for (var i = 0u; i < 4u; i++) { acc[i][j] += bj; }
  }`
      : ""
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
 * x[r, :] += Σ_j w[r, j]·y[slot(r, j), :] (Σ_j y[slot(r, j), :] when `unweighted`), with `shared` also
 * + σ(g[r])·shared[r, :], or + shared[r, :] when `!gated` (Llama 4). Bindings: params (rows, h, k,
 * unweighted), y [slots, H], weights [N, k], slotOf, x [N, H] and, with `shared`, shared [N, H], g [N] (gated).
 */
export function combine(shared: boolean, gated = true): string {
  return /* wgsl */ `
struct Params { rows: u32, h: u32, k: u32, unweighted: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> slotOf: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
${
    shared
      ? `@group(0) @binding(5) var<storage, read> shared_out: array<f32>;
${gated ? "@group(0) @binding(6) var<storage, read> gate: array<f32>;" : ""}
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
    s += select(weights[a], 1.0, p.unweighted != 0u) * y[slotOf[a] * p.h + col];
  }
  ${shared ? (gated ? "s += sigmoid(gate[r]) * shared_out[i];" : "s += shared_out[i];") : ""}
  x[i] += s;
}
`;
}

/**
 * GPT-OSS's activation of its interleaved gate/up projection (transformers `GptOssExperts._apply_gate`): with
 * g = min(x[2i], limit) and u = clamp(x[2i + 1], −limit, limit), out[i] = (u + 1)·g·σ(alpha·g). Bindings:
 * params (n = rows·I, I, limit, alpha), x [rows, 2I], out [rows, I].
 */
export const clampedGlu = /* wgsl */ `
struct Params { n: u32, inner: u32, limit: f32, alpha: f32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn sigmoid(g: f32) -> f32 {
  let e = exp(-abs(g));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), g >= 0.0);
}

@compute @workgroup_size(${MOE_WG})
fn clamped_glu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${MOE_WG}u + lid;
  if (i >= p.n) { return; }
  let r = i / p.inner;
  let c = i % p.inner;
  let g = min(x[(r * p.inner + c) * 2u], p.limit);
  let u = clamp(x[(r * p.inner + c) * 2u + 1u], -p.limit, p.limit);
  out[i] = (u + 1.0) * g * sigmoid(p.alpha * g);
}
`;

/**
 * Llama 4's experts take their input scaled by the routing weight, and gate_proj(w·x) = w·gate_proj(x) (no
 * bias): with the slot's weight w, out[s, i] = silu(w·x[s, i])·(w·x[s, I + i]) of the fused projection whose
 * first half is gate and second half up (transformers `Llama4TextExperts`: `gate_up.chunk(2)`). Bindings:
 * params (n = slots·I, I), x [slots, 2I], slot weights [slots], out [slots, I].
 */
export const scaledHalvesGlu = /* wgsl */ `
struct Params { n: u32, inner: u32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> slot_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${MOE_WG})
fn scaled_halves_glu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${MOE_WG}u + lid;
  if (i >= p.n) { return; }
  let s = i / p.inner;
  let c = i % p.inner;
  let w = slot_weight[s];
  let g = w * x[s * 2u * p.inner + c];
  let u = w * x[s * 2u * p.inner + p.inner + c];
  out[i] = g / (1.0 + exp(-g)) * u;
}
`;

/** The routing weight of each sorted slot: slot_weight[slotOf[a]] = weights[a]. Bindings: params (n), weights, slotOf, slot_weight. */
export const slotWeights = /* wgsl */ `
struct Params { n: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> slot_of: array<u32>;
@group(0) @binding(3) var<storage, read_write> slot_weight: array<f32>;

@compute @workgroup_size(${MOE_WG})
fn slot_weights(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let a = linear_workgroup(wg, nwg) * ${MOE_WG}u + lid;
  if (a >= p.n) { return; }
  slot_weight[slot_of[a]] = weights[a];
}
`;
