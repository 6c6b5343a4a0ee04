/**
 * Tensors as rgba32f textures, for kernels on Mesa's CPU drivers: there a storage-buffer load walks the 8 lanes
 * of a SIMD register one scalar at a time through the stack (measured on a Zen 3 host: about 585 core cycles
 * per vec4 per 8 lanes), while a texture load gathers in registers (a sampled fetch about 75). A kernel that
 * reads a tensor many times reads it faster from a texture packed once by {@link packTexelsKernel}, bound as a
 * read-only storage texture ({@link texelBinding}).
 */

/** Storage types a tensor can be packed from (widened to f32). */
export type TexelSource = "f32" | "f16" | "bf16";

/**
 * Texels per row of an operand texture: element e of a packed tensor is component e % 4 of texel
 * (t % W, t / W) with t = e / 4. 8192 is WebGPU's default maxTextureDimension2D, so every device has it.
 */
export const TEXTURE_ROW_TEXELS = 8192;

/** The most texels an operand texture holds (8192 rows of {@link TEXTURE_ROW_TEXELS}). */
export const MAX_OPERAND_TEXELS = TEXTURE_ROW_TEXELS * 8192;

/** Workgroup size of {@link packTexelsKernel}. */
export const PACK_WG = 64;

/**
 * WGSL: binding `binding` as a packed operand texture `name`, read-only storage: on Mesa's CPU drivers an
 * image load is cheaper than a sampled texel fetch (no mip level, no sampler path): the register-tiled
 * matmul at 512×1024×1024 ran at 41-56 GFLOP/s with read-only storage textures against 34-42 with sampled
 * ones (lavapipe, 2 cores), reading the same texels.
 */
export function texelBinding(name: string, binding: number): string {
  return `@group(0) @binding(${binding}) var ${name}: texture_storage_2d<rgba32float, read>;`;
}

/** WGSL: the texel of texture `name` at linear texel index `index` (an expression), as vec4<f32>. */
export function texelLoad(name: string, index: string): string {
  return `textureLoad(${name}, texel_at(${index}))`;
}

/** WGSL: `texel_at(t)`, the 2-D coordinates of linear texel t; include once in a shader that fetches texels. */
export const TEXEL_AT = /* wgsl */ `
fn texel_at(t: u32) -> vec2<u32> {
  return vec2<u32>(t & ${TEXTURE_ROW_TEXELS - 1}u, t >> ${Math.log2(TEXTURE_ROW_TEXELS)}u);
}
`;

/**
 * Packs `count` texels (4 elements each) of a tensor of storage type `type` into an rgba32f texture, widened
 * to f32, in the layout of {@link TEXTURE_ROW_TEXELS}. The grid is folded (`wg.x + wg.y·nwg.x`).
 */
export function packTexelsKernel(type: TexelSource): string {
  const src = type === "f32"
    ? `@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
fn texel(t: u32) -> vec4<f32> { return src[t]; }`
    : type === "f16"
    ? `@group(0) @binding(1) var<storage, read> src: array<vec4<f16>>;
fn texel(t: u32) -> vec4<f32> { return vec4<f32>(src[t]); }`
    : `@group(0) @binding(1) var<storage, read> src: array<vec2<u32>>;
fn texel(t: u32) -> vec4<f32> {
  let w = src[t];
  return vec4<f32>(bitcast<f32>(w.x << 16u), bitcast<f32>(w.x & 0xffff0000u),
                   bitcast<f32>(w.y << 16u), bitcast<f32>(w.y & 0xffff0000u));
}`;
  return /* wgsl */ `
struct Params { count: u32 }
@group(0) @binding(0) var<uniform> p: Params;
${src}
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;
${TEXEL_AT}
@compute @workgroup_size(${PACK_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let t = (wg.x + wg.y * nwg.x) * ${PACK_WG}u + lid;
  if (t >= p.count) { return; }
  textureStore(dst, texel_at(t), texel(t));
}
`;
}
