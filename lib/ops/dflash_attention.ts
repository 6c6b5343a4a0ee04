/**
 * The DFlash draft's attention (kernels/dflash_attention.ts): block queries over the context keys before
 * their anchor and over their own block, forward and backward, with the host-side table of key ranges and
 * plain-TS CPU references.
 *
 * Masks (SpecForge `specforge/algorithms/common/dflash_family_model.py` `create_dflash_sdpa_mask`), for the
 * query of block n, slot k (anchor a_n, block size B, window W, kept flag keep_n) and sample-local keys:
 *   full layers:     context j < a_n;                        block keys of block n (any slot)
 *   sliding layers:  context a_n + k − (W − 1) ≤ j < a_n;    block keys of block n at slots ≤ k
 *   a dropped block (keep_n false): no key; its rows come out 0 (SpecForge zeroes them after o_proj).
 */
import * as K from "../../kernels/dflash_attention.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/** Shapes of one DFlash attention call. */
export interface DflashAttentionDims {
  /** nb: samples. */
  batches: number;
  /** S: context rows per sample. */
  seq: number;
  /** Q: block query rows per sample (blocks · block size). */
  queries: number;
  /** nh: query heads. */
  heads: number;
  /** nkv: key/value heads (divides nh). */
  kvHeads: number;
  /** hd: head dim. */
  headDim: number;
  /** R0: the first block key row of k and v (≥ nb·S; see {@link dflashBlockRow0}). */
  blockRow0: number;
}

/**
 * R0 for `ctxRows` = nb·S context rows of `rowElements` f32 each: the least row ≥ ctxRows whose byte offset
 * meets `alignBytes` (the device's minStorageBufferOffsetAlignment), so that the block rows bind as a view.
 */
export function dflashBlockRow0(ctxRows: number, rowElements: number, alignBytes: number): number {
  const gcd = (a: number, b: number): number => b === 0 ? a : gcd(b, a % b);
  const step = alignBytes / gcd(rowElements * 4, alignBytes);
  return Math.ceil(ctxRows / step) * step;
}

/** The anchors of one batch (SpecForge `_sample_anchor_positions`): nb × N, sample-major. */
export interface DflashBlocks {
  /** Samples. */
  batches: number;
  /** N: blocks per sample. */
  blocks: number;
  /** B: block size. */
  blockSize: number;
  /** a_n per block, [nb·N] (0 for a dropped block). */
  anchors: Int32Array;
  /** keep_n per block, [nb·N]. */
  keep: Uint8Array;
}

/** Query rows' ranges [nb·Q, 4] then key rows' query ranges [R0 + nb·Q, 2], as the kernels read them. */
export interface DflashRanges {
  /** The whole table (u32). */
  table: Uint32Array<ArrayBuffer>;
  /** Offset of the key part. */
  keyTable: number;
}

/**
 * The ranges of every query of `blocks` over S context rows; `window` W for a sliding layer, else null; R0
 * (default nb·S) as in {@link DflashAttentionDims}.
 */
export function dflashRanges(
  blocks: DflashBlocks,
  seq: number,
  window: number | null,
  blockRow0 = blocks.batches * seq,
): DflashRanges {
  const { batches, blocks: N, blockSize: B, anchors, keep } = blocks;
  const Q = N * B;
  const keyTable = batches * Q * 4;
  const table = new Uint32Array(keyTable + (blockRow0 + batches * Q) * 2);
  for (let b = 0; b < batches; b++) {
    for (let n = 0; n < N; n++) {
      if (!keep[b * N + n]) continue;
      const a = anchors[b * N + n];
      for (let k = 0; k < B; k++) {
        const r = (b * Q + n * B + k) * 4;
        table[r] = window === null ? 0 : Math.max(0, a + k - (window - 1));
        table[r + 1] = Math.max(table[r], Math.min(a, seq));
        table[r + 2] = n * B;
        table[r + 3] = window === null ? (n + 1) * B : n * B + k + 1;
      }
    }
  }
  keyRanges(table, keyTable, { batches, seq, queries: Q, blockRow0 });
  return { table, keyTable };
}

/** The unmasked ranges of block decoding: each of the Q queries sees all S context keys and all Q block keys. */
export function dflashOpenRanges(
  batches: number,
  seq: number,
  queries: number,
  blockRow0 = batches * seq,
): DflashRanges {
  const keyTable = batches * queries * 4;
  const table = new Uint32Array(keyTable + (blockRow0 + batches * queries) * 2);
  for (let r = 0; r < batches * queries; r++) table.set([0, seq, 0, queries], r * 4);
  keyRanges(table, keyTable, { batches, seq, queries, blockRow0 });
  return { table, keyTable };
}

/** Fills each key row's [qLo, qHi): the first and one past the last query of its sample that attends it. */
function keyRanges(
  table: Uint32Array,
  keyTable: number,
  { batches, seq, queries: Q, blockRow0 }: Pick<
    DflashAttentionDims,
    "batches" | "seq" | "queries" | "blockRow0"
  >,
): void {
  const keyRows = blockRow0 + batches * Q;
  const lo = new Int32Array(keyRows).fill(Q), hi = new Int32Array(keyRows);
  for (let b = 0; b < batches; b++) {
    for (let i = 0; i < Q; i++) {
      const r = (b * Q + i) * 4;
      for (const [seg, base, len] of [[0, b * seq, seq], [1, blockRow0 + b * Q, Q]]) {
        const from = table[r + 2 * seg], to = Math.min(table[r + 2 * seg + 1], len);
        for (let j = from; j < to; j++) {
          lo[base + j] = Math.min(lo[base + j], i);
          hi[base + j] = Math.max(hi[base + j], i + 1);
        }
      }
    }
  }
  for (let kr = 0; kr < lo.length; kr++) {
    table[keyTable + 2 * kr] = Math.min(lo[kr], hi[kr]);
    table[keyTable + 2 * kr + 1] = hi[kr];
  }
}

function checkDims(op: string, d: DflashAttentionDims, t: Record<string, Tensor>): void {
  const { batches: nb, seq: S, queries: Q, heads: nh, kvHeads: nkv, headDim: hd, blockRow0: R0 } = d;
  if (nh % nkv !== 0) throw new ShapeError(`${op}: ${nh} query heads are not a multiple of ${nkv} kv heads`);
  if (R0 < nb * S) throw new ShapeError(`${op}: the block key rows start at ${R0}, before ${nb}·${S}`);
  const shapes: Record<string, number[]> = {
    q: [nb * Q, nh * hd],
    k: [R0 + nb * Q, nkv * hd],
    v: [R0 + nb * Q, nkv * hd],
    out: [nb * Q, nh * hd],
    stats: [nb * Q * nh, 2],
    dout: [nb * Q, nh * hd],
    dq: [nb * Q, nh * hd],
    dk: [R0 + nb * Q, nkv * hd],
    dv: [R0 + nb * Q, nkv * hd],
    ranges: [nb * Q * 4 + (R0 + nb * Q) * 2],
  };
  for (const [name, x] of Object.entries(t)) {
    expectDtype(op, name, x, name === "ranges" ? "u32" : "f32");
    expectShape(op, name, x, shapes[name]);
  }
}

function fields(d: DflashAttentionDims) {
  return params(
    ["u32", d.batches * d.queries],
    ["u32", d.heads],
    ["u32", d.kvHeads],
    ["u32", d.seq],
    ["u32", d.queries],
    ["u32", d.batches],
    ["f32", 1 / Math.sqrt(d.headDim)],
    ["u32", d.batches * d.queries * 4],
    ["u32", d.blockRow0],
    ["u32", 0],
    ["u32", 0],
    ["u32", 0],
  );
}

/** The tensors of one forward call: q, k, v (layouts in kernels/dflash_attention.ts), the ranges, outputs. */
export interface DflashAttentionTensors {
  /** Queries [nb·Q, nh·hd], RoPE applied. */
  q: Tensor;
  /** Keys [R0 + nb·Q, nkv·hd]: context rows, then (from R0) block rows. */
  k: Tensor;
  /** Values, as k. */
  v: Tensor;
  /** u32 [nb·Q·4 + (R0 + nb·Q)·2], the table of {@link dflashRanges}. */
  ranges: Tensor;
  /** Output [nb·Q, nh·hd]. */
  out: Tensor;
  /** Per (query, head): log-sum-exp, then δ of the backward [nb·Q·nh, 2]. */
  stats: Tensor;
}

/** Records out = softmax(scale·q·kᵀ over each query's ranges)·v and saves the log-sum-exp. */
export async function dflashAttentionForward(
  p: Program,
  t: DflashAttentionTensors,
  d: DflashAttentionDims,
): Promise<void> {
  checkDims("dflashAttentionForward", d, { ...t });
  const n = d.batches * d.queries * d.heads;
  await p.add(
    { name: `dflash_attention.forward.hd${d.headDim}`, code: K.forward(d.headDim), entryPoint: "main" },
    [fields(d), t.q, t.k, t.v, t.ranges, t.out, t.stats],
    Math.ceil(n / K.DFLASH_ATTENTION_WG),
  );
}

/** The gradients of {@link dflashAttentionBackward} (overwritten). */
export interface DflashAttentionGrads {
  /** ∂/∂out [nb·Q, nh·hd]. */
  dout: Tensor;
  /** ∂/∂q. */
  dq: Tensor;
  /** ∂/∂k. */
  dk: Tensor;
  /** ∂/∂v. */
  dv: Tensor;
}

/** Records the backward pass of {@link dflashAttentionForward} (its stats get δ). */
export async function dflashAttentionBackward(
  p: Program,
  t: DflashAttentionTensors,
  g: DflashAttentionGrads,
  d: DflashAttentionDims,
): Promise<void> {
  checkDims("dflashAttentionBackward", d, { ...t, ...g });
  const hd = d.headDim;
  const nq = d.batches * d.queries * d.heads;
  await p.add(
    { name: `dflash_attention.backward_q.hd${hd}`, code: K.backwardQ(hd), entryPoint: "main" },
    [fields(d), t.q, t.k, t.v, t.ranges, t.out, g.dout, t.stats, g.dq],
    Math.ceil(nq / K.DFLASH_ATTENTION_WG),
  );
  const nk = (d.blockRow0 + d.batches * d.queries) * d.kvHeads;
  await p.add(
    { name: `dflash_attention.backward_kv.hd${hd}`, code: K.backwardKv(hd), entryPoint: "main" },
    [fields(d), t.q, t.k, t.v, t.ranges, g.dout, t.stats, g.dk, g.dv],
    Math.ceil(nk / K.DFLASH_ATTENTION_WG),
  );
}

// ---------------------------------------------------------------------------------------------------------
// CPU references (f64).

/** Each query's (key row, probability) pairs and its output, f64. */
function probabilities(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  ranges: DflashRanges,
  d: DflashAttentionDims,
  r: number,
  h: number,
): { rows: number[]; probs: number[] } {
  const { seq: S, queries: Q, heads: nh, kvHeads: nkv, headDim: hd, blockRow0: R0 } = d;
  const b = Math.floor(r / Q), kvh = Math.floor(h / (nh / nkv));
  const rows: number[] = [], scores: number[] = [];
  for (const [seg, base] of [[0, b * S], [1, R0 + b * Q]]) {
    for (let j = ranges.table[r * 4 + 2 * seg]; j < ranges.table[r * 4 + 2 * seg + 1]; j++) {
      let s = 0;
      for (let e = 0; e < hd; e++) s += q[(r * nh + h) * hd + e] * k[((base + j) * nkv + kvh) * hd + e];
      rows.push(base + j);
      scores.push(s / Math.sqrt(hd));
    }
  }
  const m = Math.max(...scores);
  const z = scores.reduce((acc, s) => acc + Math.exp(s - m), 0);
  return { rows, probs: scores.map((s) => Math.exp(s - m) / z) };
}

/** CPU reference of {@link dflashAttentionForward}: out [nb·Q, nh·hd]. */
export function dflashAttentionCpu(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  ranges: DflashRanges,
  d: DflashAttentionDims,
): Float64Array {
  const { batches: nb, queries: Q, heads: nh, kvHeads: nkv, headDim: hd } = d;
  const out = new Float64Array(nb * Q * nh * hd);
  for (let r = 0; r < nb * Q; r++) {
    for (let h = 0; h < nh; h++) {
      const { rows, probs } = probabilities(q, k, ranges, d, r, h);
      const kvh = Math.floor(h / (nh / nkv));
      rows.forEach((kr, i) => {
        for (let e = 0; e < hd; e++) out[(r * nh + h) * hd + e] += probs[i] * v[(kr * nkv + kvh) * hd + e];
      });
    }
  }
  return out;
}

/** CPU reference of {@link dflashAttentionBackward}: dq, dk, dv. */
export function dflashAttentionBackwardCpu(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dout: ArrayLike<number>,
  ranges: DflashRanges,
  d: DflashAttentionDims,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { batches: nb, queries: Q, heads: nh, kvHeads: nkv, headDim: hd, blockRow0: R0 } = d;
  const dq = new Float64Array(nb * Q * nh * hd);
  const dk = new Float64Array((R0 + nb * Q) * nkv * hd), dv = new Float64Array(dk.length);
  const scale = 1 / Math.sqrt(hd);
  for (let r = 0; r < nb * Q; r++) {
    for (let h = 0; h < nh; h++) {
      const { rows, probs } = probabilities(q, k, ranges, d, r, h);
      const kvh = Math.floor(h / (nh / nkv)), qo = (r * nh + h) * hd;
      const dp = rows.map((kr) => {
        let s = 0;
        for (let e = 0; e < hd; e++) s += dout[qo + e] * v[(kr * nkv + kvh) * hd + e];
        return s;
      });
      const delta = probs.reduce((acc, pr, i) => acc + pr * dp[i], 0);
      rows.forEach((kr, i) => {
        const ko = (kr * nkv + kvh) * hd, ds = probs[i] * (dp[i] - delta);
        for (let e = 0; e < hd; e++) {
          dq[qo + e] += scale * ds * k[ko + e];
          dk[ko + e] += scale * ds * q[qo + e];
          dv[ko + e] += probs[i] * dout[qo + e];
        }
      });
    }
  }
  return { dq, dk, dv };
}
