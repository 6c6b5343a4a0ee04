/**
 * Dtype conversion between f32, f16 and bf16 (bf16 and f16 packed in pairs in u32 words), for loading
 * weights (bf16/f16 → f32) and exporting them (f32 → bf16/f16, round to nearest even, NaN kept NaN). The
 * kernels work on raw bits with integer operations, so results are bit-exact on every device, with or
 * without `shader-f16`. The CPU reference uses lib/tensor.ts's host conversions.
 */
import * as K from "../../kernels/convert.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { decodeHost, encodeHost, type Tensor } from "../tensor.ts";
import { expectDtype, expectSameShape } from "./check.ts";

export type { FloatDType } from "../../kernels/convert.ts";
type FloatDType = K.FloatDType;

/**
 * Records dst = src converted to dst's dtype (both f32, f16 or bf16, the same shape; the same dtype copies).
 * With an odd element count and a 16-bit dst, the unused high half of dst's last word is left unchanged.
 */
export async function convert(p: Program, src: Tensor, dst: Tensor): Promise<void> {
  const op = "convert";
  expectDtype(op, "src", src, "f32", "f16", "bf16");
  expectDtype(op, "dst", dst, "f32", "f16", "bf16");
  expectSameShape(op, "src", src, "dst", dst);
  if (src.buffer === dst.buffer) {
    throw new ShapeError(`${op}: src (${src.label}) and dst (${dst.label}) share a buffer`);
  }
  const n = src.size;
  if (n === 0) return;
  const from = src.dtype as FloatDType, to = dst.dtype as FloatDType;
  const invocations = to === "f32" ? n : Math.ceil(n / 2);
  await p.add(
    { name: `convert.${from}_to_${to}`, code: K.convertModule(from, to), entryPoint: "main" },
    [params(["u32", n]), src, dst],
    Math.ceil(invocations / K.CONVERT_WG),
  );
}

/**
 * CPU reference: `src` as stored (f32 values, or the 16-bit patterns of f16/bf16) converted to `to`, as
 * stored (Float32Array for f32, 16-bit patterns otherwise).
 */
export function convertCpu(
  src: Float32Array | Uint16Array,
  from: FloatDType,
  to: FloatDType,
): Float32Array | Uint16Array {
  const values = from === "f32"
    ? Float32Array.from(src)
    : decodeHost(Uint16Array.from(src).buffer, from, src.length) as Float32Array<ArrayBuffer>;
  if (to === "f32") return values;
  return encodeHost(values, to) as Uint16Array;
}
