/**
 * Kernels of speculative decoding's cached passes (lib/ops/tree_attention.ts), all f32, one sequence:
 *
 * - `treeAttention(hd)`: out = softmax(scale·q·kᵀ + mask)·v per query head over a KV cache, where query row t
 *   attends every cached key s < prefix (prefix = offs[prefix_slot]) and the keys prefix + j of the "tree
 *   region" for which mask[t, j] ≠ 0 (j < tree_len). Grouped-query: head h reads kv head h / (nh / nkv). One
 *   invocation per (row, head), keys streamed with the online softmax (running max m, sum l, accumulator):
 *   m' = max(m, s), l' = l·e^(m−m') + e^(s−m'), acc' = acc·e^(m−m') + e^(s−m')·v. Inference only (no
 *   backward, no log-sum-exp). A row with no allowed key writes zeros. The loops over the head dim are
 *   unrolled in the generated WGSL for hd ≤ 64 (kernels/unroll.ts `HeadRows`): a private array indexed in a
 *   loop costs a per-lane loop on Mesa's CPU drivers, so the row's q and accumulator are then named scalars
 *   (`qr0`, `acc0`, …), and q·k is summed term by term, d ascending, as the loop computes it (the same bits).
 * - `ropeAtPositions`: the Hugging Face half rotation (as kernels/rope.ts) with each row's position read from
 *   a buffer, so one prebuilt program serves every offset and tree layout.
 * - `gatherRows`: dst[r] = src[index[r]] (zeros where index[r] is negative or out of range).
 * - `scatterRows`: dst[offs[slot] + r] = src[r] (rows past the end of dst are dropped).
 *
 * Positions and offsets come from small i32 buffers the host writes before each run, not from uniforms, so
 * a program is built once per shape instead of once per sequence position.
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { HeadRows } from "./unroll.ts";

/** Invocations per workgroup of every kernel here. */
export const TREE_WG = 64;

/**
 * Tree attention for head dim `hd` (the register rows need it as a literal). `windowed`: a sliding window of
 * p.window keys, from the rows' positions (binding 7): prefix key s sits at position s, tree key j at row j's
 * position (the verified rows are the tree keys), and a key is kept when its position + window > the row's.
 * The invocation's rows: qr = q[i], acc the running Σ w·v.
 */
export function treeAttention(hd: number, windowed = false, sinks = false): string {
  const rows = new HeadRows(hd);
  const positions = windowed ? "@group(0) @binding(7) var<storage, read> positions: array<i32>;" : "";
  // A window of p.window keys back from the row's position, and Llama 4's chunks of p.chunk positions.
  const windowCheck = windowed
    ? `let key_pos = select(i32(s), positions[s - prefix], s >= prefix);
    if (p.window != 0u && key_pos + i32(p.window) <= positions[t]) { continue; }
    if (p.chunk != 0u && key_pos / i32(p.chunk) != positions[t] / i32(p.chunk)) { continue; }`
    : "";
  return /* wgsl */ `
const HD: u32 = ${hd}u;
struct Params { rows: u32, heads: u32, kv_heads: u32, tree_len: u32, cache_len: u32, prefix_slot: u32,
                scale: f32, window: u32, chunk: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> offs: array<i32>;
@group(0) @binding(5) var<storage, read> mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
${positions}
${sinks ? "@group(0) @binding(8) var<storage, read> sinks: array<f32>;" : ""}

@compute @workgroup_size(${TREE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${TREE_WG}u + lid;   // i = t·nh + h
  if (i >= p.rows * p.heads) { return; }
  let t = i / p.heads;
  let h = i % p.heads;
  let kvh = h / (p.heads / p.kv_heads);
  let prefix = min(u32(max(offs[p.prefix_slot], 0)), p.cache_len);
${rows.row("qr", (d) => `q[i * HD + ${d}]`, "  ")}
${rows.row("acc", () => "0.0", "  ", true)}
  // Attention sinks (GPT-OSS): the row's softmax starts with the head's sink logit, whose probability is dropped.
  var m = ${sinks ? "sinks[h]" : "-3.0e38"};
  var l = ${sinks ? "1.0" : "0.0"};
  let total = prefix + p.tree_len;
  for (var s = 0u; s < total; s++) {
    if (s >= prefix && mask[t * p.tree_len + (s - prefix)] == 0u) { continue; }
    if (s >= p.cache_len) { break; }
    ${windowCheck}
    let ko = (s * p.kv_heads + kvh) * HD;
    // score = Σ_d qr·k, d ascending.
    var score = 0.0;
${rows.each((at, d) => `score += ${at("qr")} * k[ko + ${d}];`, "    ")}
    score *= p.scale;
    let mNew = max(m, score);
    let corr = exp(m - mNew);
    let w = exp(score - mNew);
    l = l * corr + w;
${rows.each((at, d) => `${at("acc")} = ${at("acc")} * corr + w * v[ko + ${d}];`, "    ")}
    m = mNew;
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
${rows.each((at, d) => `out[i * HD + ${d}] = ${at("acc")} * inv;`, "  ")}
}
`;
}

/**
 * RoPE with per-row positions, in place: bindings params, x (read-write), positions, cos, sin. The table's
 * width `half` is r/2 for a rotary width r ≤ hd (head_half = hd/2): the first r columns of each head rotate,
 * the others are left as they are (a partial RoPE, as kernels/rope.ts).
 */
export const ropeAtPositions = /* wgsl */ `
struct Params { pairs: u32, heads: u32, half: u32, max_pos: u32, head_half: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<i32>;
@group(0) @binding(3) var<storage, read> cos_table: array<f32>;
@group(0) @binding(4) var<storage, read> sin_table: array<f32>;

@compute @workgroup_size(${TREE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${TREE_WG}u + lid;
  if (i >= p.pairs) { return; }
  let head_row = i / p.half;          // r·heads + h
  let j = i % p.half;
  let pos = min(u32(max(positions[head_row / p.heads], 0)), p.max_pos - 1u);
  let c = cos_table[pos * p.half + j];
  let s = sin_table[pos * p.half + j];
  let e = head_row * 2u * p.head_half + j;
  let x1 = x[e];
  let x2 = x[e + p.half];
  x[e] = x1 * c - x2 * s;
  x[e + p.half] = x2 * c + x1 * s;
}
`;

/** dst[r, c] = src[index[r], c]: bindings params, src, index, dst. */
export const gatherRows = /* wgsl */ `
struct Params { rows: u32, width: u32, src_rows: u32, pad: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<i32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(${TREE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${TREE_WG}u + lid;
  if (i >= p.rows * p.width) { return; }
  let r = i / p.width;
  let c = i % p.width;
  let s = index[r];
  var value = 0.0;
  if (s >= 0 && u32(s) < p.src_rows) { value = src[u32(s) * p.width + c]; }
  dst[i] = value;
}
`;

/** dst[offs[slot] + r, c] = src[r, c]: bindings params, src, offsets (i32), dst. */
export const scatterRows = /* wgsl */ `
struct Params { rows: u32, width: u32, dst_rows: u32, slot: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> offs: array<i32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(${TREE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${TREE_WG}u + lid;
  if (i >= p.rows * p.width) { return; }
  let start = offs[p.slot];
  if (start < 0) { return; }
  let r = u32(start) + i / p.width;
  if (r >= p.dst_rows) { return; }
  dst[r * p.width + i % p.width] = src[i];
}
`;
