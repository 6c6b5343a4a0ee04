/**
 * Packing a tensor into an rgba32f texture (kernels/texels.ts) for the kernels that read it many times on
 * Mesa's CPU drivers, where a texel fetch costs a fraction of a storage load: the register-tiled matmul and
 * the register-row attention kernels.
 */
import * as K from "../../kernels/texels.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";

/** Whether `t` can be packed: f32, f16 or bf16, a whole number of texels, at most MAX_OPERAND_TEXELS of them. */
export function fitsTexture(t: Tensor): boolean {
  const type = t.dtype as string;
  return (type === "f32" || type === "f16" || type === "bf16") && t.size % 4 === 0 &&
    t.size / 4 <= K.MAX_OPERAND_TEXELS;
}

/**
 * Records the packing of `t` into the program's texture for `role` (shared by the callers of one role and
 * size, like `Program.transient`: it holds `t` until the next packing of that role), widened to f32, and
 * returns a view of it to bind as `texture_2d<f32>`. (A copyBufferToTexture of an f32 tensor measured slower
 * on lavapipe than this dispatch: a 1024³ matmul with both operands copied took 105 ms, packed 80 ms.)
 */
export async function packTexels(p: Program, t: Tensor, role: string): Promise<GPUTextureView> {
  const texels = t.size / 4;
  const rowTexels = Math.min(texels, K.TEXTURE_ROW_TEXELS);
  const texture = p.transientTexture(role, rowTexels, Math.ceil(texels / rowTexels));
  const view = p.textureView(texture, 16 * texels);
  await p.add(
    {
      name: `texels.pack_${t.dtype}`,
      code: K.packTexelsKernel(t.dtype as K.TexelSource),
      entryPoint: "main",
      f16: t.dtype === "f16",
    },
    [params(["u32", texels]), t, view],
    Math.ceil(texels / K.PACK_WG),
  );
  return view;
}
