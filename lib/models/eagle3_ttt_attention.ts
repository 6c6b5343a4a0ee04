/**
 * The attention of the EAGLE-3 draft during training, across the TTT unroll (SpecForge
 * `specforge/modeling/draft/llama3_eagle.py` `LlamaAttention.forward` with `cache_hidden`, driven by
 * `specforge/core/eagle3.py` `OnlineEagle3Model.forward`). At TTT position k the rows t of every sequence
 * have RoPE at position t + k and attend
 *
 *   {K⁰_s : s ≤ t, s < len_b}  ∪  {K^j_t : 1 ≤ j ≤ k}
 *
 * the causal prefix of position 0's keys plus the "diagonal": the row's own keys of positions 1..k. So the
 * keys of position 0 (K⁰, V⁰) are read by every position and those of position j ≥ 1 by positions ≥ j; their
 * gradients are accumulated over the backward (last position first) and complete once position j is reached.
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { attentionBackward, attentionForward } from "../ops/attention.ts";
import { ropeBackward, ropeForward } from "../ops/rope.ts";
import { accumulate, copyStrided, fill, type StridedCopy } from "../ops/elementwise.ts";
import type { DraftConfig } from "./draft_config.ts";
import type { Eagle3Attention, MakeTensor, QkvGrads } from "./eagle3_layer.ts";

/** B sequences of T rows, K TTT positions. */
export interface TttShape {
  /** Sequences B. */
  batch: number;
  /** Rows per sequence T. */
  seqLen: number;
  /** TTT positions K. */
  tttLength: number;
}

/** The keys and values the TTT positions share, and the saved log-sum-exps (N = B·T rows, KV = nkv·hd). */
export interface TttAttentionTensors<T = Tensor> {
  /** RoPE cos and sin for positions 0..T+K−2 [T+K−1, hd/2]. */
  cos: T;
  /** See `cos`. */
  sin: T;
  /** Position 0's keys and values [N, KV] (RoPE applied to the keys). */
  k0: T;
  /** See `k0`. */
  v0: T;
  /** Positions 1..K−1's keys and values [K−1, N·KV]; null when K = 1. */
  kd: T | null;
  /** See `kd`. */
  vd: T | null;
  /** Where positions ≥ 1 project their keys and values before they are copied into kd, vd [N, KV]. */
  kStep: T;
  /** See `kStep`. */
  vStep: T;
  /** Log-sum-exp of each query row, per saved position [B, nh, T]. */
  lse: T[];
}

/** Scratch of the TTT attention's backward. */
export interface TttAttentionGrads<T = Tensor> {
  /** ∂/∂q of the current position [N, nh·hd]. */
  q: T;
  /** The current position's share of ∂/∂K⁰ [N, KV]. */
  k0Part: T;
  /** The current position's share of ∂/∂V⁰ [N, KV]. */
  v0Part: T;
  /** ∂/∂K⁰ summed over the positions so far [N, KV]. */
  k0: T;
  /** ∂/∂V⁰ summed over the positions so far [N, KV]. */
  v0: T;
  /** The current position's share of ∂/∂K^j (j = 1..k) [K−1, N·KV]; null when K = 1. */
  kdPart: T | null;
  /** The current position's share of ∂/∂V^j [K−1, N·KV]; null when K = 1. */
  vdPart: T | null;
  /** ∂/∂K^j summed over the positions so far [K−1, N·KV]; null when K = 1. */
  kd: T | null;
  /** ∂/∂V^j summed over the positions so far [K−1, N·KV]; null when K = 1. */
  vd: T | null;
  /** ∂/∂K^k of a position k ≥ 1, copied out of kd [N, KV]. */
  kStep: T;
  /** ∂/∂V^k of a position k ≥ 1, copied out of vd [N, KV]. */
  vStep: T;
}

/** The layout of {@link TttAttentionTensors}; `lseSlots` positions keep their log-sum-exps. */
export function tttAttentionTensors<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  s: TttShape,
  lseSlots: number,
): TttAttentionTensors<T> {
  const N = s.batch * s.seqLen, KV = cfg.numKvHeads * cfg.headDim, K = s.tttLength;
  const maxPos = s.seqLen + K - 1;
  return {
    cos: make([maxPos, cfg.headDim / 2], "f32", "rope cos"),
    sin: make([maxPos, cfg.headDim / 2], "f32", "rope sin"),
    k0: make([N, KV], "f32", "K prefix"),
    v0: make([N, KV], "f32", "V prefix"),
    kd: K > 1 ? make([K - 1, N * KV], "f32", "K diagonal") : null,
    vd: K > 1 ? make([K - 1, N * KV], "f32", "V diagonal") : null,
    kStep: make([N, KV], "f32", "k of position"),
    vStep: make([N, KV], "f32", "v of position"),
    lse: Array.from(
      { length: lseSlots },
      (_, k) => make([s.batch, cfg.numHeads, s.seqLen], "f32", `attention lse[${k}]`),
    ),
  };
}

/** The layout of {@link TttAttentionGrads}. */
export function tttAttentionGrads<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  s: TttShape,
): TttAttentionGrads<T> {
  const N = s.batch * s.seqLen, KV = cfg.numKvHeads * cfg.headDim, K = s.tttLength;
  const diag = (label: string) => K > 1 ? make([K - 1, N * KV], "f32", label) : null;
  return {
    q: make([N, cfg.numHeads * cfg.headDim], "f32", "dq"),
    k0Part: make([N, KV], "f32", "dK prefix (position)"),
    v0Part: make([N, KV], "f32", "dV prefix (position)"),
    k0: make([N, KV], "f32", "dK prefix"),
    v0: make([N, KV], "f32", "dV prefix"),
    kdPart: diag("dK diagonal (position)"),
    vdPart: diag("dV diagonal (position)"),
    kd: diag("dK diagonal"),
    vd: diag("dV diagonal"),
    kStep: make([N, KV], "f32", "dk of position"),
    vStep: make([N, KV], "f32", "dv of position"),
  };
}

/** Zeroes the accumulated key/value gradients (before the backward's first position). */
export async function resetTttAttentionGrads(p: Program, g: TttAttentionGrads): Promise<void> {
  for (const t of [g.k0, g.v0, g.kd, g.vd]) if (t) await fill(p, t, 0);
}

/** The keys and values tensors a position's projections write: K⁰/V⁰ at position 0, else the step buffers. */
export function tttKeysOf<T>(t: TttAttentionTensors<T>, position: number): { k: T; v: T } {
  return position === 0 ? { k: t.k0, v: t.v0 } : { k: t.kStep, v: t.vStep };
}

/**
 * The {@link Eagle3Attention} of TTT position `position` (its log-sum-exps in `t.lse[lseSlot]`); `lengths`
 * [B] masks each sequence's padding keys.
 */
export class TttAttention implements Eagle3Attention {
  constructor(
    readonly cfg: DraftConfig,
    readonly shape: TttShape,
    readonly t: TttAttentionTensors,
    readonly lengths: Tensor,
    readonly position: number,
    readonly lseSlot: number,
    readonly g: TttAttentionGrads | null = null,
  ) {}

  #heads(x: Tensor, heads: number): Tensor {
    return x.reshape([this.shape.batch, this.shape.seqLen, heads, this.cfg.headDim]);
  }

  #diag(x: Tensor | null): Tensor | null {
    const { batch: B, seqLen: T } = this.shape, k = this.position;
    return x && k > 0 ? x.view(0, [k, B, T, this.cfg.numKvHeads, this.cfg.headDim]) : null;
  }

  /** Element offset of position k ≥ 1's slice of kd/vd. */
  get #slot(): number {
    return (this.position - 1) * this.shape.batch * this.shape.seqLen * this.cfg.numKvHeads *
      this.cfg.headDim;
  }

  #args(q: Tensor, att: Tensor) {
    const { numHeads: nh, numKvHeads: nkv } = this.cfg;
    return {
      q: this.#heads(q, nh),
      k: this.#heads(this.t.k0, nkv),
      v: this.#heads(this.t.v0, nkv),
      kd: this.#diag(this.t.kd),
      vd: this.#diag(this.t.vd),
      lengths: this.lengths,
      out: this.#heads(att, nh),
      lse: this.t.lse[this.lseSlot],
    };
  }

  /** RoPE at t + k, then k, v into the diagonal slot of position k ≥ 1, then the attention. */
  async forward(p: Program, q: Tensor, k: Tensor, v: Tensor, att: Tensor): Promise<void> {
    const { numHeads: nh, numKvHeads: nkv } = this.cfg;
    const rope = { positionOffset: this.position };
    await ropeForward(p, this.#heads(q, nh), this.#heads(q, nh), this.t.cos, this.t.sin, rope);
    await ropeForward(p, this.#heads(k, nkv), this.#heads(k, nkv), this.t.cos, this.t.sin, rope);
    if (this.position > 0) {
      await copySlice(p, k, this.t.kd!, this.#slot, "into");
      await copySlice(p, v, this.t.vd!, this.#slot, "into");
    }
    await attentionForward(p, this.#args(q, att), { causal: true });
  }

  /**
   * Adds this position's share to the key/value gradient sums; the sums of K^k, V^k are then complete
   * (every position ≥ k has run), so they are this position's dk, dv.
   */
  async backward(p: Program, dAtt: Tensor, saved: { q: Tensor; att: Tensor }): Promise<QkvGrads> {
    const g = this.g!, k = this.position;
    const { numHeads: nh, numKvHeads: nkv } = this.cfg;
    await attentionBackward(p, {
      ...this.#args(saved.q, saved.att),
      dout: this.#heads(dAtt, nh),
      dq: this.#heads(g.q, nh),
      dk: this.#heads(g.k0Part, nkv),
      dv: this.#heads(g.v0Part, nkv),
      dkd: this.#diag(g.kdPart),
      dvd: this.#diag(g.vdPart),
    }, { causal: true });
    await accumulate(p, g.k0, g.k0Part);
    await accumulate(p, g.v0, g.v0Part);
    let dk = g.k0, dv = g.v0;
    if (k > 0) {
      const n = k * this.shape.batch * this.shape.seqLen * nkv * this.cfg.headDim;
      await accumulate(p, g.kd!.view(0, [n]), g.kdPart!.view(0, [n]));
      await accumulate(p, g.vd!.view(0, [n]), g.vdPart!.view(0, [n]));
      await copySlice(p, g.kStep, g.kd!, this.#slot, "out");
      await copySlice(p, g.vStep, g.vd!, this.#slot, "out");
      dk = g.kStep;
      dv = g.vStep;
    }
    const rope = { positionOffset: k };
    await ropeBackward(p, this.#heads(g.q, nh), this.#heads(g.q, nh), this.t.cos, this.t.sin, rope);
    await ropeBackward(p, this.#heads(dk, nkv), this.#heads(dk, nkv), this.t.cos, this.t.sin, rope);
    return { q: g.q, k: dk, v: dv };
  }
}

/**
 * Copies `x` into `big` at element `offset` ("into"), or that slice of `big` into `x` ("out"). A copy, not a
 * view: a view at an arbitrary offset may break the storage-binding offset alignment.
 */
function copySlice(p: Program, x: Tensor, big: Tensor, offset: number, dir: "into" | "out"): Promise<void> {
  const c: StridedCopy = { count: [1, 1, x.size], srcStrides: [0, 0, 1], dstStrides: [0, 0, 1] };
  return dir === "into"
    ? copyStrided(p, x, big, { ...c, dstOffset: offset })
    : copyStrided(p, big, x, { ...c, srcOffset: offset });
}
