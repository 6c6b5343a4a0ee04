/**
 * Dtype conversion kernels between f32, f16 and bf16, bit-exact and the same on every device: both tensors
 * are bound as `array<u32>` words and converted with integer operations (no reliance on how a driver rounds
 * or flushes), so f32 → f16/bf16 rounds to nearest even, overflows to ±inf, keeps f16 subnormals and NaNs
 * stay NaN (quiet, sign and top payload bits kept). f16 and bf16 are packed in pairs, element 2i in the low
 * half of word i. `shader-f16` is not needed.
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup. */
export const CONVERT_WG = 256;

/** Dtypes the conversion kernels read and write. */
export type FloatDType = "f32" | "f16" | "bf16";

/**
 * WGSL functions on raw bits: `half_of(word, e)` (element e's 16 bits from its word),
 * `f16_to_f32_bits`, `f32_to_f16_bits` (round to nearest even), `f32_to_bf16_bits` (round to nearest even).
 */
export const HALF_BITS = /* wgsl */ `
fn half_of(word: u32, e: u32) -> u32 {
  return (word >> ((e & 1u) * 16u)) & 0xffffu;
}

fn f16_to_f32_bits(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return sign | 0x7f800000u | (m << 13u); }       // inf, NaN (payload kept)
  if (e != 0u) { return sign | ((e + 112u) << 23u) | (m << 13u); }  // normal: rebias 15 -> 127
  if (m == 0u) { return sign; }                                      // ±0
  // subnormal m·2^-24 = 1.f·2^(b-24) with b the top set bit of m: a normal f32
  let b = 31u - countLeadingZeros(m);
  return sign | ((b + 103u) << 23u) | ((m << (23u - b)) & 0x7fffffu);
}

fn f32_to_f16_bits(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let e = (x >> 23u) & 0xffu;
  let m = x & 0x7fffffu;
  if (e == 0xffu) {
    if (m != 0u) { return sign | 0x7e00u | (m >> 13u); }  // NaN: quiet, top payload bits kept
    return sign | 0x7c00u;                                // inf
  }
  if (e >= 143u) { return sign | 0x7c00u; }  // |x| >= 2^16: overflow
  if (e >= 113u) {
    // normal f16 (exponent e − 112 in 1..30): drop 13 mantissa bits, round to nearest even; a carry out of
    // the mantissa bumps the exponent, and out of exponent 30 gives inf, both correctly.
    let h = sign | ((e - 112u) << 10u) | (m >> 13u);
    let rest = m & 0x1fffu;
    return h + select(0u, 1u, rest > 0x1000u || (rest == 0x1000u && (h & 1u) == 1u));
  }
  // subnormal f16 or zero: the value in units of 2^-24 is (1.m)·2^(e−126) = full >> (126 − e)
  let shift = 126u - e;
  if (e == 0u || shift > 24u) { return sign; }  // below half the smallest subnormal (ties at 2^-25 go to 0)
  let full = m | 0x800000u;
  let q = full >> shift;
  let rest = full & ((1u << shift) - 1u);
  let halfway = 1u << (shift - 1u);
  return sign | (q + select(0u, 1u, rest > halfway || (rest == halfway && (q & 1u) == 1u)));
}

fn f32_to_bf16_bits(x: u32) -> u32 {
  if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu) != 0u) {
    return (x >> 16u) | 0x40u;  // NaN: keep sign and top payload, force quiet
  }
  return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}
`;

/** WGSL: element e of a tensor of dtype `from`, as f32 bits (`fn load_f32_bits(e: u32) -> u32`). */
function loader(from: FloatDType): string {
  switch (from) {
    case "f32":
      return "fn load_f32_bits(e: u32) -> u32 { return src[e]; }";
    case "f16":
      return "fn load_f32_bits(e: u32) -> u32 { return f16_to_f32_bits(half_of(src[e >> 1u], e)); }";
    case "bf16":
      return "fn load_f32_bits(e: u32) -> u32 { return half_of(src[e >> 1u], e) << 16u; }";
  }
}

/**
 * The module converting `from` to `to`, entry point `main`. Bindings: params {n}, src words, dst words. A
 * 16-bit destination gets one invocation per word (two elements); with an odd count, the high half of the
 * last word is left as it was.
 */
export function convertModule(from: FloatDType, to: FloatDType): string {
  const head = /* wgsl */ `
struct Params { n: u32, _a: u32, _b: u32, _c: u32 }
${LINEAR_WORKGROUP}
${HALF_BITS}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
${loader(from)}
`;
  if (to === "f32") {
    return /* wgsl */ `${head}
@compute @workgroup_size(${CONVERT_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = linear_workgroup(wg, nwg) * ${CONVERT_WG}u + lid;
  if (e >= p.n) { return; }
  dst[e] = load_f32_bits(e);
}
`;
  }
  const encode = to === "f16" ? "f32_to_f16_bits" : "f32_to_bf16_bits";
  return /* wgsl */ `${head}
@compute @workgroup_size(${CONVERT_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let w = linear_workgroup(wg, nwg) * ${CONVERT_WG}u + lid;
  let e = 2u * w;
  if (e >= p.n) { return; }
  let lo = ${encode}(load_f32_bits(e));
  var hi = dst[w] >> 16u;
  if (e + 1u < p.n) { hi = ${encode}(load_f32_bits(e + 1u)); }
  dst[w] = lo | (hi << 16u);
}
`;
}
