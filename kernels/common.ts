/**
 * WGSL snippets shared by kernels. Dispatches fold large grids into x and y (see `foldGrid` in
 * lib/gpu/program.ts); `LINEAR_WORKGROUP` recovers the linear workgroup index.
 */

/** `fn linear_workgroup(wg, nwg) -> u32`: the flat index of a workgroup in a folded 2-D grid. */
export const LINEAR_WORKGROUP = /* wgsl */ `
fn linear_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wg.x + wg.y * nwg.x;
}
`;

/**
 * `fn bf16_lo(w) -> f32` and `fn bf16_hi(w) -> f32`: the two bf16 values packed in one u32 word, element 2i
 * in the low half (`bf16_lo`) and element 2i + 1 in the high half (`bf16_hi`), widened to f32 exactly.
 */
export const BF16_UNPACK = /* wgsl */ `
fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }
`;
