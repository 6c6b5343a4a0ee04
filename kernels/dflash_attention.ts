/**
 * Attention of the DFlash draft (lib/ops/dflash_attention.ts), f32, forward and backward side by side.
 *
 * Each query row r (sample b, block-query i of Q) attends two key ranges of its own sample: context keys
 * j ∈ [ctxLo, ctxHi) (the projected target features) and block keys m ∈ [blkLo, blkHi) (the draft's own
 * block tokens), read from a table the host writes (`ranges`, four u32 per query row). That expresses every
 * mask SpecForge's `create_dflash_sdpa_mask` builds (specforge/algorithms/common/dflash_family_model.py):
 * context strictly before the anchor, bidirectional block (full layers), a window of W positions with a
 * causal block (sliding layers), nothing for a dropped block; and the unmasked pass of block decoding.
 *
 * Keys and values are one tensor [R0 + nb·Q, nkv, hd]: the nb samples' S context rows first, then, from row
 * R0 ≥ nb·S (padded so that the block rows can be bound by themselves), their Q block rows (row of context
 * key j of sample b: b·S + j; of block key m: R0 + b·Q + m; the padding rows get zero gradients).
 * Grouped-query: head h reads kv head h / (nh / nkv).
 *
 *   forward:  s = scale·q·k, online softmax over the allowed keys (running max, sum, accumulator);
 *             out = Σ softmax(s)·v, lse = log Σ exp(s) (a row with no allowed key: out 0, lse unused)
 *   dQ:       δ = Σ_d dO·out (saved beside lse), p = exp(s − lse), ds = p·(dO·v − δ), dq = scale·Σ ds·k
 *   dK, dV:   per key, over the queries that attend it: dv = Σ p·dO, dk = scale·Σ ds·q
 *
 * The dK/dV pass visits, per key, the query indices [qLo, qHi) of its sample from the second part of the
 * table (two u32 per key row, a superset the host computes) and keeps those whose ranges hold the key. Each
 * output element is written by one invocation in a fixed order: deterministic, no atomics.
 *
 * The loops over the head dim are unrolled in the generated WGSL for hd ≤ 64 (kernels/unroll.ts `HeadRows`):
 * a private array indexed in a loop costs a per-lane loop on Mesa's CPU drivers, so an invocation's rows are
 * then named scalars (`qr0`, `acc0`, …), and each sum over d is written term by term, d ascending, as the
 * loop computes it (the same bits either way).
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { HeadRows } from "./unroll.ts";

/** Invocations per workgroup of the three kernels. */
export const DFLASH_ATTENTION_WG = 64;

function header(hd: number): string {
  return /* wgsl */ `
const HD: u32 = ${hd}u;
// rows: nb·Q query rows; seq: S; queries: Q; batches: nb; key_table: offset of the key part of \`ranges\`;
// block_row0: the first block key row (≥ nb·S: padded so that the block rows can be bound by themselves).
struct Params { rows: u32, heads: u32, kv_heads: u32, seq: u32, queries: u32, batches: u32, scale: f32,
                key_table: u32, block_row0: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;

// The key row of index \`idx\` of sample \`b\` in segment \`seg\` (0: context, 1: block).
fn key_row(b: u32, seg: u32, idx: u32) -> u32 {
  return select(b * p.seq + idx, p.block_row0 + b * p.queries + idx, seg == 1u);
}
`;
}

/**
 * The forward kernel for head dim `hd`: bindings params, q, k, v, ranges, out, stats ([rows·nh, 2]). The
 * invocation's rows: qr = q[i], acc the running Σ w·v.
 */
export function forward(hd: number): string {
  const rows = new HeadRows(hd);
  return header(hd) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> ranges: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(${DFLASH_ATTENTION_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${DFLASH_ATTENTION_WG}u + lid;   // i = r·nh + h
  if (i >= p.rows * p.heads) { return; }
  let r = i / p.heads;
  let kvh = (i % p.heads) / (p.heads / p.kv_heads);
  let b = r / p.queries;
${rows.row("qr", (d) => `q[i * HD + ${d}]`, "  ")}
${rows.row("acc", () => "0.0", "  ", true)}
  var m = -3.0e38;
  var l = 0.0;
  for (var seg = 0u; seg < 2u; seg++) {
    for (var idx = ranges[4u * r + 2u * seg]; idx < ranges[4u * r + 2u * seg + 1u]; idx++) {
      let ko = (key_row(b, seg, idx) * p.kv_heads + kvh) * HD;
      // s = Σ_d qr·k, d ascending.
      var s = 0.0;
${rows.each((at, d) => `s += ${at("qr")} * k[ko + ${d}];`, "      ")}
      s *= p.scale;
      let mNew = max(m, s);
      let corr = exp(m - mNew);
      let w = exp(s - mNew);
      l = l * corr + w;
${rows.each((at, d) => `${at("acc")} = ${at("acc")} * corr + w * v[ko + ${d}];`, "      ")}
      m = mNew;
    }
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
${rows.each((at, d) => `out[i * HD + ${d}] = ${at("acc")} * inv;`, "  ")}
  stats[2u * i] = select(-3.0e38, m + log(l), l > 0.0);
}
`;
}

/**
 * The dQ kernel: bindings params, q, k, v, ranges, out, dout, stats (reads lse, writes δ), dq. Runs before
 * {@link backwardKv}, which reads δ. The invocation's rows: qr = q[i], go = dO[i], acc the running Σ ds·k.
 */
export function backwardQ(hd: number): string {
  const rows = new HeadRows(hd);
  return header(hd) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> ranges: array<u32>;
@group(0) @binding(5) var<storage, read> out: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats: array<f32>;
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;

@compute @workgroup_size(${DFLASH_ATTENTION_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${DFLASH_ATTENTION_WG}u + lid;   // i = r·nh + h
  if (i >= p.rows * p.heads) { return; }
  let r = i / p.heads;
  let kvh = (i % p.heads) / (p.heads / p.kv_heads);
  let b = r / p.queries;
${rows.row("qr", (d) => `q[i * HD + ${d}]`, "  ")}
${rows.row("go", (d) => `dout[i * HD + ${d}]`, "  ")}
${rows.row("acc", () => "0.0", "  ", true)}
  // δ = Σ_d dO·out, d ascending.
  var delta = 0.0;
${rows.each((at, d) => `delta += ${at("go")} * out[i * HD + ${d}];`, "  ")}
  stats[2u * i + 1u] = delta;
  let lse = stats[2u * i];
  for (var seg = 0u; seg < 2u; seg++) {
    for (var idx = ranges[4u * r + 2u * seg]; idx < ranges[4u * r + 2u * seg + 1u]; idx++) {
      let ko = (key_row(b, seg, idx) * p.kv_heads + kvh) * HD;
      // s = Σ_d qr·k and dp = Σ_d dO·v, d ascending.
      var s = 0.0;
      var dp = 0.0;
${rows.each((at, d) => `s += ${at("qr")} * k[ko + ${d}]; dp += ${at("go")} * v[ko + ${d}];`, "      ")}
      let ds = exp(s * p.scale - lse) * (dp - delta);
${rows.each((at, d) => `${at("acc")} += ds * k[ko + ${d}];`, "      ")}
    }
  }
${rows.each((at, d) => `dq[i * HD + ${d}] = ${at("acc")} * p.scale;`, "  ")}
}
`;
}

/**
 * The dK/dV kernel: bindings params, q, k, v, ranges, dout, stats (lse, δ), dk, dv; one invocation per key row
 * and kv head. The invocation's rows: kk = k[i], vv = v[i], dka the running Σ ds·q, dva the running Σ p·dO.
 */
export function backwardKv(hd: number): string {
  const rows = new HeadRows(hd);
  return header(hd) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> ranges: array<u32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;

@compute @workgroup_size(${DFLASH_ATTENTION_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${DFLASH_ATTENTION_WG}u + lid;   // i = key row · nkv + g
  let key_rows = p.block_row0 + p.batches * p.queries;
  if (i >= key_rows * p.kv_heads) { return; }
  let kr = i / p.kv_heads;
  let g = i % p.kv_heads;
  let seg = select(0u, 1u, kr >= p.block_row0);
  let b = select(kr / p.seq, (kr - p.block_row0) / p.queries, seg == 1u);
  let idx = select(kr % p.seq, (kr - p.block_row0) % p.queries, seg == 1u);
  let group = p.heads / p.kv_heads;
${rows.row("kk", (d) => `k[i * HD + ${d}]`, "  ")}
${rows.row("vv", (d) => `v[i * HD + ${d}]`, "  ")}
${rows.row("dka", () => "0.0", "  ", true)}
${rows.row("dva", () => "0.0", "  ", true)}
  for (var qi = ranges[p.key_table + 2u * kr]; qi < ranges[p.key_table + 2u * kr + 1u]; qi++) {
    let r = b * p.queries + qi;
    if (idx < ranges[4u * r + 2u * seg] || idx >= ranges[4u * r + 2u * seg + 1u]) { continue; }
    for (var h = g * group; h < (g + 1u) * group; h++) {
      let qo = (r * p.heads + h) * HD;
      // s = Σ_d q·kk and dp = Σ_d dO·vv, d ascending.
      var s = 0.0;
      var dp = 0.0;
${rows.each((at, d) => `s += q[qo + ${d}] * ${at("kk")}; dp += dout[qo + ${d}] * ${at("vv")};`, "      ")}
      let pr = exp(s * p.scale - stats[2u * (r * p.heads + h)]);
      let ds = pr * (dp - stats[2u * (r * p.heads + h) + 1u]);
${
    rows.each(
      (at, d) => `${at("dva")} += pr * dout[qo + ${d}]; ${at("dka")} += ds * q[qo + ${d}];`,
      "      ",
    )
  }
    }
  }
${rows.each((at, d) => `dk[i * HD + ${d}] = ${at("dka")} * p.scale; dv[i * HD + ${d}] = ${at("dva")};`, "  ")}
}
`;
}
