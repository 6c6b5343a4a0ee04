/**
 * Llama 4's attention temperature tuning on its NoPE layers (transformers `Llama4TextAttention.forward`, after
 * arXiv 2501.19399): each query row at position pos is scaled by log1p(⌊(pos + 1)/floor_scale⌋)·attn_scale + 1,
 * computed in f32. Positions are offset + (row mod seq_len) (a prefill or cached decode of B sequences), or read
 * per row (a draft tree's verification).
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup. */
export const TEMPERATURE_WG = 64;

/**
 * In place on x [rows, width]. Bindings: params (n = rows·width, width, seq_len, offset, floor_scale,
 * attn_scale), x, and with `positions` the rows' positions (i32 [rows]).
 */
export function attentionTemperature(positions: boolean): string {
  return /* wgsl */ `
struct Params { n: u32, width: u32, seq_len: u32, offset: u32, floor_scale: f32, attn_scale: f32, _a: u32, _b: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
${positions ? "@group(0) @binding(2) var<storage, read> positions: array<i32>;" : ""}

@compute @workgroup_size(${TEMPERATURE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${TEMPERATURE_WG}u + lid;
  if (i >= p.n) { return; }
  let r = i / p.width;
  let pos = ${positions ? "f32(positions[r])" : "f32(p.offset + r % p.seq_len)"};
  x[i] = x[i] * (log(1.0 + floor((pos + 1.0) / p.floor_scale)) * p.attn_scale + 1.0);
}
`;
}
