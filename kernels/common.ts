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

/** `fn bf16_at(words, i) -> f32` for bf16 pairs packed in u32 words, element 2i in the low half. */
export const BF16_UNPACK = /* wgsl */ `
fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }
`;
