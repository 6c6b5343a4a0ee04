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
import { TEXEL_AT, texelBinding, texelLoad } from "./texels.ts";
import { LINEAR_WORKGROUP } from "./common.ts";
import { dotElements, dotRow, rep } from "./unroll.ts";

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
// Diagonal row n of the dKd/dVd kernels (kv heads fastest, then t, b, j) as (j, b, t, kv head).
fn diag_row(n: u32) -> vec4<u32> {
  return vec4<u32>(n / (p.kv_heads * p.tq * p.batch), (n / (p.kv_heads * p.tq)) % p.batch,
                   (n / p.kv_heads) % p.tq, n % p.kv_heads);
}
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
 * WGSL: the dKd/dVd kernels' invocation n (`wg` invocations per workgroup) as its diagonal row (j, b, t, kv
 * head), `base` (its row of kd, vd, dkd, dvd) and the query heads per kv head, `group`; past the last row it
 * returns.
 */
function diagPrologue(wg: string): string {
  return `  let n = linear_workgroup(wg, nwg) * ${wg} + lid;
  if (n >= p.diag * p.batch * p.tq * p.kv_heads) { return; }
  let row = diag_row(n);
  let b = row.y;
  let t = row.z;
  let kvh = row.w;
  let base = diag_index(row.x, b, t, kvh);
  let group = p.heads / p.kv_heads;`;
}

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
${diagPrologue("WG")}
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
// operand from storage once per R rows, so one vec4 load feeds R vec4 FMAs. The loops over the R rows and
// the HD4 = ceil(hd / 4) vec4s of a row are unrolled here, in the generated WGSL: every row vec4 is a named
// value. A private array indexed in a loop (as `o[i][c]`) stays an array in Mesa's compiler, and each access
// becomes a loop over the lanes: the forward at the recipe's draft shape (B 4, T 128, 8 heads, hd 16) took
// 11 ms that way and 5 ms unrolled, and at B 1, T 256, 32 heads, hd 128 it took 3 to 5 s and takes 54 ms, with
// the same bits. Each sum keeps the loops' order (dotRow below).

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
      out.push(texelBinding(name, firstBinding + i));
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

/** The shared header of the register-row kernels for `rows` rows per invocation. */
function rowsHeader(rows: number): string {
  return `${HEADER}
${TEXEL_AT}
@group(0) @binding(0) var<uniform> p: Params;
const R: u32 = ${rows}u;
const RWG: u32 = ${ATTENTION_ROWS_WG}u;
`;
}

/** The invocation's (b, head, first row) prologue of the register-row kernels over `heads` and `len` rows. */
function rowsPrologue(heads: string, len: string, first: string, head: string): string {
  return `  let groups = (${len} + R - 1u) / R;
  let n = linear_workgroup(wg, nwg) * RWG + lid;
  if (n >= p.batch * ${heads} * groups) { return; }
  let ${first} = (n % groups) * R;
  let ${head} = (n / groups) % ${heads};
  let b = n / (groups * ${heads});`;
}

const ROWS_MAIN = `@compute @workgroup_size(RWG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {`;

/**
 * Forward, register rows (override HD = hd). Bindings as {@link attentionForward}, and with `sinks` 9 sinks
 * [nh]. Workgroups: ceil(B · nh · ceil(Tq / R) / 8). Invocation n owns query rows t0 .. t0 + R − 1 of one
 * (b, h), t0 = R·(n mod ceil(Tq / R)); per key it loads k and v once and runs the online softmax of each row,
 * with one exp per row and key: if s > m, then m ← s, o ← o·exp(m_old − s) + v; else o ← o + exp(s − m)·v.
 * Attention sinks (GPT-OSS, transformers `eager_attention_forward`: a per-head logit in every row's softmax
 * whose probability is dropped) start each row at m = sink_h, l = 1, o = 0. Row i's values: q`i`_c (scaled
 * q), o`i`_c, m`i`, l`i`.
 */
export function attentionRowsForward(
  hd: number,
  rows: number,
  textures: readonly string[] = [],
  sinks = false,
): string {
  const H4 = Math.ceil(hd / 4);
  // One key of row i: the running max, sum and output (v(c): the key's value vec4 c).
  const online = (i: number, v: (c: number) => string) => `
      let grow = sc > m${i};
      let e = exp(min(sc, m${i}) - max(sc, m${i}));
      let alpha = select(1.0, e, grow);
      let pj = select(e, 1.0, grow);
      m${i} = max(sc, m${i});
      l${i} = l${i} * alpha + pj;
${rep(H4, (c) => `      o${i}_${c} = o${i}_${c} * alpha + pj * ${v(c)};`)}`;
  const score = (i: number, k: (c: number) => string) => dotRow(H4, (c) => `q${i}_${c}`, k);
  return `${rowsHeader(rows)}
${rowAccess(hd, ["q", "k", "v", "kd", "vd"], [], 1, textures)}
@group(0) @binding(6) var<storage, read> lengths: array<i32>;
${rowAccess(hd, [], ["out"], 7)}
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;
${sinks ? "@group(0) @binding(9) var<storage, read> sinks: array<f32>;" : ""}

${ROWS_MAIN}
${rowsPrologue("p.heads", "p.tq", "t0", "h")}
  let kvh = h / (p.heads / p.kv_heads);
  let len = valid_keys(lengths[b]);
  let kend = key_end(min(t0 + R, p.tq), len);
${
    rep(rows, (i) =>
      `  let qb${i} = q_index(b, min(t0 + ${i}u, p.tq - 1u), h);
${rep(H4, (c) => `  let q${i}_${c} = ld_q(qb${i}, ${c}u) * p.scale;\n  var o${i}_${c} = vec4<f32>(0.0);`)}
  var m${i}: f32 = ${sinks ? "sinks[h]" : "NEG_BIG"};
  var l${i}: f32 = ${sinks ? "1.0" : "0.0"};`)
  }
  for (var s = 0u; s < kend; s++) {
    let kb = k_index(b, s, kvh);
${rep(H4, (c) => `    let k${c} = ld_k(kb, ${c}u);\n    let v${c} = ld_v(kb, ${c}u);`)}
${
    rep(rows, (i) =>
      `    if (key_allowed(t0 + ${i}u, s, len)) {
      let sc = ${score(i, (c) => `k${c}`)};${online(i, (c) => `v${c}`)}
    }`)
  }
  }
${
    rep(rows, (i) =>
      `  if (t0 + ${i}u < p.tq) {
    let t = t0 + ${i}u;
    // Diagonal (TTT) keys: row t's own keys kd[j, b, t] of the earlier steps, never masked.
    for (var j = 0u; j < p.diag; j++) {
      let db = diag_index(j, b, t, kvh);
${rep(H4, (c) => `      let k${c} = ld_kd(db, ${c}u);`)}
      let sc = ${score(i, (c) => `k${c}`)};${online(i, (c) => `ld_vd(db, ${c}u)`)}
    }
    let inv_l = select(0.0, 1.0 / l${i}, l${i} > 0.0);
    let ob = q_index(b, t, h);
${rep(H4, (c) => `    st_out(ob, ${c}u, o${i}_${c} * inv_l);`)}
    lse[lse_index(b, h, t)] = select(neg_inf(), m${i} + log(l${i}), l${i} > 0.0);
  }`)
  }
}
`;
}

/**
 * Backward dQ, register rows. Bindings as {@link attentionBackwardQ}. Workgroups as
 * {@link attentionRowsForward}. Per row: D = dO·O; per allowed key: dS = exp(scale·q·k − lse)·(dO·v − D),
 * dq += dS·k (prefix keys, then the row's diagonal keys); dq is scaled once at the end. Row i's values:
 * q`i`_c (scaled q), do`i`_c, dq`i`_c, lse`i`, d`i`, live`i`.
 */
export function attentionRowsBackwardQ(hd: number, rows: number, textures: readonly string[] = []): string {
  const H4 = Math.ceil(hd / 4);
  // One key of row i (k(c), v(c): the key's vec4s).
  const key = (i: number, k: (c: number) => string, v: (c: number) => string, indent: string) =>
    `${indent}let ds = exp(${dotRow(H4, (c) => `q${i}_${c}`, k)} - lse${i}) * (${
      dotRow(H4, (c) => `do${i}_${c}`, v)
    } - d${i});
${rep(H4, (c) => `${indent}dq${i}_${c} += ds * ${k(c)};`)}`;
  return `${rowsHeader(rows)}
${rowAccess(hd, ["q", "k", "v", "kd", "vd", "o", "dout"], [], 1, textures)}
@group(0) @binding(8) var<storage, read> lse: array<f32>;
@group(0) @binding(9) var<storage, read> lengths: array<i32>;
${rowAccess(hd, [], ["dq"], 10)}

${ROWS_MAIN}
${rowsPrologue("p.heads", "p.tq", "t0", "h")}
  let kvh = h / (p.heads / p.kv_heads);
  let len = valid_keys(lengths[b]);
  let kend = key_end(min(t0 + R, p.tq), len);
${
    rep(rows, (i) =>
      `  let qb${i} = q_index(b, min(t0 + ${i}u, p.tq - 1u), h);
${
        rep(H4, (c) =>
          `  let q${i}_${c} = ld_q(qb${i}, ${c}u) * p.scale;
  let do${i}_${c} = ld_dout(qb${i}, ${c}u);
  var dq${i}_${c} = vec4<f32>(0.0);`)
      }
  let d${i} = ${dotRow(H4, (c) => `do${i}_${c}`, (c) => `ld_o(qb${i}, ${c}u)`)};
  let lse${i} = lse[lse_index(b, h, min(t0 + ${i}u, p.tq - 1u))];
  let live${i} = t0 + ${i}u < p.tq && !is_empty_row(lse${i});`)
  }
  for (var s = 0u; s < kend; s++) {
    let kb = k_index(b, s, kvh);
${rep(H4, (c) => `    let k${c} = ld_k(kb, ${c}u);\n    let v${c} = ld_v(kb, ${c}u);`)}
${
    rep(rows, (i) =>
      `    if (live${i} && key_allowed(t0 + ${i}u, s, len)) {
${key(i, (c) => `k${c}`, (c) => `v${c}`, "      ")}
    }`)
  }
  }
${
    rep(rows, (i) =>
      `  if (t0 + ${i}u < p.tq) {
    let t = t0 + ${i}u;
    if (live${i}) {
      for (var j = 0u; j < p.diag; j++) {
        let db = diag_index(j, b, t, kvh);
${rep(H4, (c) => `        let k${c} = ld_kd(db, ${c}u);\n        let v${c} = ld_vd(db, ${c}u);`)}
${key(i, (c) => `k${c}`, (c) => `v${c}`, "        ")}
      }
    }
    let qb = q_index(b, t, h);
${rep(H4, (c) => `    st_dq(qb, ${c}u, p.scale * dq${i}_${c});`)}
  }`)
  }
}
`;
}

/**
 * Backward dK, dV of the prefix keys, register rows. Bindings as {@link attentionBackwardKV}. Workgroups:
 * ceil(B · nkv · ceil(Tk / R) / 8). Invocation n owns keys s0 .. s0 + R − 1 of one (b, kv head) and loops over
 * the query heads of its group and the query rows that may see them, loading q, dO, O and lse once per row
 * for all R keys: P = exp(scale·q·k − lse), dS = P·(dO·v − D), dv += P·dO, dk += dS·q (scaled at the end).
 * Key i's values: k`i`_c, v`i`_c, dk`i`_c, dv`i`_c.
 */
export function attentionRowsBackwardKV(hd: number, rows: number, textures: readonly string[] = []): string {
  const H4 = Math.ceil(hd / 4);
  return `${rowsHeader(rows)}
${rowAccess(hd, ["q", "k", "v", "o", "dout"], [], 1, textures)}
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read> lengths: array<i32>;
${rowAccess(hd, [], ["dk", "dv"], 8)}

${ROWS_MAIN}
${rowsPrologue("p.kv_heads", "p.tk", "s0", "kvh")}
  let group = p.heads / p.kv_heads;
  let len = valid_keys(lengths[b]);
${
    rep(rows, (i) =>
      `  let kb${i} = k_index(b, min(s0 + ${i}u, p.tk - 1u), kvh);
${
        rep(H4, (c) =>
          `  let k${i}_${c} = ld_k(kb${i}, ${c}u);
  let v${i}_${c} = ld_v(kb${i}, ${c}u);
  var dk${i}_${c} = vec4<f32>(0.0);
  var dv${i}_${c} = vec4<f32>(0.0);`)
      }`)
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
${rep(H4, (c) => `      let q${c} = ld_q(qb, ${c}u);\n      let do${c} = ld_dout(qb, ${c}u);`)}
      let d_t = ${dotRow(H4, (c) => `do${c}`, (c) => `ld_o(qb, ${c}u)`)};
${
    rep(rows, (i) =>
      `      if (key_allowed(t, s0 + ${i}u, len)) {
        let pv = exp(p.scale * ${dotRow(H4, (c) => `q${c}`, (c) => `k${i}_${c}`)} - lse_t);
        let ds = pv * (${dotRow(H4, (c) => `do${c}`, (c) => `v${i}_${c}`)} - d_t);
${rep(H4, (c) => `        dv${i}_${c} += pv * do${c};\n        dk${i}_${c} += ds * q${c};`)}
      }`)
  }
    }
  }
${
    rep(rows, (i) =>
      `  if (s0 + ${i}u < p.tk) {
    let kb = k_index(b, s0 + ${i}u, kvh);
${rep(H4, (c) => `    st_dk(kb, ${c}u, p.scale * dk${i}_${c});\n    st_dv(kb, ${c}u, dv${i}_${c});`)}
  }`)
  }
}
`;
}

/**
 * Backward dKd, dVd of the diagonal (TTT) keys, register rows: {@link attentionBackwardDiag} with its loops
 * over the head dim unrolled and rows loaded as vec4s (the sums in the same order, element by element).
 * Bindings as there. Workgroups: ceil(S · B · Tq · nkv / 8), one (j, b, t, kv head) per invocation, summing
 * over the query heads of the group in registers.
 */
export function attentionRowsBackwardDiag(hd: number, textures: readonly string[] = []): string {
  const H4 = Math.ceil(hd / 4);
  return `${rowsHeader(1)}
${rowAccess(hd, ["q", "kd", "vd", "o", "dout"], [], 1, textures)}
@group(0) @binding(6) var<storage, read> lse: array<f32>;
${rowAccess(hd, [], ["dkd", "dvd"], 7)}

${ROWS_MAIN}
${diagPrologue("RWG")}
${rep(H4, (c) => `  let k${c} = ld_kd(base, ${c}u);\n  let v${c} = ld_vd(base, ${c}u);`)}
${rep(H4, (c) => `  var dk${c} = vec4<f32>(0.0);\n  var dv${c} = vec4<f32>(0.0);`)}
  for (var hh = 0u; hh < group; hh++) {
    let h = kvh * group + hh;
    let g = q_index(b, t, h);
    let lse_v = lse[lse_index(b, h, t)];
${rep(H4, (c) => `    let q${c} = ld_q(g, ${c}u);\n    let do${c} = ld_dout(g, ${c}u);`)}
    var pj = 0.0;
    var dsj = 0.0;
    if (!is_empty_row(lse_v)) {
${rep(H4, (c) => `      let o${c} = ld_o(g, ${c}u);`)}
      let sc = ${dotElements(hd, (c) => `q${c}`, (c) => `k${c}`)};
      let dp = ${dotElements(hd, (c) => `do${c}`, (c) => `v${c}`)};
      let d_row = ${dotElements(hd, (c) => `do${c}`, (c) => `o${c}`)};
      pj = exp(p.scale * sc - lse_v);
      dsj = pj * (dp - d_row);
    }
    let dk_scale = p.scale * dsj;
    if (hh == 0u) {
${rep(H4, (c) => `      dk${c} = dk_scale * q${c};\n      dv${c} = pj * do${c};`)}
    } else {
${rep(H4, (c) => `      dk${c} = dk_scale * q${c} + dk${c};\n      dv${c} = pj * do${c} + dv${c};`)}
    }
  }
${rep(H4, (c) => `  st_dkd(base, ${c}u, dk${c});\n  st_dvd(base, ${c}u, dv${c});`)}
}
`;
}
