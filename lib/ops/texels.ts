/**
 * Packing a tensor into an rgba32f texture (kernels/texels.ts) for the kernels that read it many times on
 * Mesa's CPU drivers, where a texture load costs a fraction of a storage load: the register-tiled matmul and
 * the register-row attention kernels.
 */
import * as K from "../../kernels/texels.ts";
import { params, type Program } from "../gpu/program.ts";
import { rangeOf } from "../gpu/texture_contents.ts";
import type { Tensor } from "../tensor.ts";

/** Whether `t` can be packed: f32, f16 or bf16, a whole number of texels, at most MAX_OPERAND_TEXELS of them. */
export function fitsTexture(t: Tensor): boolean {
  const type = t.dtype as string;
  return (type === "f32" || type === "f16" || type === "bf16") && t.size % 4 === 0 &&
    t.size / 4 <= K.MAX_OPERAND_TEXELS;
}

/**
 * Returns a view of `t` packed into an rgba32f texture, widened to f32, to bind as a read-only storage
 * texture, recording the packing only when no texture of the program already holds `t` unchanged, whatever
 * role it was packed for (lib/gpu/texture_contents.ts: packed earlier in the program and neither written nor
 * displaced since; the values are then the same bit for bit). The texture packed into is `t`'s own when the
 * program declared `t` read-only (`Program.readOnly`: packed once per run), else the program's texture for
 * `role` and size, shared like `Program.transient` (it holds `t` until the next packing of that role). (A
 * copyBufferToTexture of an f32 tensor measured slower on lavapipe than this dispatch: a 1024³ matmul with
 * both operands copied took 105 ms, packed 80 ms.)
 */
export async function packTexels(p: Program, t: Tensor, role: string): Promise<GPUTextureView> {
  const texels = t.size / 4;
  const rowTexels = Math.min(texels, K.TEXTURE_ROW_TEXELS);
  const rows = Math.ceil(texels / rowTexels);
  const range = rangeOf(t.binding());
  // Packed already for another role and unchanged since: the same texels.
  const held = p.textures.holder(range, t.dtype);
  if (held) return p.textureView(held, 16 * texels);
  const texture = p.textures.isReadOnly(range)
    ? p.ownTexture(t, rowTexels, rows)
    : p.transientTexture(role, rowTexels, rows);
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
  p.textures.packed(texture, range, t.dtype);
  return view;
}
