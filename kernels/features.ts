/**
 * Kernels that decode the compact features of offline training on the GPU: grouped int8/int4 codes of hidden
 * states, a running top-k of logits over vocabulary chunks, and the dense draft-vocabulary teacher rebuilt
 * from a stored top-k.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup of the dequantize and fill kernels. */
export const FEATURES_WG = 256;

/** Rows per workgroup of the per-row kernels (top-k merge, teacher scatter). */
export const ROWS_WG = 64;

/** Largest k of the top-k merge (the size of each invocation's private list). */
export const TOPK_MAX = 64;

/**
 * Value of an unfilled top-k slot (its id is -1): -3.4e38 rounded to f32, spelled in WGSL with every digit so
 * that the shader constant is exactly this f32.
 */
export const TOPK_EMPTY_VALUE: number = Math.fround(-3.4e38);

/**
 * Grouped symmetric dequantisation, one invocation per u32 word of codes. Entry points `int8` (4 codes per
 * word, byte j = element 4i+j as two's complement) and `int4` (8 codes per word, nibble j = element 8i+j,
 * value nibble − 8). Every code of a word shares one row and one group (the op checks cols and groupSize are
 * multiples of the codes per word), so one scale serves the whole word:
 * out[r, c] = code(r, c) · scales[r, ⌊c / groupSize⌋].
 */
export const dequantize = /* wgsl */ `
struct Params { words: u32, cols: u32, groupSize: u32, groupsPerRow: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn scale_of(first: u32) -> f32 {
  let row = first / p.cols;
  let col = first % p.cols;
  return scales[row * p.groupsPerRow + col / p.groupSize];
}

@compute @workgroup_size(${FEATURES_WG})
fn int8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${FEATURES_WG}u + lid;
  if (i >= p.words) { return; }
  let w = codes[i];
  let first = 4u * i;
  let s = scale_of(first);
  for (var j = 0u; j < 4u; j++) {
    // Move byte j to the top, then an arithmetic shift right sign-extends it.
    let code = bitcast<i32>(w << (24u - 8u * j)) >> 24u;
    out[first + j] = f32(code) * s;
  }
}

@compute @workgroup_size(${FEATURES_WG})
fn int4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${FEATURES_WG}u + lid;
  if (i >= p.words) { return; }
  let w = codes[i];
  let first = 8u * i;
  let s = scale_of(first);
  for (var j = 0u; j < 8u; j++) {
    let nibble = (w >> (4u * j)) & 0xfu;
    out[first + j] = (f32(nibble) - 8.0) * s;
  }
}
`;

/**
 * Running top-k per row, one invocation per row. The list (value descending, id ascending on ties) lives in
 * a private array: a column enters only if the list is not full or it beats the k-th value strictly, and it
 * is placed after every entry of equal value, which keeps ties in id order because columns arrive in
 * ascending id order (within a chunk, and across chunks). NaN never enters (tested on its bits, since a
 * compiler may fold x != x away).
 */
export const topkMerge = /* wgsl */ `
struct Params { rows: u32, cols: u32, k: u32, colOffset: u32, first: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> chunk: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> values: array<f32>;

@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg) * ${ROWS_WG}u + lid;
  if (row >= p.rows) { return; }
  var topVal: array<f32, ${TOPK_MAX}>;
  var topId: array<i32, ${TOPK_MAX}>;
  let slots = row * p.k;
  // Filled entries are a prefix of the list; the rest have id -1.
  var count = 0u;
  if (p.first == 0u) {
    for (var i = 0u; i < p.k; i++) {
      topVal[i] = values[slots + i];
      topId[i] = ids[slots + i];
      if (topId[i] >= 0) { count = i + 1u; }
    }
  }
  let base = row * p.cols;
  for (var c = 0u; c < p.cols; c++) {
    let x = chunk[base + c];
    if ((bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u) { continue; }  // NaN, tested on the bits
    var pos: u32;
    if (count < p.k) {
      pos = count;
      count += 1u;
    } else if (x > topVal[p.k - 1u]) {
      pos = p.k - 1u;
    } else {
      continue;
    }
    // Insertion: shift smaller entries down; stop at an equal one so that earlier ids stay first.
    while (pos > 0u && topVal[pos - 1u] < x) {
      topVal[pos] = topVal[pos - 1u];
      topId[pos] = topId[pos - 1u];
      pos -= 1u;
    }
    topVal[pos] = x;
    topId[pos] = i32(p.colOffset + c);
  }
  for (var i = 0u; i < p.k; i++) {
    if (i < count) {
      values[slots + i] = topVal[i];
      ids[slots + i] = topId[i];
    } else {
      values[slots + i] = ${TOPK_EMPTY_VALUE};
      ids[slots + i] = -1;
    }
  }
}
`;

/** out[r, d] = tail[r] for every element of out [rows, width]. */
export const fillRows = /* wgsl */ `
struct Params { total: u32, width: u32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tail: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${FEATURES_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${FEATURES_WG}u + lid;
  if (i >= p.total) { return; }
  out[i] = tail[i / p.width];
}
`;

/**
 * out[r, toDraft[ids[r, i]]] = logprobs[r, i], one invocation per row walking its slots in order (so when two
 * slots land on one draft index the later slot wins, deterministically). Slots with id < 0 or id >= vocab,
 * and tokens outside the draft vocabulary (toDraft = -1, or out of range), are skipped.
 */
export const scatterTopk = /* wgsl */ `
struct Params { rows: u32, k: u32, vocab: u32, draftVocab: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read> logprobs: array<f32>;
@group(0) @binding(3) var<storage, read> toDraft: array<i32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg) * ${ROWS_WG}u + lid;
  if (row >= p.rows) { return; }
  for (var i = 0u; i < p.k; i++) {
    let id = ids[row * p.k + i];
    if (id < 0 || u32(id) >= p.vocab) { continue; }
    let d = toDraft[id];
    if (d < 0 || u32(d) >= p.draftVocab) { continue; }
    out[row * p.draftVocab + u32(d)] = logprobs[row * p.k + i];
  }
}
`;
