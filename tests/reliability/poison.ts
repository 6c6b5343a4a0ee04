/** Test helper: writes a NaN or an infinity into one element of a tensor of a safetensors file, in place. */
import { SafetensorsFile } from "../../lib/io/safetensors.ts";

/** The bit patterns of NaN and +Inf by safetensors dtype. */
const BITS = {
  nan: { F32: 0x7fc00000, BF16: 0x7fc0, F16: 0x7e00 },
  inf: { F32: 0x7f800000, BF16: 0x7f80, F16: 0x7c00 },
} as const;

/** Sets element `index` of tensor `name` in the safetensors file `path` to NaN or +Inf (F32, BF16, F16). */
export async function poisonTensor(
  path: string,
  name: string,
  value: "nan" | "inf",
  index = 0,
): Promise<void> {
  const f = await SafetensorsFile.open(path);
  const info = f.info(name);
  f.close();
  const bytes = await Deno.readFile(path);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const dtype = info.dtype as "F32" | "BF16" | "F16";
  const size = dtype === "F32" ? 4 : 2;
  const at = 8 + headerLength + info.begin + index * size;
  const view = new DataView(bytes.buffer);
  if (size === 4) view.setUint32(at, BITS[value][dtype], true);
  else view.setUint16(at, BITS[value][dtype], true);
  await Deno.writeFile(path, bytes);
}
