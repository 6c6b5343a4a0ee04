/**
 * Multi-head latent attention (MLA) of a DeepSeek-V3 / Kimi-K2 target (DeepSeek-V2 paper §2.1, DeepSeek-V3
 * paper §2.1.1; transformers `modeling_deepseek_v3.py` `DeepseekV3Attention`), forward only:
 *
 *   q = q_b_proj(rmsnorm(q_a_proj(n)))            (q_proj(n) when q_lora_rank is null), per head [q_nope | q_pe]
 *   c = kv_a_layernorm(kv_a_proj_with_mqa(n)[:r])  the compressed latent [r = kv_lora_rank]
 *   k_pe = kv_a_proj_with_mqa(n)[r:]              [rope], one for every head
 *   [k_nope | v] = kv_b_proj(c) per head;  k = [k_nope | rope(k_pe)],  q = [q_nope | rope(q_pe)]
 *   out = o_proj(softmax(scale·q·kᵀ)·v),  scale = (nope + rope)^−½ · mscale² (`yarn_apply_mscale`)
 *
 * The q_a and kv_a norms use DeepseekV3RMSNorm's default eps 1e−6 (transformers builds them without
 * rms_norm_eps). Layout here: q's rows are reordered on load so that each head is [q_pe | q_nope] (and the
 * rope rows of q and k_pe even first when `rope_interleave`: DeepSeek's pairs (2i, 2i + 1),
 * `apply_rotary_pos_emb_interleave`, become the rotate-half pairs (i, i + rope/2)); keys are assembled as
 * [k_pe | k_nope]. q·k sums the same products, so the partial rotate-half RoPE of the first `rope` columns
 * (lib/ops/rope.ts, lib/ops/tree_attention.ts `ropeAtPositions`) applies unchanged.
 *
 * The attention kernels take one head width for q, k and v; v_head_dim (128 in DeepSeek-V3) is below the q/k
 * width (192), so v is padded with zero columns to it and the attention output's extra columns, zero, are
 * dropped before o_proj (`mlaOutput`): exact, at the cost of a third more v traffic than a kernel variant with
 * its own v width would move.
 *
 * Caching: the KV cache holds what transformers' cache holds, the latent c [r] and the rotated k_pe [rope] per
 * position (DeepSeek-V2 §2.1.2's compressed cache: r + rope values instead of nh·(nope + rope + v)), in the
 * cache's `k` (k_pe [.., 1, rope]) and `v` (c [.., 1, r]) tensors; each pass expands every cached position through kv_b_proj into per-head keys and
 * values ({@link mlaExpand}) before attending, as transformers' `expand_kv` does. The absorbed form (kv_b_proj
 * folded into q and o_proj, DeepSeek's inference) computes the same scores with different rounding and needs an
 * attention whose v width differs from q/k's; expanding keeps the outputs equal to transformers' to its rounding.
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import type { MlaConfig, TargetConfig } from "./config.ts";
import { linear } from "../ops/matmul.ts";
import { rmsnormForward } from "../ops/rmsnorm.ts";
import { copyStrided, fill } from "../ops/elementwise.ts";

/** DeepseekV3RMSNorm's default eps, which `q_a_layernorm` and `kv_a_layernorm` keep. */
export const MLA_LATENT_NORM_EPS = 1e-6;

/** A layer's MLA weights on the device (null fields: not an MLA layer, or no q LoRA). */
export interface MlaWeights {
  /** q_b_proj [nh·(rope + nope), q_lora_rank] or q_proj [.., H], rows reordered ({@link mlaQRowOrder}). */
  q: Tensor;
  /** q_a_proj [q_lora_rank, H] and q_a_layernorm f32 [q_lora_rank]; null without a q LoRA. */
  qA: Tensor | null;
  qANorm: Tensor | null;
  /** kv_a_proj_with_mqa's latent rows [r, H] and rope rows [rope, H] (reordered, {@link mlaRopeRowOrder}). */
  kvA: Tensor;
  kPe: Tensor;
  /** kv_a_layernorm f32 [r]. */
  kvANorm: Tensor;
  /** kv_b_proj [nh·(nope + v), r]. */
  kvB: Tensor;
  /** o_proj [H, nh·v]. */
  o: Tensor;
}

/** The row order of an MLA rope part of `rope` rows: even rows first when interleaved, else as stored. */
export function mlaRopeRowOrder(rope: number, interleave: boolean): number[] {
  return Array.from(
    { length: rope },
    (_, j) => !interleave ? j : j < rope / 2 ? 2 * j : 2 * (j - rope / 2) + 1,
  );
}

/**
 * The source row of each row of q's projection as loaded: per head, [rope part (reordered) | nope part] from the
 * stored [nope | rope].
 */
export function mlaQRowOrder(
  r: { heads: number; nope: number; rope: number; interleave: boolean },
): number[] {
  const ropeOrder = mlaRopeRowOrder(r.rope, r.interleave), hd = r.nope + r.rope;
  return Array.from({ length: r.heads * hd }, (_, row) => {
    const h = Math.floor(row / hd), j = row % hd;
    return h * hd + (j < r.rope ? r.nope + ropeOrder[j] : j - r.rope);
  });
}

/** Per-pass MLA scratch of a decoder layer (besides the shared q, latent, k_pe and attention output). */
export interface MlaScratch {
  /** q_a_proj's output and its norm [rows, q_lora_rank]; null without a q LoRA. */
  qA: Tensor | null;
  qANormed: Tensor | null;
  /** kv_a_proj_with_mqa's latent rows before kv_a_layernorm [rows, r]. */
  latentRaw: Tensor;
  /** The attention output without v's padding [rows, nh·v], o_proj's input. */
  attV: Tensor;
}

/** The shapes of {@link MlaScratch} for `rows` tokens, in allocation order (shared with the memory plan). */
export function mlaScratchShapes(cfg: TargetConfig, rows: number): Array<[keyof MlaScratch, number[]]> {
  const m = cfg.mla!;
  return [
    ...(m.qLoraRank
      ? [["qA", [rows, m.qLoraRank]], ["qANormed", [rows, m.qLoraRank]]] as Array<
        [keyof MlaScratch, number[]]
      >
      : []),
    ["latentRaw", [rows, m.kvLoraRank]],
    ["attV", [rows, cfg.numHeads * m.vHeadDim]],
  ];
}

/** Allocates {@link MlaScratch} for `rows` tokens in `p`. */
export function mlaScratch(p: Program, cfg: TargetConfig, rows: number): MlaScratch {
  const t = new Map(mlaScratchShapes(cfg, rows).map(([k, dims]) => [k, p.scratch(dims, "f32", `mla ${k}`)]));
  return {
    qA: t.get("qA") ?? null,
    qANormed: t.get("qANormed") ?? null,
    latentRaw: t.get("latentRaw")!,
    attV: t.get("attV")!,
  };
}

/**
 * Records the MLA projections of the normed input n [rows, H]: q [rows, nh, rope + nope] (not yet rotated), the
 * normed latent c [rows, 1, r] and k_pe [rows, 1, rope] (not yet rotated); `rstd` [rows] is scratch. The
 * decoder layer hands k_pe and c to its attention in the places of k and v (lib/models/target.ts `Attend`).
 */
export async function mlaProject(
  p: Program,
  w: MlaWeights,
  s: MlaScratch,
  n: Tensor,
  out: { q: Tensor; latent: Tensor; kPe: Tensor; rstd: Tensor },
): Promise<void> {
  const rows = n.shape[0], flat = (t: Tensor) => t.reshape([rows, t.size / rows]);
  const eps = { eps: MLA_LATENT_NORM_EPS };
  if (w.qA && w.qANorm && s.qA && s.qANormed) {
    await linear(p, n, w.qA, s.qA);
    await rmsnormForward(p, s.qA, w.qANorm, s.qANormed, out.rstd, eps);
    await linear(p, s.qANormed, w.q, flat(out.q));
  } else {
    await linear(p, n, w.q, flat(out.q));
  }
  await linear(p, n, w.kvA, s.latentRaw);
  await rmsnormForward(p, s.latentRaw, w.kvANorm, flat(out.latent), out.rstd, eps);
  await linear(p, n, w.kPe, flat(out.kPe));
}

/** The per-pass key scratch of {@link mlaExpand} for `keyRows` cached or current positions. */
export function mlaKeyShapes(cfg: TargetConfig, keyRows: number): Array<[string, number[]]> {
  const m = cfg.mla!, nh = cfg.numHeads, hd = cfg.headDim;
  return [
    ["mla expanded latent", [keyRows, nh * (m.nopeDim + m.vHeadDim)]],
    ["mla keys", [keyRows, nh, hd]],
    ["mla values", [keyRows, nh, hd]],
  ];
}

/**
 * Records the per-head keys and values [R, nh, rope + nope] of R positions from their latents c [R, r] and
 * rotated k_pe [R, rope] (transformers `DeepseekV3Attention.expand_kv`): [k_nope | v] = kv_b_proj(c) per head,
 * keys [k_pe | k_nope], values [v | 0] (zero-padded to the q/k width). The three tensors are the program's
 * transients ({@link mlaKeyShapes}), valid until the next layer's expansion.
 */
export async function mlaExpand(
  p: Program,
  cfg: TargetConfig,
  kvB: Tensor,
  latent: Tensor,
  kPe: Tensor,
): Promise<{ keys: Tensor; values: Tensor }> {
  const m = cfg.mla as MlaConfig, nh = cfg.numHeads, hd = cfg.headDim, R = latent.size / m.kvLoraRank;
  const [kv, keys, values] = mlaKeyShapes(cfg, R).map(([label, dims]) => p.transient(label, dims, "f32"));
  await linear(p, latent.reshape([R, m.kvLoraRank]), kvB, kv);
  const w = m.nopeDim + m.vHeadDim;
  const dst: [number, number, number] = [nh * hd, hd, 1];
  const fromKv = (count: number, srcOffset: number, out: Tensor, dstOffset: number) =>
    copyStrided(p, kv, out, {
      count: [R, nh, count],
      srcStrides: [nh * w, w, 1],
      srcOffset,
      dstStrides: dst,
      dstOffset,
    });
  await copyStrided(p, kPe, keys, {
    count: [R, nh, m.ropeDim],
    srcStrides: [m.ropeDim, 0, 1],
    dstStrides: dst,
  });
  await fromKv(m.nopeDim, 0, keys, m.ropeDim);
  if (m.vHeadDim < hd) await fill(p, values, 0);
  await fromKv(m.vHeadDim, m.nopeDim, values, 0);
  return { keys, values };
}

/** Records x += o_proj(att[..., :v]) from the padded attention output att [rows, nh, rope + nope]. */
export async function mlaOutput(
  p: Program,
  cfg: TargetConfig,
  w: MlaWeights,
  s: MlaScratch,
  att: Tensor,
  x: Tensor,
): Promise<void> {
  const m = cfg.mla!, nh = cfg.numHeads, hd = cfg.headDim, rows = x.shape[0], v = m.vHeadDim;
  await copyStrided(p, att, s.attV, {
    count: [rows, nh, v],
    srcStrides: [nh * hd, hd, 1],
    dstStrides: [nh * v, v, 1],
  });
  await linear(p, s.attV, w.o, x, { accumulate: true });
}
