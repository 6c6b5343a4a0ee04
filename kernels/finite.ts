/**
 * The non-finite count of a weight tensor, read from its bits: an IEEE float is NaN or ±Inf exactly when its
 * exponent field is all ones (f32: bits 23-30, mask 0x7f800000; bf16: bits 7-14 of its half-word, 0x7f80;
 * f16: bits 10-14, 0x7c00). The test is on the bits, not on `x != x`, because WGSL lets a compiler assume
 * floats are finite and fold such comparisons away. One invocation per u32 word (one f32, or two 16-bit
 * values, element 2i in the low half); a word with non-finite values adds their number to `counts[slot]`
 * atomically (rare, so the atomics cost nothing on finite weights).
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Workgroup size of the count kernel. */
export const FINITE_WG = 256;

/** Element formats of the count kernel's `format` parameter. */
export const FINITE_FORMAT = { f32: 0, bf16: 1, f16: 2 } as const;

/** Entry point `count_nonfinite`: counts[slot] += non-finite elements among the tensor's `n_elems`. */
export const countNonFinite = /* wgsl */ `
struct Params { n_words: u32, n_elems: u32, format: u32, slot: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;

fn exponent_all_ones(h: u32, mask: u32) -> u32 {
  return select(0u, 1u, (h & mask) == mask);
}

@compute @workgroup_size(${FINITE_WG})
fn count_nonfinite(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${FINITE_WG}u + lid;
  if (i >= p.n_words) { return; }
  let w = x[i];
  var bad = 0u;
  if (p.format == ${FINITE_FORMAT.f32}u) {
    bad = exponent_all_ones(w, 0x7f800000u);
  } else {
    let mask = select(0x7c00u, 0x7f80u, p.format == ${FINITE_FORMAT.bf16}u);
    bad = exponent_all_ones(w & 0xffffu, mask);
    // The high half of the last word of an odd-sized tensor is padding, not an element.
    if (2u * i + 1u < p.n_elems) { bad += exponent_all_ones(w >> 16u, mask); }
  }
  if (bad > 0u) { atomicAdd(&counts[p.slot], bad); }
}
`;
