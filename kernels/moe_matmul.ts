/**
 * The grouped expert matmul of kernels/moe.ts (`matmul`: C[s, :] = A[row(s), :] · W_e(s)ᵀ (+ b_e(s)) over the
 * sorted slots' tiles, 8×8 invocations of 4 slots × 4 columns), with its operands read four elements per load:
 * A's rows as vec4 along K, W's rows along K ([E, N, K]: four bf16 in one vec2<u32>, eight MXFP4 codes in one
 * u32 with the e8m0 scale read once per 32) or its four columns at once ([E, K, N]). Mesa's CPU drivers load a
 * storage buffer one lane at a time whatever its width (kernels/texels.ts), so the loads, not the FMAs, bound
 * the scalar kernel there: this one issues 8 loads per 64 FMAs (MXFP4: 8.5 per 128) where it issued 8 per 16
 * (MXFP4: 12 per 16); an invocation left with one slot (a decoded token's expert) loads and multiplies that row
 * alone rather than four copies of it. Needs K % 4 == 0 (MXFP4: K % 32 == 0) and, with `kn`, N % 4 == 0;
 * lib/ops/moe.ts falls back to the scalar kernel otherwise.
 */
import { MOE_TILE_SLOTS } from "./moe.ts";
import type { ExpertFormat } from "./moe.ts";

/** WGSL: `load_w4(e)`, elements e..e+3 (e % 4 == 0) of the expert weights `w`, widened to f32. */
function weightLoader(t: Exclude<ExpertFormat, "mxfp4">): string {
  if (t === "f32") {
    return `@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
fn load_w4(e: u32) -> vec4<f32> { return w[e >> 2u]; }`;
  }
  if (t === "f16") {
    return `@group(0) @binding(2) var<storage, read> w: array<vec4<f16>>;
fn load_w4(e: u32) -> vec4<f32> { return vec4<f32>(w[e >> 2u]); }`;
  }
  // bf16 packed two per u32, element 2i in the low half (kernels/common.ts BF16_UNPACK).
  return `@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
fn load_w4(e: u32) -> vec4<f32> {
  let v = w[e >> 2u];
  return vec4<f32>(bitcast<f32>(v.x << 16u), bitcast<f32>(v.x & 0xffff0000u),
                   bitcast<f32>(v.y << 16u), bitcast<f32>(v.y & 0xffff0000u));
}`;
}

/**
 * WGSL: MXFP4's bindings (w: the `*_blocks` bytes as u32, eight codes each, element 8i + j in nibble j; scales:
 * the `*_scales` bytes, 2^(byte − 127) per 32 elements) and `fp4x4(bits)`, the e2m1 values of the four codes in
 * bits 0..15 (the FP4 table of kernels/moe.ts, computed rather than indexed): with k the code's low 3 bits
 * (exponent field e = k >> 1, mantissa bit m), |value| = (1 + m/2)·2^(e − 1) for e ≥ 1 is the f32 whose bits are
 * k << 22 plus those of 0.5 (0x3f000000), and k/2 for e = 0; the code's bit 3 is the sign bit.
 */
const MXFP4 = /* wgsl */ `
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
fn scale_of(e: u32) -> f32 {
  let byte = (scales[e >> 7u] >> (((e >> 5u) & 3u) * 8u)) & 0xffu;
  return exp2(f32(byte) - 127.0);
}
fn fp4x4(bits: u32) -> vec4<f32> {
  let c = vec4<u32>(bits, bits >> 4u, bits >> 8u, bits >> 12u);
  let k = c & vec4<u32>(7u);
  let normal = bitcast<vec4<f32>>((k << vec4<u32>(22u)) + vec4<u32>(0x3f000000u));
  let mag = select(normal, vec4<f32>(k) * 0.5, k < vec4<u32>(2u));
  return bitcast<vec4<f32>>(bitcast<vec4<u32>>(mag) | ((c & vec4<u32>(8u)) << vec4<u32>(28u)));
}`;

/**
 * WGSL: the K loop over the first `r` rows for weights [E, N, K] of an element type: acc[i][j] += A[row i,
 * k..k+3] · W[col j, k..k+3].
 */
const loopNk = (r: number) => /* wgsl */ `
  for (var kk = 0u; kk < K; kk += 4u) {
    var av: array<vec4<f32>, 4>;
    for (var i = 0u; i < ${r}u; i++) { av[i] = a[(arow[i] + kk) >> 2u]; }
    for (var j = 0u; j < 4u; j++) {
      let b = load_w4(wrow[j] + kk);
      for (var i = 0u; i < ${r}u; i++) { acc[i][j] += dot(av[i], b); }
    }
  }`;

/** WGSL: the K loop over the first `r` rows for weights [E, K, N]: acc[i] += Σ_t A[row i, k + t] · W[k + t, col0..]. */
const loopKn = (r: number) => /* wgsl */ `
  let wcol = e_local * K * p.n + min(col0, p.n - 4u);
  for (var kk = 0u; kk < K; kk += 4u) {
    let o = wcol + kk * p.n;
    let b0 = load_w4(o);
    let b1 = load_w4(o + p.n);
    let b2 = load_w4(o + 2u * p.n);
    let b3 = load_w4(o + 3u * p.n);
    for (var i = 0u; i < ${r}u; i++) {
      let av = a[(arow[i] + kk) >> 2u];
      acc[i] += av.x * b0 + av.y * b1 + av.z * b2 + av.w * b3;
    }
  }`;

/**
 * WGSL: the K loop over the first `r` rows for MXFP4 weights [E, N, K]: per 32 elements, the codes' dot
 * products times the scale.
 */
const loopMxfp4 = (r: number) => /* wgsl */ `
  for (var kb = 0u; kb < K; kb += 32u) {
    // Assigned, not just declared: naga hoists a declaration to the function's start, zeroing it once.
    var part = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k8 = kb; k8 < kb + 32u; k8 += 8u) {
      var lo: array<vec4<f32>, 4>;
      var hi: array<vec4<f32>, 4>;
      for (var i = 0u; i < ${r}u; i++) {
        lo[i] = a[(arow[i] + k8) >> 2u];
        hi[i] = a[(arow[i] + k8 + 4u) >> 2u];
      }
      for (var j = 0u; j < 4u; j++) {
        let word = w[(wrow[j] + k8) >> 3u];
        let wl = fp4x4(word);
        let wh = fp4x4(word >> 16u);
        for (var i = 0u; i < ${r}u; i++) { part[i][j] += dot(lo[i], wl) + dot(hi[i], wh); }
      }
    }
    let sc = vec4<f32>(scale_of(wrow[0] + kb), scale_of(wrow[1] + kb), scale_of(wrow[2] + kb),
                       scale_of(wrow[3] + kb));
    for (var i = 0u; i < ${r}u; i++) { acc[i] += part[i] * sc; }
  }`;

/**
 * The vectorised grouped matmul for expert weights stored as `t` ([count, N, K], or with `kn` [count, K, N]),
 * with each expert's bias [count, N] when `bias`. Grid, bindings and params as kernels/moe.ts `matmul`; a is
 * bound as vec4<f32> rows.
 */
export function matmulVec4(t: ExpertFormat, kn = false, bias = false): string {
  if (t === "mxfp4" && kn) throw new Error("moe matmul: MXFP4 experts are stored [N, K]");
  const loop = t === "mxfp4" ? loopMxfp4 : kn ? loopKn : loopNk;
  return /* wgsl */ `${t === "f16" ? "enable f16;" : ""}
struct Params { n: u32, kdim: u32, gather: u32, first: u32, count: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
${t === "mxfp4" ? MXFP4 : weightLoader(t)}
@group(0) @binding(3) var<storage, read> sortedRow: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
${bias ? "@group(0) @binding(7) var<storage, read> bias: array<f32>;" : ""}

@compute @workgroup_size(8, 8)
fn grouped_matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
${MOE_TILE_SLOTS}  let e_local = tile.x - p.first;
  var wrow: array<u32, 4>;
  for (var j = 0u; j < 4u; j++) { wrow[j] = (e_local * p.n + min(col0 + j, p.n - 1u)) * K; }
  var acc: array<vec4<f32>, 4>;
  // A lone slot (a decoded token's expert) loads and multiplies its one row, not four copies of it.
  if (tile.z - tile.y - li.y * 4u == 1u) {
${loop(1)}
  } else {
${loop(4)}
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
