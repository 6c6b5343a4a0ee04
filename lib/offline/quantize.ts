/**
 * Grouped symmetric integer quantization of hidden states for the offline feature files (./format.ts).
 *
 * A row of `cols` values is cut into groups of `groupSize` consecutive values; each group g gets one scale
 *
 *   s_g = roundUp_bf16(max_{i∈g} |x_i| / qmax),   qmax = 127 (8 bits) or 7 (4 bits)
 *
 * and each value the code q_i = clamp(round(x_i / s_g), −qmax, qmax), so that x̂_i = q_i · s_g and
 * |x_i − x̂_i| ≤ s_g / 2 ≈ max|x| / (2·qmax) within the group. Rounding the scale UP to a bf16 value (it is
 * stored as bf16) keeps every |x_i| / s_g ≤ qmax, so no code clips. A group of zeros gets s = 0, codes 0.
 *
 * Packing (little-endian, what the GPU decoder in lib/ops/features.ts reads as u32 words): 8 bits = one
 * two's-complement byte per value; 4 bits = two values per byte, value 2b in the low nibble of byte b and
 * 2b+1 in the high nibble, each stored as q + 8 (0..15).
 */

/** Bits per stored code. */
export type QuantBits = 8 | 4;

/** How a matrix is quantized. */
export interface QuantOptions {
  /** 8 or 4 bits per value. */
  bits: QuantBits;
  /** Consecutive values of a row sharing one scale; divides the row length. */
  groupSize: number;
}

/** A quantized [rows, cols] matrix. */
export interface QuantizedGroups {
  /** Packed codes, rows·cols·bits/8 bytes, row-major. */
  codes: Uint8Array<ArrayBuffer>;
  /** bf16 bits of the scales [rows, cols / groupSize]. */
  scaleBits: Uint16Array<ArrayBuffer>;
}

/** The largest code magnitude for `bits`. */
export function quantMax(bits: QuantBits): number {
  return bits === 8 ? 127 : 7;
}

/** Throws unless `cols` and `groupSize` suit `bits` (whole bytes and whole 32-bit words per group). */
export function checkQuantShape(cols: number, o: QuantOptions, what = "quantization"): void {
  const perWord = 32 / o.bits;
  if (!(Number.isInteger(o.groupSize) && o.groupSize > 0 && o.groupSize % perWord === 0)) {
    throw new RangeError(`${what}: group size ${o.groupSize} must be a positive multiple of ${perWord}`);
  }
  if (cols % o.groupSize !== 0) {
    throw new RangeError(`${what}: row length ${cols} is not a multiple of the group size ${o.groupSize}`);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The smallest bf16 value ≥ x (x ≥ 0, finite), as bf16 bits. */
function bf16BitsRoundedUp(x: number): number {
  f32[0] = x;
  if (f32[0] < x) u32[0] += 1; // f32 rounding went down: step up to the next f32 first
  const u = u32[0];
  return (u & 0xffff) === 0 ? u >>> 16 : ((u >>> 16) + 1) & 0xffff;
}

/** bf16 bits → the value. */
export function bf16BitsToFloat(bits: number): number {
  u32[0] = bits << 16;
  return f32[0];
}

/** Quantizes a finite row-major [rows, cols] matrix (see the module comment for the scheme). */
export function quantizeGroups(
  x: Float32Array,
  rows: number,
  cols: number,
  o: QuantOptions,
): QuantizedGroups {
  checkQuantShape(cols, o);
  if (x.length !== rows * cols) throw new RangeError(`quantize: ${x.length} values for [${rows}, ${cols}]`);
  const qmax = quantMax(o.bits), G = o.groupSize, groups = rows * cols / G;
  const codes = new Uint8Array(rows * cols * o.bits / 8);
  const scaleBits = new Uint16Array(groups);
  for (let g = 0; g < groups; g++) {
    const base = g * G;
    let absMax = 0;
    for (let i = 0; i < G; i++) absMax = Math.max(absMax, Math.abs(x[base + i]));
    const bits = absMax === 0 ? 0 : bf16BitsRoundedUp(absMax / qmax);
    scaleBits[g] = bits;
    const s = bf16BitsToFloat(bits);
    const inv = s === 0 ? 0 : 1 / s;
    for (let i = 0; i < G; i++) {
      const q = Math.max(-qmax, Math.min(qmax, Math.round(x[base + i] * inv)));
      const at = base + i;
      if (o.bits === 8) codes[at] = q & 0xff;
      else codes[at >> 1] |= (q + 8) << ((at & 1) * 4);
    }
  }
  return { codes, scaleBits };
}

/** The values a quantized matrix stands for (the CPU reference of the GPU decoder). */
export function dequantizeGroupsHost(
  q: QuantizedGroups,
  rows: number,
  cols: number,
  o: QuantOptions,
): Float32Array {
  checkQuantShape(cols, o);
  const out = new Float32Array(rows * cols);
  for (let at = 0; at < out.length; at++) {
    const s = bf16BitsToFloat(q.scaleBits[Math.floor(at / o.groupSize)]);
    const code = o.bits === 8 ? (q.codes[at] << 24) >> 24 : ((q.codes[at >> 1] >> ((at & 1) * 4)) & 15) - 8;
    out[at] = code * s;
  }
  return out;
}
