/**
 * Attention kernels (flash-style, f32): softmax(scale·q·kᵀ + mask)·v with grouped-query heads, a key-padding
 * mask, an optional causal mask with a query offset, and the EAGLE-3 test-time-training "diagonal" keys (row
 * t at TTT position k also attends its own keys from the earlier positions, unmasked; SpecForge
 * `specforge/modeling/draft/llama3_eagle.py` `LlamaAttention.forward` with `cache_hidden`).
 *
 * Layouts (row-major): q, out, dout, dq [B, Tq, nh, hd]; k, v, dk, dv [B, Tk, nkv, hd];
 * kd, vd, dkd, dvd [S, B, Tq, nkv, hd]; lse [B, nh, Tq]; lengths i32 [B].
 *
 * Entry points (one module each, so that each pipeline only reserves its own workgroup memory):
 * - `attentionForward`: one workgroup per (batch, head, tile of BQ query rows). Key/value tiles of BK rows are
 *   staged in workgroup memory; the softmax is computed online (running max m, running sum l, rescaled
 *   accumulator o), so the [T, T] score matrix is never stored. Saves lse = m + log(l) per row.
 * - `attentionBackwardKV`: FlashAttention-2 backward, parallel over (batch, kv head, tile of BK keys). Loops
 *   over the query heads sharing the kv head (GQA: the sum over them happens in registers, deterministically)
 *   and over query tiles, recomputing P = exp(s − lse) and accumulating dV = Σ Pᵀ·dO, dK = scale·Σ dSᵀ·q with
 *   dS = P ∘ (dP − D), dP = dO·vᵀ, D = rowsum(dO ∘ O).
 * - `attentionBackwardQ`: parallel over (batch, head, tile of BQ query rows): dq = scale·Σ dS·k over the key
 *   tiles plus the diagonal keys of each row.
 * - `attentionBackwardDiag`: one invocation per (batch, row, kv head, step j): dkd, dvd of the diagonal keys,
 *   summed over the query heads of the group.
 *
 * Empty rows: a query row with no allowed key (lengths[b] = 0 and no diagonal keys) gets out = 0, lse = −∞
 * (bit pattern 0xff800000) and zero gradients. Scores of masked keys never enter an exp: they are skipped, and
 * the running max starts at a large finite negative value, so no ∞ − ∞ can arise.
 */
import { TEXEL_AT, texelLoad } from "./texels.ts";
import { LINEAR_WORKGROUP } from "./common.ts";

/** Most head dimensions one invocation owns in a private accumulator (so hd ≤ MAX_DIMS · threads per row). */
export const ATTENTION_MAX_DIMS = 32;

const HEADER = /* wgsl */ `
struct Params {
  batch: u32, tq: u32, tk: u32, heads: u32,
  kv_heads: u32, diag: u32, causal: u32, query_offset: u32,
  scale: f32, window: u32, chunk: u32, _pad2: u32,
}

// Head dimension, query rows per tile, keys per tile, invocations per workgroup (set per pipeline).
override HD: u32 = 64u;
override BQ: u32 = 16u;
override BK: u32 = 16u;
override WG: u32 = 64u;
// Row stride of the tiles in workgroup memory: one padding word avoids bank conflicts between rows.
override ROW: u32 = HD + 1u;

const MAX_DIMS: u32 = ${ATTENTION_MAX_DIMS}u;
// "No key seen yet" for the running max: finite, so exp(m_old - m_new) never sees inf - inf.
const NEG_BIG: f32 = -3.0e38;

${LINEAR_WORKGROUP}

fn neg_inf() -> f32 { return bitcast<f32>(0xff800000u); }

// An lse that is -inf (or not finite): the row had no key, its probabilities and gradients are 0.
fn is_empty_row(lse_value: f32) -> bool {
  return (bitcast<u32>(lse_value) & 0x7fffffffu) >= 0x7f800000u;
}

// Number of real (non-padding) keys of sequence b, clamped to [0, Tk].
fn valid_keys(len: i32) -> u32 {
  return min(u32(max(len, 0)), p.tk);
}

// Whether query row t may attend prefix key s (s < len: key padding; causal: s <= t + query_offset; a
// sliding window of w keys: s + w > t + query_offset; chunked local attention (Llama 4) of c positions: s and
// t + query_offset in the same chunk).
fn key_allowed(t: u32, s: u32, len: u32) -> bool {
  return s < len && (p.causal == 0u || s <= t + p.query_offset) &&
    (p.window == 0u || s + p.window > t + p.query_offset) &&
    (p.chunk == 0u || s / p.chunk == (t + p.query_offset) / p.chunk);
}

// One past the last key any of the query rows [t0, t_end) may attend.
fn key_end(t_end: u32, len: u32) -> u32 {
  if (p.causal != 0u) { return min(len, t_end + p.query_offset); }
  return len;
}

fn q_index(b: u32, t: u32, h: u32) -> u32 { return ((b * p.tq + t) * p.heads + h) * HD; }
fn k_index(b: u32, s: u32, kvh: u32) -> u32 { return ((b * p.tk + s) * p.kv_heads + kvh) * HD; }
fn diag_index(j: u32, b: u32, t: u32, kvh: u32) -> u32 {
  return (((j * p.batch + b) * p.tq + t) * p.kv_heads + kvh) * HD;
}
fn lse_index(b: u32, h: u32, t: u32) -> u32 { return (b * p.heads + h) * p.tq + t; }
`;

/**
 * Forward. Bindings: 0 params, 1 q, 2 k, 3 v, 4 kd, 5 vd (any read-only buffer when there are no diagonal
 * keys), 6 lengths, 7 out, 8 lse. Workgroups: B · nh · ceil(Tq / BQ). Invocation (r, sub) = (lid / TPR,
 * lid % TPR) owns query row r of the tile and head dims d = sub + TPR·i.
 */
export const attentionForward = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> kd: array<f32>;
@group(0) @binding(5) var<storage, read> vd: array<f32>;
@group(0) @binding(6) var<storage, read> lengths: array<i32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;

var<workgroup> q_tile: array<f32, BQ * ROW>;   // scale·q
var<workgroup> k_tile: array<f32, BK * ROW>;
var<workgroup> v_tile: array<f32, BK * ROW>;
var<workgroup> s_tile: array<f32, BQ * BK>;    // scores, NEG_BIG where masked

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let q_tiles = (p.tq + BQ - 1u) / BQ;
  let idx = linear_workgroup(wg, nwg);
  if (idx >= p.batch * p.heads * q_tiles) { return; }
  let t0 = (idx % q_tiles) * BQ;
  let h = (idx / q_tiles) % p.heads;
  let b = idx / (q_tiles * p.heads);
  let kvh = h / (p.heads / p.kv_heads);
  let tpr = WG / BQ;
  let r = lid / tpr;
  let sub = lid % tpr;
  let t = t0 + r;
  let len = valid_keys(lengths[b]);
  let kend = key_end(min(t0 + BQ, p.tq), len);

  for (var e = lid; e < BQ * HD; e += WG) {
    let tt = t0 + e / HD;
    var x = 0.0;
    if (tt < p.tq) { x = q[q_index(b, tt, h) + e % HD] * p.scale; }
    q_tile[(e / HD) * ROW + e % HD] = x;
  }
  workgroupBarrier();

  var m = NEG_BIG;
  var l = 0.0;
  var o: array<f32, MAX_DIMS>;
  let dims = (HD + tpr - 1u) / tpr;

  for (var s0 = 0u; s0 < kend; s0 += BK) {
    workgroupBarrier();
    for (var e = lid; e < BK * HD; e += WG) {
      let s = s0 + e / HD;
      var kx = 0.0;
      var vx = 0.0;
      if (s < kend) {
        let g = k_index(b, s, kvh) + e % HD;
        kx = k[g];
        vx = v[g];
      }
      k_tile[(e / HD) * ROW + e % HD] = kx;
      v_tile[(e / HD) * ROW + e % HD] = vx;
    }
    workgroupBarrier();
    for (var j = sub; j < BK; j += tpr) {
      var sc = NEG_BIG;
      if (t < p.tq && key_allowed(t, s0 + j, len)) {
        var acc = 0.0;
        for (var d = 0u; d < HD; d++) { acc += q_tile[r * ROW + d] * k_tile[j * ROW + d]; }
        sc = acc;
      }
      s_tile[r * BK + j] = sc;
    }
    workgroupBarrier();
    // Online softmax (every invocation of row r does the same arithmetic, so they agree on m and l):
    // m' = max(m, max_j s_j), o ← o·exp(m − m') + Σ_j exp(s_j − m')·v_j, l likewise.
    var tile_max = NEG_BIG;
    for (var j = 0u; j < BK; j++) { tile_max = max(tile_max, s_tile[r * BK + j]); }
    let m_new = max(m, tile_max);
    let alpha = exp(m - m_new);
    l *= alpha;
    for (var i = 0u; i < dims; i++) { o[i] *= alpha; }
    for (var j = 0u; j < BK; j++) {
      let sc = s_tile[r * BK + j];
      if (sc > 0.5 * NEG_BIG) {
        let pj = exp(sc - m_new);
        l += pj;
        for (var i = 0u; i < dims; i++) {
          let d = sub + tpr * i;
          if (d < HD) { o[i] += pj * v_tile[j * ROW + d]; }
        }
      }
    }
    m = m_new;
  }

  if (t >= p.tq) { return; }
  // Diagonal (TTT) keys: row t's own keys kd[j, b, t] of the earlier steps, never masked.
  for (var j = 0u; j < p.diag; j++) {
    let base = diag_index(j, b, t, kvh);
    var sc = 0.0;
    for (var d = 0u; d < HD; d++) { sc += q_tile[r * ROW + d] * kd[base + d]; }
    let m_new = max(m, sc);
    let alpha = exp(m - m_new);
    let pj = exp(sc - m_new);
    l = l * alpha + pj;
    for (var i = 0u; i < dims; i++) {
      let d = sub + tpr * i;
      if (d < HD) { o[i] = o[i] * alpha + pj * vd[base + d]; }
    }
    m = m_new;
  }

  let inv_l = select(0.0, 1.0 / l, l > 0.0);
  let ob = q_index(b, t, h);
  for (var i = 0u; i < dims; i++) {
    let d = sub + tpr * i;
    if (d < HD) { out[ob + d] = o[i] * inv_l; }
  }
  if (sub == 0u) { lse[lse_index(b, h, t)] = select(neg_inf(), m + log(l), l > 0.0); }
}
`;

/**
 * Backward, dK and dV of the prefix keys. Bindings: 0 params, 1 q, 2 k, 3 v, 4 out, 5 dout, 6 lse,
 * 7 lengths, 8 dk, 9 dv. Workgroups: B · nkv · ceil(Tk / BK). Invocation (j, sub) = (lid / TPR, lid % TPR)
 * owns key j of the tile and head dims d = sub + TPR·i of dK and dV.
 */
export const attentionBackwardKV = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> o: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read> lengths: array<i32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;

var<workgroup> k_tile: array<f32, BK * ROW>;
var<workgroup> v_tile: array<f32, BK * ROW>;
var<workgroup> q_tile: array<f32, BQ * ROW>;
var<workgroup> do_tile: array<f32, BQ * ROW>;
var<workgroup> p_tile: array<f32, BQ * BK>;    // P[i, j]
var<workgroup> ds_tile: array<f32, BQ * BK>;   // dS[i, j]
var<workgroup> d_part: array<f32, WG>;         // partial sums of D_i = Σ_d dO·O

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let k_tiles = (p.tk + BK - 1u) / BK;
  let idx = linear_workgroup(wg, nwg);
  if (idx >= p.batch * p.kv_heads * k_tiles) { return; }
  let s0 = (idx % k_tiles) * BK;
  let kvh = (idx / k_tiles) % p.kv_heads;
  let b = idx / (k_tiles * p.kv_heads);
  let group = p.heads / p.kv_heads;
  let tpr = WG / BK;
  let j = lid / tpr;
  let sub = lid % tpr;
  let dims = (HD + tpr - 1u) / tpr;
  let len = valid_keys(lengths[b]);
  // D is summed in WG / BQ partials per query row.
  let dpr = WG / BQ;
  let dr = lid / dpr;
  let dsub = lid % dpr;

  var dk_acc: array<f32, MAX_DIMS>;
  var dv_acc: array<f32, MAX_DIMS>;

  for (var e = lid; e < BK * HD; e += WG) {
    let s = s0 + e / HD;
    var kx = 0.0;
    var vx = 0.0;
    if (s < len) {
      let g = k_index(b, s, kvh) + e % HD;
      kx = k[g];
      vx = v[g];
    }
    k_tile[(e / HD) * ROW + e % HD] = kx;
    v_tile[(e / HD) * ROW + e % HD] = vx;
  }

  // Keys at or past len get no gradient; with causal masking, queries before s0 − query_offset see none.
  var t_begin = 0u;
  if (p.causal != 0u && s0 > p.query_offset) { t_begin = s0 - p.query_offset; }
  if (s0 >= len) { t_begin = p.tq; }

  for (var hh = 0u; hh < group; hh++) {
    let h = kvh * group + hh;
    for (var t0 = t_begin; t0 < p.tq; t0 += BQ) {
      workgroupBarrier();
      for (var e = lid; e < BQ * HD; e += WG) {
        let tt = t0 + e / HD;
        var qx = 0.0;
        var dox = 0.0;
        if (tt < p.tq) {
          let g = q_index(b, tt, h) + e % HD;
          qx = q[g];
          dox = dout[g];
        }
        q_tile[(e / HD) * ROW + e % HD] = qx;
        do_tile[(e / HD) * ROW + e % HD] = dox;
      }
      var part = 0.0;
      if (t0 + dr < p.tq) {
        let g = q_index(b, t0 + dr, h);
        for (var d = dsub; d < HD; d += dpr) { part += dout[g + d] * o[g + d]; }
      }
      d_part[lid] = part;
      workgroupBarrier();
      for (var e = lid; e < BQ * BK; e += WG) {
        let i = e / BK;
        let jj = e % BK;
        let tt = t0 + i;
        var pv = 0.0;
        var dsv = 0.0;
        if (tt < p.tq && key_allowed(tt, s0 + jj, len)) {
          let lse_i = lse[lse_index(b, h, tt)];
          if (!is_empty_row(lse_i)) {
            var sc = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < HD; d++) {
              sc += q_tile[i * ROW + d] * k_tile[jj * ROW + d];
              dp += do_tile[i * ROW + d] * v_tile[jj * ROW + d];
            }
            var d_i = 0.0;
            for (var c = 0u; c < dpr; c++) { d_i += d_part[i * dpr + c]; }
            pv = exp(p.scale * sc - lse_i);
            dsv = pv * (dp - d_i);
          }
        }
        p_tile[e] = pv;
        ds_tile[e] = dsv;
      }
      workgroupBarrier();
      for (var i = 0u; i < BQ; i++) {
        let pij = p_tile[i * BK + j];
        let dsij = ds_tile[i * BK + j];
        for (var c = 0u; c < dims; c++) {
          let d = sub + tpr * c;
          if (d < HD) {
            dv_acc[c] += pij * do_tile[i * ROW + d];
            dk_acc[c] += dsij * q_tile[i * ROW + d];
          }
        }
      }
    }
  }

  let s = s0 + j;
  if (s >= p.tk) { return; }
  let g = k_index(b, s, kvh);
  for (var c = 0u; c < dims; c++) {
    let d = sub + tpr * c;
    if (d < HD) {
      dk[g + d] = p.scale * dk_acc[c];
      dv[g + d] = dv_acc[c];
    }
  }
}
`;

/**
 * Backward, dQ. Bindings: 0 params, 1 q, 2 k, 3 v, 4 kd, 5 vd (any read-only buffer when there are no
 * diagonal keys), 6 out, 7 dout, 8 lse, 9 lengths, 10 dq. Workgroups: B · nh · ceil(Tq / BQ). Invocation
 * (r, sub) owns query row r of the tile and head dims d = sub + TPR·i of dq.
 */
export const attentionBackwardQ = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> kd: array<f32>;
@group(0) @binding(5) var<storage, read> vd: array<f32>;
@group(0) @binding(6) var<storage, read> o: array<f32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read> lse: array<f32>;
@group(0) @binding(9) var<storage, read> lengths: array<i32>;
@group(0) @binding(10) var<storage, read_write> dq: array<f32>;

var<workgroup> q_tile: array<f32, BQ * ROW>;
var<workgroup> do_tile: array<f32, BQ * ROW>;
var<workgroup> k_tile: array<f32, BK * ROW>;
var<workgroup> v_tile: array<f32, BK * ROW>;
var<workgroup> ds_tile: array<f32, BQ * BK>;
var<workgroup> d_part: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let q_tiles = (p.tq + BQ - 1u) / BQ;
  let idx = linear_workgroup(wg, nwg);
  if (idx >= p.batch * p.heads * q_tiles) { return; }
  let t0 = (idx % q_tiles) * BQ;
  let h = (idx / q_tiles) % p.heads;
  let b = idx / (q_tiles * p.heads);
  let kvh = h / (p.heads / p.kv_heads);
  let tpr = WG / BQ;
  let r = lid / tpr;
  let sub = lid % tpr;
  let t = t0 + r;
  let dims = (HD + tpr - 1u) / tpr;
  let len = valid_keys(lengths[b]);
  let kend = key_end(min(t0 + BQ, p.tq), len);

  for (var e = lid; e < BQ * HD; e += WG) {
    let tt = t0 + e / HD;
    var qx = 0.0;
    var dox = 0.0;
    if (tt < p.tq) {
      let g = q_index(b, tt, h) + e % HD;
      qx = q[g];
      dox = dout[g];
    }
    q_tile[(e / HD) * ROW + e % HD] = qx;
    do_tile[(e / HD) * ROW + e % HD] = dox;
  }
  var part = 0.0;
  var lse_r = neg_inf();
  if (t < p.tq) {
    let g = q_index(b, t, h);
    for (var d = sub; d < HD; d += tpr) { part += dout[g + d] * o[g + d]; }
    lse_r = lse[lse_index(b, h, t)];
  }
  d_part[lid] = part;
  workgroupBarrier();
  // D_r = rowsum(dO ∘ O) of row r.
  var d_r = 0.0;
  for (var c = 0u; c < tpr; c++) { d_r += d_part[r * tpr + c]; }
  let live = t < p.tq && !is_empty_row(lse_r);

  var dq_acc: array<f32, MAX_DIMS>;
  for (var s0 = 0u; s0 < kend; s0 += BK) {
    workgroupBarrier();
    for (var e = lid; e < BK * HD; e += WG) {
      let s = s0 + e / HD;
      var kx = 0.0;
      var vx = 0.0;
      if (s < kend) {
        let g = k_index(b, s, kvh) + e % HD;
        kx = k[g];
        vx = v[g];
      }
      k_tile[(e / HD) * ROW + e % HD] = kx;
      v_tile[(e / HD) * ROW + e % HD] = vx;
    }
    workgroupBarrier();
    for (var j = sub; j < BK; j += tpr) {
      var dsv = 0.0;
      if (live && key_allowed(t, s0 + j, len)) {
        var sc = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < HD; d++) {
          sc += q_tile[r * ROW + d] * k_tile[j * ROW + d];
          dp += do_tile[r * ROW + d] * v_tile[j * ROW + d];
        }
        dsv = exp(p.scale * sc - lse_r) * (dp - d_r);
      }
      ds_tile[r * BK + j] = dsv;
    }
    workgroupBarrier();
    for (var j = 0u; j < BK; j++) {
      let dsj = ds_tile[r * BK + j];
      for (var c = 0u; c < dims; c++) {
        let d = sub + tpr * c;
        if (d < HD) { dq_acc[c] += dsj * k_tile[j * ROW + d]; }
      }
    }
  }

  if (t >= p.tq) { return; }
  if (live) {
    for (var j = 0u; j < p.diag; j++) {
      let base = diag_index(j, b, t, kvh);
      var sc = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < HD; d++) {
        sc += q_tile[r * ROW + d] * kd[base + d];
        dp += do_tile[r * ROW + d] * vd[base + d];
      }
      let dsj = exp(p.scale * sc - lse_r) * (dp - d_r);
      for (var c = 0u; c < dims; c++) {
        let d = sub + tpr * c;
        if (d < HD) { dq_acc[c] += dsj * kd[base + d]; }
      }
    }
  }
  let g = q_index(b, t, h);
  for (var c = 0u; c < dims; c++) {
    let d = sub + tpr * c;
    if (d < HD) { dq[g + d] = p.scale * dq_acc[c]; }
  }
}
`;

/**
 * Backward, dkd and dvd of the diagonal (TTT) keys. Bindings: 0 params, 1 q, 2 kd, 3 vd, 4 out, 5 dout,
 * 6 lse, 7 dkd, 8 dvd. One invocation per (j, b, t, kv head), WG per workgroup: it sums over the query heads
 * of the group, writing its head-dim rows of dkd and dvd (the first head stores, the others add).
 */
export const attentionBackwardDiag = /* wgsl */ `
${HEADER}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kd: array<f32>;
@group(0) @binding(3) var<storage, read> vd: array<f32>;
@group(0) @binding(4) var<storage, read> o: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read_write> dkd: array<f32>;
@group(0) @binding(8) var<storage, read_write> dvd: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let n = linear_workgroup(wg, nwg) * WG + lid;
  if (n >= p.diag * p.batch * p.tq * p.kv_heads) { return; }
  let kvh = n % p.kv_heads;
  let t = (n / p.kv_heads) % p.tq;
  let b = (n / (p.kv_heads * p.tq)) % p.batch;
  let j = n / (p.kv_heads * p.tq * p.batch);
  let base = diag_index(j, b, t, kvh);
  let group = p.heads / p.kv_heads;
  for (var hh = 0u; hh < group; hh++) {
    let h = kvh * group + hh;
    let g = q_index(b, t, h);
    let lse_v = lse[lse_index(b, h, t)];
    var pj = 0.0;
    var dsj = 0.0;
    if (!is_empty_row(lse_v)) {
      var sc = 0.0;
      var dp = 0.0;
      var d_row = 0.0;
      for (var d = 0u; d < HD; d++) {
        sc += q[g + d] * kd[base + d];
        dp += dout[g + d] * vd[base + d];
        d_row += dout[g + d] * o[g + d];
      }
      pj = exp(p.scale * sc - lse_v);
      dsj = pj * (dp - d_row);
    }
    for (var d = 0u; d < HD; d++) {
      var dkx = p.scale * dsj * q[g + d];
      var dvx = pj * dout[g + d];
      if (hh > 0u) {
        dkx += dkd[base + d];
        dvx += dvd[base + d];
      }
      dkd[base + d] = dkx;
      dvd[base + d] = dvx;
    }
  }
}
`;

// ---------------------------------------------------------------------------------------------------------
// Register-row kernels (CPU adapters).
//
// Mesa's CPU drivers (lavapipe, llvmpipe) run a workgroup on one core with its invocations in the lanes of a
// SIMD register; every storage or workgroup load is a loop over the lanes, and barriers are costly, while
// arithmetic is cheap. The tiled kernels above stage tiles in workgroup memory and reload them per score,
// so they spend their time in loads and barriers. These kernels use no workgroup memory and no barriers:
// each invocation keeps R rows (query rows, or keys for dK/dV) in registers as vec4s and streams the other
// operand from storage once per R rows, so one vec4 load feeds R vec4 FMAs. The generated code has the head
// dim (HD4 = ceil(hd / 4) vec4s) and R as literal constants so LLVM unrolls the per-row loops.

/** Invocations per workgroup of the register-row kernels: one 8-lane SIMD register on Mesa's CPU drivers. */
export const ATTENTION_ROWS_WG = 8;

/**
 * WGSL loaders for storage arrays holding rows of `hd` floats: `ld_<name>(base, c)` returns elements
 * base + 4c .. base + 4c + 3 of the row starting at element `base` (zero past hd), and `st_<name>` stores
 * them. With hd % 4 == 0 the arrays are bound as vec4 (one load per vec4), else as scalars; the read-only
 * `textures` (hd % 4 == 0 only) are bound as textures packed by kernels/texels.ts instead.
 */
function rowAccess(
  hd: number,
  names: string[],
  writable: string[],
  firstBinding: number,
  textures: readonly string[] = [],
): string {
  const vec = hd % 4 === 0;
  const out: string[] = [];
  [...names, ...writable].forEach((name, i) => {
    if (textures.includes(name)) {
      if (!vec || writable.includes(name)) {
        throw new Error(`attention: ${name} cannot be read from a texture`);
      }
      out.push(`@group(0) @binding(${firstBinding + i}) var ${name}: texture_2d<f32>;`);
      out.push(
        `fn ld_${name}(base: u32, c: u32) -> vec4<f32> { return ${texelLoad(name, "(base >> 2u) + c")}; }`,
      );
      return;
    }
    const rw = writable.includes(name) ? "read_write" : "read";
    const type = vec ? "array<vec4<f32>>" : "array<f32>";
    out.push(`@group(0) @binding(${firstBinding + i}) var<storage, ${rw}> ${name}: ${type};`);
    if (vec) {
      out.push(`fn ld_${name}(base: u32, c: u32) -> vec4<f32> { return ${name}[(base >> 2u) + c]; }`);
      if (rw === "read_write") {
        out.push(`fn st_${name}(base: u32, c: u32, x: vec4<f32>) { ${name}[(base >> 2u) + c] = x; }`);
      }
    } else {
      const parts = [0, 1, 2, 3].map((i) =>
        `select(0.0, ${name}[base + 4u * c + ${i}u], 4u * c + ${i}u < HD)`
      );
      out.push(`fn ld_${name}(base: u32, c: u32) -> vec4<f32> { return vec4<f32>(${parts.join(", ")}); }`);
      if (rw === "read_write") {
        const stores = [0, 1, 2, 3].map((i) =>
          `if (4u * c + ${i}u < HD) { ${name}[base + 4u * c + ${i}u] = x[${i}]; }`
        );
        out.push(`fn st_${name}(base: u32, c: u32, x: vec4<f32>) { ${stores.join(" ")} }`);
      }
    }
  });
  return out.join("\n");
}

/** The shared header of the register-row kernels for head dim `hd` and `rows` rows per invocation. */
function rowsHeader(hd: number, rows: number): string {
  return `${HEADER}
${TEXEL_AT}
@group(0) @binding(0) var<uniform> p: Params;
const HD4: u32 = ${Math.ceil(hd / 4)}u;
const R: u32 = ${rows}u;
const RWG: u32 = ${ATTENTION_ROWS_WG}u;
alias Row = array<vec4<f32>, ${Math.ceil(hd / 4)}>;
fn dot_row(a: Row, b: Row) -> f32 {
  var s = 0.0;
  for (var c = 0u; c < HD4; c++) { s += dot(a[c], b[c]); }
  return s;
}
`;
}

/**
 * Forward, register rows (override HD = hd). Bindings as {@link attentionForward}, and with `sinks` 9 sinks
 * [nh]. Workgroups: ceil(B · nh · ceil(Tq / R) / 8). Invocation n owns query rows t0 .. t0 + R − 1 of one
 * (b, h), t0 = R·(n mod ceil(Tq / R)); per key it loads k and v once and runs the online softmax of each row,
 * with one exp per row and key: if s > m, then m ← s, o ← o·exp(m_old − s) + v; else o ← o + exp(s − m)·v.
 * Attention sinks (GPT-OSS, transformers `eager_attention_forward`: a per-head logit in every row's softmax
 * whose probability is dropped) start each row at m = sink_h, l = 1, o = 0.
 */
export function attentionRowsForward(
  hd: number,
  rows: number,
  textures: readonly string[] = [],
  sinks = false,
): string {
  return `${rowsHeader(hd, rows)}
${rowAccess(hd, ["q", "k", "v", "kd", "vd"], [], 1, textures)}
@group(0) @binding(6) var<storage, read> lengths: array<i32>;
${rowAccess(hd, [], ["out"], 7)}
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;
${sinks ? "@group(0) @binding(9) var<storage, read> sinks: array<f32>;" : ""}

@compute @workgroup_size(RWG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let groups = (p.tq + R - 1u) / R;
  let n = linear_workgroup(wg, nwg) * RWG + lid;
  if (n >= p.batch * p.heads * groups) { return; }
  let t0 = (n % groups) * R;
  let h = (n / groups) % p.heads;
  let b = n / (groups * p.heads);
  let kvh = h / (p.heads / p.kv_heads);
  let len = valid_keys(lengths[b]);
  let kend = key_end(min(t0 + R, p.tq), len);

  var qr: array<Row, R>;
  var o: array<Row, R>;
  var m: array<f32, R>;
  var l: array<f32, R>;
  for (var i = 0u; i < R; i++) {
    let qb = q_index(b, min(t0 + i, p.tq - 1u), h);
    for (var c = 0u; c < HD4; c++) {
      qr[i][c] = ld_q(qb, c) * p.scale;
      o[i][c] = vec4<f32>(0.0);
    }
    m[i] = ${sinks ? "sinks[h]" : "NEG_BIG"};
    l[i] = ${sinks ? "1.0" : "0.0"};
  }
  for (var s = 0u; s < kend; s++) {
    let kb = k_index(b, s, kvh);
    var kr: Row;
    var vr: Row;
    for (var c = 0u; c < HD4; c++) {
      kr[c] = ld_k(kb, c);
      vr[c] = ld_v(kb, c);
    }
    for (var i = 0u; i < R; i++) {
      if (key_allowed(t0 + i, s, len)) {
        let sc = dot_row(qr[i], kr);
        let grow = sc > m[i];
        let e = exp(min(sc, m[i]) - max(sc, m[i]));
        let alpha = select(1.0, e, grow);
        let pj = select(e, 1.0, grow);
        m[i] = max(sc, m[i]);
        l[i] = l[i] * alpha + pj;
        for (var c = 0u; c < HD4; c++) { o[i][c] = o[i][c] * alpha + pj * vr[c]; }
      }
    }
  }
  for (var i = 0u; i < R; i++) {
    let t = t0 + i;
    if (t >= p.tq) { break; }
    // Diagonal (TTT) keys: row t's own keys kd[j, b, t] of the earlier steps, never masked.
    for (var j = 0u; j < p.diag; j++) {
      let db = diag_index(j, b, t, kvh);
      var kr: Row;
      for (var c = 0u; c < HD4; c++) { kr[c] = ld_kd(db, c); }
      let sc = dot_row(qr[i], kr);
      let grow = sc > m[i];
      let e = exp(min(sc, m[i]) - max(sc, m[i]));
      let alpha = select(1.0, e, grow);
      let pj = select(e, 1.0, grow);
      m[i] = max(sc, m[i]);
      l[i] = l[i] * alpha + pj;
      for (var c = 0u; c < HD4; c++) { o[i][c] = o[i][c] * alpha + pj * ld_vd(db, c); }
    }
    let inv_l = select(0.0, 1.0 / l[i], l[i] > 0.0);
    let ob = q_index(b, t, h);
    for (var c = 0u; c < HD4; c++) { st_out(ob, c, o[i][c] * inv_l); }
    lse[lse_index(b, h, t)] = select(neg_inf(), m[i] + log(l[i]), l[i] > 0.0);
  }
}
`;
}

/**
 * Backward dQ, register rows. Bindings as {@link attentionBackwardQ}. Workgroups as
 * {@link attentionRowsForward}. Per row: D = dO·O; per allowed key: dS = exp(scale·q·k − lse)·(dO·v − D),
 * dq += dS·k (prefix keys, then the row's diagonal keys); dq is scaled once at the end.
 */
export function attentionRowsBackwardQ(hd: number, rows: number, textures: readonly string[] = []): string {
  return `${rowsHeader(hd, rows)}
${rowAccess(hd, ["q", "k", "v", "kd", "vd", "o", "dout"], [], 1, textures)}
@group(0) @binding(8) var<storage, read> lse: array<f32>;
@group(0) @binding(9) var<storage, read> lengths: array<i32>;
${rowAccess(hd, [], ["dq"], 10)}

@compute @workgroup_size(RWG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let groups = (p.tq + R - 1u) / R;
  let n = linear_workgroup(wg, nwg) * RWG + lid;
  if (n >= p.batch * p.heads * groups) { return; }
  let t0 = (n % groups) * R;
  let h = (n / groups) % p.heads;
  let b = n / (groups * p.heads);
  let kvh = h / (p.heads / p.kv_heads);
  let len = valid_keys(lengths[b]);
  let kend = key_end(min(t0 + R, p.tq), len);

  var qr: array<Row, R>;
  var dor: array<Row, R>;
  var dq_acc: array<Row, R>;
  var lse_r: array<f32, R>;
  var d_r: array<f32, R>;
  var live: array<bool, R>;
  for (var i = 0u; i < R; i++) {
    let t = min(t0 + i, p.tq - 1u);
    let qb = q_index(b, t, h);
    var orow: Row;
    for (var c = 0u; c < HD4; c++) {
      qr[i][c] = ld_q(qb, c) * p.scale;
      dor[i][c] = ld_dout(qb, c);
      orow[c] = ld_o(qb, c);
      dq_acc[i][c] = vec4<f32>(0.0);
    }
    d_r[i] = dot_row(dor[i], orow);
    lse_r[i] = lse[lse_index(b, h, t)];
    live[i] = t0 + i < p.tq && !is_empty_row(lse_r[i]);
  }
  for (var s = 0u; s < kend; s++) {
    let kb = k_index(b, s, kvh);
    var kr: Row;
    var vr: Row;
    for (var c = 0u; c < HD4; c++) {
      kr[c] = ld_k(kb, c);
      vr[c] = ld_v(kb, c);
    }
    for (var i = 0u; i < R; i++) {
      if (live[i] && key_allowed(t0 + i, s, len)) {
        let ds = exp(dot_row(qr[i], kr) - lse_r[i]) * (dot_row(dor[i], vr) - d_r[i]);
        for (var c = 0u; c < HD4; c++) { dq_acc[i][c] += ds * kr[c]; }
      }
    }
  }
  for (var i = 0u; i < R; i++) {
    let t = t0 + i;
    if (t >= p.tq) { break; }
    if (live[i]) {
      for (var j = 0u; j < p.diag; j++) {
        let db = diag_index(j, b, t, kvh);
        var kr: Row;
        var vr: Row;
        for (var c = 0u; c < HD4; c++) {
          kr[c] = ld_kd(db, c);
          vr[c] = ld_vd(db, c);
        }
        let ds = exp(dot_row(qr[i], kr) - lse_r[i]) * (dot_row(dor[i], vr) - d_r[i]);
        for (var c = 0u; c < HD4; c++) { dq_acc[i][c] += ds * kr[c]; }
      }
    }
    let qb = q_index(b, t, h);
    for (var c = 0u; c < HD4; c++) { st_dq(qb, c, p.scale * dq_acc[i][c]); }
  }
}
`;
}

/**
 * Backward dK, dV of the prefix keys, register rows. Bindings as {@link attentionBackwardKV}. Workgroups:
 * ceil(B · nkv · ceil(Tk / R) / 8). Invocation n owns keys s0 .. s0 + R − 1 of one (b, kv head) and loops over
 * the query heads of its group and the query rows that may see them, loading q, dO, O and lse once per row
 * for all R keys: P = exp(scale·q·k − lse), dS = P·(dO·v − D), dv += P·dO, dk += dS·q (scaled at the end).
 */
export function attentionRowsBackwardKV(hd: number, rows: number, textures: readonly string[] = []): string {
  return `${rowsHeader(hd, rows)}
${rowAccess(hd, ["q", "k", "v", "o", "dout"], [], 1, textures)}
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read> lengths: array<i32>;
${rowAccess(hd, [], ["dk", "dv"], 8)}

@compute @workgroup_size(RWG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let groups = (p.tk + R - 1u) / R;
  let n = linear_workgroup(wg, nwg) * RWG + lid;
  if (n >= p.batch * p.kv_heads * groups) { return; }
  let s0 = (n % groups) * R;
  let kvh = (n / groups) % p.kv_heads;
  let b = n / (groups * p.kv_heads);
  let group = p.heads / p.kv_heads;
  let len = valid_keys(lengths[b]);

  var kr: array<Row, R>;
  var vr: array<Row, R>;
  var dk_acc: array<Row, R>;
  var dv_acc: array<Row, R>;
  for (var i = 0u; i < R; i++) {
    let kb = k_index(b, min(s0 + i, p.tk - 1u), kvh);
    for (var c = 0u; c < HD4; c++) {
      kr[i][c] = ld_k(kb, c);
      vr[i][c] = ld_v(kb, c);
      dk_acc[i][c] = vec4<f32>(0.0);
      dv_acc[i][c] = vec4<f32>(0.0);
    }
  }
  // Keys at or past len get no gradient; with causal masking, queries before s0 − query_offset see none.
  var t_begin = 0u;
  if (p.causal != 0u && s0 > p.query_offset) { t_begin = s0 - p.query_offset; }
  if (s0 >= len) { t_begin = p.tq; }
  for (var hh = 0u; hh < group; hh++) {
    let h = kvh * group + hh;
    for (var t = t_begin; t < p.tq; t++) {
      let lse_t = lse[lse_index(b, h, t)];
      if (is_empty_row(lse_t)) { continue; }
      let qb = q_index(b, t, h);
      var qr: Row;
      var dor: Row;
      var d_t = 0.0;
      for (var c = 0u; c < HD4; c++) {
        qr[c] = ld_q(qb, c);
        dor[c] = ld_dout(qb, c);
        d_t += dot(dor[c], ld_o(qb, c));
      }
      for (var i = 0u; i < R; i++) {
        if (key_allowed(t, s0 + i, len)) {
          let pv = exp(p.scale * dot_row(qr, kr[i]) - lse_t);
          let ds = pv * (dot_row(dor, vr[i]) - d_t);
          for (var c = 0u; c < HD4; c++) {
            dv_acc[i][c] += pv * dor[c];
            dk_acc[i][c] += ds * qr[c];
          }
        }
      }
    }
  }
  for (var i = 0u; i < R; i++) {
    let s = s0 + i;
    if (s >= p.tk) { break; }
    let kb = k_index(b, s, kvh);
    for (var c = 0u; c < HD4; c++) {
      st_dk(kb, c, p.scale * dk_acc[i][c]);
      st_dv(kb, c, dv_acc[i][c]);
    }
  }
}
`;
}
