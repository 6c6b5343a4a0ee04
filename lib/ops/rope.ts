/**
 * Rotary position embedding (RoPE) as in Hugging Face Llama: half-rotation, rotate_half(x) = cat(−x[hd/2:],
 * x[:hd/2]), x' = x·cos + rotate_half(x)·sin with cos/sin = cat(freqs, freqs), freqs = outer(pos, inv_freq).
 *
 * The table is built on the CPU ({@link ropeTable}) for every `rope_scaling` variant SpecForge's draft
 * supports (SpecForge `specforge/modeling/draft/llama3_eagle.py` `LlamaAttention._init_rope` and its rotary
 * classes; transformers `modeling_rope_utils.py` for the defaults): default, linear, dynamic NTK, llama3,
 * yarn. inv_freq and the angles are computed in f32 (as PyTorch computes them), cos/sin in f32 with yarn's
 * attention factor folded in. The variant and its parameters are a {@link RopeScaling}, which
 * lib/models/config.ts parses, validates and defaults from config.json. The kernels only rotate:
 * {@link ropeForward} by +angle, {@link ropeBackward} by −angle (the transpose, also for a yarn table whose
 * rotation is scaled).
 */
import * as K from "../../kernels/rope.ts";
import { ShapeError } from "../gpu/errors.ts";
import { type Binding, params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectSameShape } from "./check.ts";

/**
 * RoPE frequency scaling (transformers' `rope_type`), parsed from config.json by lib/models/config.ts
 * (`parseRopeScaling`); `factor` etc. as in config.json. The formulas are those of {@link ropeInvFreq} and
 * {@link ropeTable}.
 */
export type RopeScaling =
  | { type: "default" }
  | { type: "linear"; factor: number }
  | { type: "dynamic"; factor: number; originalMaxPositionEmbeddings: number }
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  }
  | {
    type: "yarn";
    factor: number;
    originalMaxPositionEmbeddings: number;
    betaFast: number;
    betaSlow: number;
    /** `mscale` / `mscale_all_dim` (DeepSeek style), null when absent. */
    mscale: number | null;
    mscaleAllDim: number | null;
    /** Explicit `attention_factor`, null when it is to be derived from the factor. */
    attentionFactor: number | null;
    /** Round the correction range to integers (transformers' default true). */
    truncate: boolean;
  }
  | {
    /** Phi-3's LongRoPE ("su"): per-frequency factors, short ones within the original context. */
    type: "longrope";
    /** Divisors of the rotary frequencies for sequences within originalMaxPositionEmbeddings ([r/2]). */
    shortFactor: number[];
    /** Their counterparts beyond it ([r/2]); Eaglet's tables cover the original context only. */
    longFactor: number[];
    /** The pretrained context (Phi-3: the top-level original_max_position_embeddings). */
    originalMaxPositionEmbeddings: number;
    /** max_position_embeddings / original (or rope_scaling.factor), for the default attention factor. */
    factor: number;
    /** Explicit `attention_factor`, null when derived: √(1 + ln factor / ln original) when factor > 1. */
    attentionFactor: number | null;
  };

/**
 * The rotary fields of a model config, already validated and defaulted by lib/models/config.ts: a
 * `TargetConfig` fits as is, and `parseRopeScaling` turns a bare config.json `rope_scaling` object into
 * `ropeScaling`.
 */
export interface RopeConfig {
  /** `rope_theta`, the base of the frequencies. */
  ropeTheta: number;
  /** The `rope_scaling` variant and its parameters; `{ type: "default" }` for plain RoPE. */
  ropeScaling: RopeScaling;
  /** `max_position_embeddings` (dynamic NTK scales only beyond it). */
  maxPositionEmbeddings: number;
}

/** Options of {@link ropeForward} and {@link ropeBackward}. */
export interface RopeOptions {
  /** Position of time step t is t + positionOffset (default 0). */
  positionOffset?: number;
}

/** The rope_type of a config ("default" for plain RoPE). */
export function ropeType(cfg: RopeConfig): RopeScaling["type"] {
  return cfg.ropeScaling.type;
}

const f32 = Math.fround;

/** inv_freq_i = 1/base^(2i/hd) in f32, as PyTorch computes `1.0 / base ** (arange(0, hd, 2).float() / hd)`. */
function plainInvFreq(base: number, headDim: number): Float32Array {
  const inv = new Float32Array(headDim / 2);
  for (let i = 0; i < inv.length; i++) inv[i] = f32(1 / f32(Math.pow(f32(base), f32((2 * i) / headDim))));
  return inv;
}

function checkHeadDim(headDim: number): void {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new ShapeError(`rope: head dim ${headDim} must be a positive even integer`);
  }
}

/**
 * The rotary frequencies inv_freq[hd/2] (f32) of `cfg`'s rope_type. `seqLen` matters only for dynamic NTK,
 * which raises the base when seqLen > max_position_embeddings:
 * base' = base·(factor·seqLen/max_pos − (factor − 1))^(hd/(hd−2)). Linear scaling divides the frequencies by
 * factor (the same angles as dividing the positions).
 */
export function ropeInvFreq(
  cfg: RopeConfig,
  headDim: number,
  seqLen = cfg.maxPositionEmbeddings,
): Float32Array {
  checkHeadDim(headDim);
  const base = cfg.ropeTheta;
  const s = cfg.ropeScaling;
  switch (s.type) {
    case "default":
      return plainInvFreq(base, headDim);
    case "linear":
      return plainInvFreq(base, headDim).map((f) => f32(f / s.factor));
    case "dynamic": {
      // Like transformers, the threshold is max_position_embeddings (original_max_position_embeddings, which
      // config.ts defaults to it, is not used by this variant).
      const maxPos = cfg.maxPositionEmbeddings;
      if (seqLen <= maxPos) return plainInvFreq(base, headDim);
      const scaled = base * Math.pow(s.factor * seqLen / maxPos - (s.factor - 1), headDim / (headDim - 2));
      return plainInvFreq(scaled, headDim);
    }
    case "llama3": {
      // Wavelengths shorter than orig/high_freq_factor keep their frequency, longer than orig/low_freq_factor
      // are divided by factor, and in between blend linearly in orig/wavelength.
      const { factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig } = s;
      const lowWavelen = orig / low, highWavelen = orig / high;
      return plainInvFreq(base, headDim).map((f) => {
        const wavelen = 2 * Math.PI / f;
        if (wavelen < highWavelen) return f;
        if (wavelen > lowWavelen) return f32(f / factor);
        const smooth = high === low ? 0 : (orig / wavelen - low) / (high - low);
        return f32((1 - smooth) * f / factor + smooth * f);
      });
    }
    case "yarn": {
      // Dimensions rotating more than beta_fast times over the original context keep their frequency
      // (extrapolation), fewer than beta_slow times are divided by factor (interpolation), ramp in between.
      // dim(r) = hd·ln(orig/(r·2π))/(2·ln base); with `truncate` (the default) the range is widened to
      // integers, floor(dim(beta_fast)) .. ceil(dim(beta_slow)), then clamped to [0, hd−1].
      const { factor, originalMaxPositionEmbeddings: orig, truncate } = s;
      const correctionDim = (rotations: number) =>
        headDim * Math.log(orig / (rotations * 2 * Math.PI)) / (2 * Math.log(base));
      const fast = correctionDim(s.betaFast), slow = correctionDim(s.betaSlow);
      const low = Math.max(truncate ? Math.floor(fast) : fast, 0);
      let high = Math.min(truncate ? Math.ceil(slow) : slow, headDim - 1);
      if (low === high) high += 0.001;
      return plainInvFreq(base, headDim).map((extrapolated, i) => {
        const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
        return f32(extrapolated / factor * ramp + extrapolated * (1 - ramp));
      });
    }
    case "longrope": {
      // transformers' `_compute_longrope_parameters` within the original context: inv_freq_i =
      // 1 / (short_factor_i · base^(2i/r)), in f32.
      if (s.shortFactor.length !== headDim / 2) {
        throw new ShapeError(
          `rope: longrope short_factor has ${s.shortFactor.length} entries, the rotary width ${headDim} needs ${
            headDim / 2
          }`,
        );
      }
      const plain = new Float32Array(headDim / 2);
      for (let i = 0; i < plain.length; i++) {
        plain[i] = f32(1 / f32(f32(s.shortFactor[i]) * f32(Math.pow(f32(base), f32((2 * i) / headDim)))));
      }
      return plain;
    }
    default: {
      const unknown: never = s;
      throw new Error(`rope: unsupported rope_scaling ${JSON.stringify(unknown)}`);
    }
  }
}

/**
 * The factor cos and sin are multiplied by: 1 except for yarn, where it is rope_scaling.attention_factor if
 * given, else m(factor, mscale)/m(factor, mscale_all_dim) when both are given and non-zero, else
 * m(factor, 1) = 0.1·ln(factor) + 1, with m(s, μ) = 1 if s ≤ 1 else 0.1·μ·ln s + 1 (transformers'
 * `_compute_yarn_parameters`), and longrope, where it is attention_factor if given, else
 * √(1 + ln factor / ln original) for factor > 1 (`_compute_longrope_parameters`).
 */
export function ropeAttentionFactor(cfg: RopeConfig): number {
  const s = cfg.ropeScaling;
  if (s.type === "longrope") {
    if (s.attentionFactor !== null) return s.attentionFactor;
    return s.factor <= 1 ? 1 : Math.sqrt(1 + Math.log(s.factor) / Math.log(s.originalMaxPositionEmbeddings));
  }
  if (s.type !== "yarn") return 1;
  if (s.attentionFactor !== null) return s.attentionFactor;
  const m = (scale: number, mu: number) => scale <= 1 ? 1 : 0.1 * mu * Math.log(scale) + 1;
  return s.mscale && s.mscaleAllDim ? m(s.factor, s.mscale) / m(s.factor, s.mscaleAllDim) : m(s.factor, 1);
}

/**
 * The cos and sin tables, Float32Array [maxPositions, headDim/2] (row pos = cos/sin(pos·inv_freq), angles
 * rounded to f32 as PyTorch computes them), times the yarn attention factor. `seqLen` (default maxPositions)
 * is the sequence length dynamic NTK scales for.
 */
export function ropeTable(
  cfg: RopeConfig,
  headDim: number,
  maxPositions: number,
  seqLen = maxPositions,
): { cos: Float32Array<ArrayBuffer>; sin: Float32Array<ArrayBuffer> } {
  const inv = ropeInvFreq(cfg, headDim, seqLen);
  const scale = f32(ropeAttentionFactor(cfg));
  const half = headDim / 2;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let pos = 0; pos < maxPositions; pos++) {
    for (let j = 0; j < half; j++) {
      const angle = f32(pos * inv[j]);
      cos[pos * half + j] = f32(Math.cos(angle)) * scale;
      sin[pos * half + j] = f32(Math.sin(angle)) * scale;
    }
  }
  return { cos, sin };
}

async function rotate(
  op: string,
  entryPoint: "forward" | "backward",
  p: Program,
  x: Tensor,
  out: Tensor,
  cos: Tensor,
  sin: Tensor,
  positionOffset: number,
): Promise<void> {
  for (const [name, t] of [["x", x], ["out", out], ["cos", cos], ["sin", sin]] as const) {
    expectDtype(op, name, t, "f32");
  }
  if (x.shape.length !== 4) {
    throw new ShapeError(
      `${op}: x (${x.label}) has shape [${x.shape}], expected [batch, seq, heads, headDim]`,
    );
  }
  expectSameShape(op, "x", x, "out", out);
  const [batch, seq, heads, headDim] = x.shape;
  checkHeadDim(headDim);
  // The table's width is half the rotary width: hd/2, or fewer columns for a partial RoPE.
  const half = cos.shape[1];
  if (cos.shape.length !== 2 || !(half >= 1 && half <= headDim / 2)) {
    throw new ShapeError(
      `${op}: cos (${cos.label}) has shape [${cos.shape}], expected [positions, 1..${headDim / 2}]`,
    );
  }
  expectSameShape(op, "cos", cos, "sin", sin);
  if (!Number.isInteger(positionOffset) || positionOffset < 0) {
    throw new ShapeError(`${op}: positionOffset ${positionOffset} must be a non-negative integer`);
  }
  const tablePositions = cos.shape[0];
  if (positionOffset + seq > tablePositions) {
    throw new ShapeError(
      `${op}: positions up to ${
        positionOffset + seq - 1
      } (offset ${positionOffset} + seq ${seq}) exceed the ` +
        `table's ${tablePositions} positions`,
    );
  }
  const units = batch * seq * heads * (headDim / 2);
  // Four units per invocation (vec4 loads, the same products) where every count and offset allows it.
  const start = Math.min(x.byteOffset, out.byteOffset);
  const offsets = x.buffer === out.buffer
    ? [(x.byteOffset - start) / 4, (out.byteOffset - start) / 4]
    : [0, 0];
  const w = [headDim / 2, half, ...offsets].every((n) => n % 4 === 0) ? 4 : 1;
  const fields = (inOffset: number, outOffset: number) =>
    params(
      ["u32", units / w],
      ["u32", seq],
      ["u32", heads],
      ["u32", half / w],
      ["u32", positionOffset],
      ["u32", inOffset / w],
      ["u32", outOffset / w],
      ["u32", headDim / 2 / w],
    );
  const workgroups = Math.ceil(units / w / K.ROPE_WG);
  const name = `rope.${entryPoint}${w === 4 ? ".vec4" : ""}`;
  if (x.buffer !== out.buffer) {
    const code = w === 4 ? K.separateVec4 : K.separate;
    await p.add({ name, code, entryPoint }, [fields(0, 0), x, out, cos, sin], workgroups);
    return;
  }
  // Same buffer: bind the range covering both once, read-write (in place, or two ranges of an arena).
  const xEnd = x.byteOffset + x.byteLength, outEnd = out.byteOffset + out.byteLength;
  const overlaps = x.byteOffset < outEnd && out.byteOffset < xEnd;
  if (overlaps && x.byteOffset !== out.byteOffset) {
    throw new ShapeError(
      `${op}: x (${x.label}) and out (${out.label}) overlap without being the same tensor`,
    );
  }
  const range: Binding = { buffer: x.buffer, offset: start, size: Math.max(xEnd, outEnd) - start };
  await p.add(
    { name: `${name}.aliased`, code: w === 4 ? K.aliasedVec4 : K.aliased, entryPoint },
    [fields(offsets[0], offsets[1]), range, cos, sin],
    workgroups,
  );
}

/**
 * Records out = x·cos + rotate_half(x)·sin for x[B, T, nheads, hd] at positions t + positionOffset, with
 * cos/sin f32 tensors [maxPositions, r/2] from {@link ropeTable}(cfg, r): r = hd, or a partial rotary width
 * r < hd whose first r columns of each head rotate and the rest pass through. `out` may be `x` (in place).
 * An error if positionOffset + T exceeds the table.
 */
export function ropeForward(
  p: Program,
  x: Tensor,
  out: Tensor,
  cos: Tensor,
  sin: Tensor,
  { positionOffset = 0 }: RopeOptions = {},
): Promise<void> {
  return rotate("ropeForward", "forward", p, x, out, cos, sin, positionOffset);
}

/** Records the backward pass of {@link ropeForward}: dx = rotation of dout by −angle; dx may be dout. */
export function ropeBackward(
  p: Program,
  dout: Tensor,
  dx: Tensor,
  cos: Tensor,
  sin: Tensor,
  { positionOffset = 0 }: RopeOptions = {},
): Promise<void> {
  return rotate("ropeBackward", "backward", p, dout, dx, cos, sin, positionOffset);
}

/** Shape [B, T, nheads, hd] of the CPU references. */
export type RopeShape = [batch: number, seq: number, heads: number, headDim: number];

function rotateCpu(
  x: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  [batch, seq, heads, headDim]: RopeShape,
  positionOffset: number,
  direction: 1 | -1,
  rotaryDim: number,
): Float64Array {
  const half = rotaryDim / 2;
  const out = Float64Array.from(x); // columns ≥ rotaryDim pass through
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seq; t++) {
      for (let h = 0; h < heads; h++) {
        const e = ((b * seq + t) * heads + h) * headDim;
        for (let j = 0; j < half; j++) {
          const c = cos[(t + positionOffset) * half + j];
          const s = direction * sin[(t + positionOffset) * half + j];
          const x1 = x[e + j], x2 = x[e + j + half];
          out[e + j] = x1 * c - x2 * s;
          out[e + j + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  return out;
}

/**
 * CPU reference of {@link ropeForward} (f64): x·cos + rotate_half(x)·sin over the first `rotaryDim` columns
 * of each head (default all; the table then has rotaryDim/2 columns).
 */
export function ropeCpu(
  x: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  shape: RopeShape,
  positionOffset = 0,
  rotaryDim = shape[3],
): Float64Array {
  return rotateCpu(x, cos, sin, shape, positionOffset, 1, rotaryDim);
}

/** CPU reference of {@link ropeBackward} (f64): dout·cos − rotate_half(dout·sin), the transpose. */
export function ropeBackwardCpu(
  dout: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  shape: RopeShape,
  positionOffset = 0,
  rotaryDim = shape[3],
): Float64Array {
  return rotateCpu(dout, cos, sin, shape, positionOffset, -1, rotaryDim);
}
