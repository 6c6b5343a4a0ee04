/**
 * Streaming statistics of logits over the full vocabulary, one chunk of columns at a time, so that the
 * [rows, V] logits never exist at once (SpecForge's "compact teacher": `specforge/core/eagle3.py`
 * `_compute_target_p` over the target's full vocabulary).
 * Per row the state holds the running max m, the running Σ exp(x − m) and the running argmax; a chunk with
 * max m_c and sum s_c merges as M = max(m, m_c), s = s·e^(m−M) + s_c·e^(m_c−M), and its argmax replaces the
 * running one only if m_c > m (strictly), so ties resolve to the lowest id as torch.argmax does.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per row. */
export const VOCAB_STATS_WG = 128;

/** Entry point `merge`: folds one chunk of logits [rows, cols] into the state. */
export const vocabStats = /* wgsl */ `
struct Params { rows: u32, cols: u32, colOffset: u32, first: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> maxSum: array<f32>;   // [rows, 2]: running max, running sum
@group(0) @binding(3) var<storage, read_write> argmax: array<i32>;   // [rows]

const WG = ${VOCAB_STATS_WG}u;
var<workgroup> sMax: array<f32, ${VOCAB_STATS_WG}>;
var<workgroup> sArg: array<u32, ${VOCAB_STATS_WG}>;
var<workgroup> sSum: array<f32, ${VOCAB_STATS_WG}>;

@compute @workgroup_size(${VOCAB_STATS_WG})
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let row = linear_workgroup(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  // Chunk max and lowest index of the max: strided partials, then a tree in fixed order.
  var m = -3.4028235e38;
  var arg = 0xffffffffu;
  for (var c = lid; c < p.cols; c += WG) {
    let x = logits[base + c];
    if (x > m || arg == 0xffffffffu) { m = x; arg = c; }
  }
  sMax[lid] = m;
  sArg[lid] = arg;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) {
      let om = sMax[lid + s];
      let oa = sArg[lid + s];
      if (oa != 0xffffffffu && (om > sMax[lid] || (om == sMax[lid] && oa < sArg[lid]) || sArg[lid] == 0xffffffffu)) {
        sMax[lid] = om;
        sArg[lid] = oa;
      }
    }
    workgroupBarrier();
  }
  let chunkMax = sMax[0];
  var acc = 0.0;
  for (var c = lid; c < p.cols; c += WG) { acc += exp(logits[base + c] - chunkMax); }
  sSum[lid] = acc;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { sSum[lid] += sSum[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let chunkSum = sSum[0];
    let chunkArg = i32(sArg[0] + p.colOffset);
    if (p.first == 1u) {
      maxSum[2u * row] = chunkMax;
      maxSum[2u * row + 1u] = chunkSum;
      argmax[row] = chunkArg;
    } else {
      let oldMax = maxSum[2u * row];
      let newMax = max(oldMax, chunkMax);
      maxSum[2u * row + 1u] = maxSum[2u * row + 1u] * exp(oldMax - newMax) + chunkSum * exp(chunkMax - newMax);
      maxSum[2u * row] = newMax;
      if (chunkMax > oldMax) { argmax[row] = chunkArg; }
    }
  }
}
`;
