/**
 * The host side of a DFlash training batch (SpecForge `specforge/algorithms/common/dflash_family_model.py`,
 * `OnlineDFlashModel`): random anchors, and from them each block's input tokens, positions, labels and loss
 * weights, and the RoPE rows of the block positions. Everything here depends only on the batch's token ids
 * and loss mask, so it is computed before the step and written to the GPU without a readback.
 */
import type { DflashBlocks } from "../ops/dflash_attention.ts";
import type { DflashConfig } from "./dflash_config.ts";
import { ropeTable } from "../ops/rope.ts";

/** N: blocks per sample of a batch of padded length `seq` (SpecForge's num_anchors, at most S − 1 candidates). */
export function dflashBlocksPerSample(numAnchors: number, seq: number): number {
  return Math.max(1, Math.min(numAnchors, seq - 1));
}

/**
 * `_sample_anchor_positions` from a uniform matrix `rand` [nb, S − 1] (what `torch.rand` gives SpecForge):
 * candidates are positions a ≤ S − 2 with mask[a] = mask[a + 1] = 1; N = min(numAnchors, the largest count);
 * each sample takes its N smallest draws among its candidates (fewer when it has fewer: the rest are dropped
 * blocks, anchor 0), in ascending position order. `width` pads every sample to that many blocks (dropped ones
 * after its own; at least N), so that batches of one shape share a program; null when no sample has a
 * candidate (SpecForge raises).
 */
export function sampleDflashAnchors(
  rand: ArrayLike<number>,
  lossMask: ArrayLike<number>,
  batches: number,
  seq: number,
  numAnchors: number,
  blockSize: number,
  width?: number,
): DflashBlocks | null {
  const valid = (b: number, a: number) => lossMask[b * seq + a] > 0.5 && lossMask[b * seq + a + 1] > 0.5;
  const counts = Array.from({ length: batches }, (_, b) => {
    let n = 0;
    for (let a = 0; a < seq - 1; a++) n += valid(b, a) ? 1 : 0;
    return n;
  });
  const chosenPerSample = Math.min(numAnchors, Math.max(0, ...counts));
  if (chosenPerSample === 0) return null;
  if (width !== undefined && width < chosenPerSample) {
    throw new RangeError(`dflash: ${width} blocks per sample cannot hold ${chosenPerSample} anchors`);
  }
  const N = width ?? chosenPerSample;
  const anchors = new Int32Array(batches * N), keep = new Uint8Array(batches * N);
  for (let b = 0; b < batches; b++) {
    const cand = [];
    for (let a = 0; a < seq - 1; a++) if (valid(b, a)) cand.push(a);
    cand.sort((x, y) => rand[b * (seq - 1) + x] - rand[b * (seq - 1) + y] || x - y);
    cand.slice(0, chosenPerSample).sort((x, y) => x - y).forEach((a, n) => {
      anchors[b * N + n] = a;
      keep[b * N + n] = 1;
    });
  }
  return { batches, blocks: N, blockSize, anchors, keep };
}

/** What a batch's blocks feed the step, one entry per block row (sample b, block n, slot k). */
export interface DflashBlockInputs {
  /** The block's tokens: the anchor's token in slot 0 of a kept block, the mask token elsewhere. */
  noiseIds: Int32Array<ArrayBuffer>;
  /** Same-position labels: input_ids[min(a_n + k, S − 1)]. */
  labels: Int32Array<ArrayBuffer>;
  /** w = keep_n · [a_n + k < S] · [k > 0] · mask[min(a_n + k, S − 1)]. */
  weights: Float32Array<ArrayBuffer>;
  /** RoPE cos of position a_n + k [rows, hd/2]. */
  cos: Float32Array<ArrayBuffer>;
  /** RoPE sin, as cos. */
  sin: Float32Array<ArrayBuffer>;
}

/** The block inputs of `blocks` over a batch's `inputIds` and `lossMask` [nb, S]. */
export function dflashBlockInputs(
  cfg: DflashConfig,
  blocks: DflashBlocks,
  inputIds: ArrayLike<number>,
  lossMask: ArrayLike<number>,
  seq: number,
): DflashBlockInputs {
  const { batches, blocks: N, blockSize: B, anchors, keep } = blocks;
  const rows = batches * N * B, half = cfg.headDim / 2;
  const table = ropeTable(cfg, cfg.headDim, seq + B);
  const out: DflashBlockInputs = {
    noiseIds: new Int32Array(rows).fill(cfg.maskTokenId),
    labels: new Int32Array(rows),
    weights: new Float32Array(rows),
    cos: new Float32Array(rows * half),
    sin: new Float32Array(rows * half),
  };
  for (let b = 0; b < batches; b++) {
    for (let n = 0; n < N; n++) {
      const a = anchors[b * N + n], kept = keep[b * N + n] === 1;
      for (let k = 0; k < B; k++) {
        const r = (b * N + n) * B + k, at = b * seq + Math.min(a + k, seq - 1);
        if (k === 0 && kept) out.noiseIds[r] = inputIds[b * seq + a];
        out.labels[r] = inputIds[at];
        out.weights[r] = kept && a + k < seq && k > 0 ? lossMask[at] : 0;
        out.cos.set(table.cos.subarray((a + k) * half, (a + k + 1) * half), r * half);
        out.sin.set(table.sin.subarray((a + k) * half, (a + k + 1) * half), r * half);
      }
    }
  }
  return out;
}

/**
 * The `dflash` loss weights ω = w·d_k, d_k = exp(−max(k − 1, 0)/γ) (`loss_decay_gamma`; null: no decay).
 */
export function dflashDecayedWeights(
  w: Float32Array,
  blockSize: number,
  gamma: number | null,
): Float32Array<ArrayBuffer> {
  return Float32Array.from(
    w,
    (x, r) => gamma === null ? x : x * Math.exp(-Math.max((r % blockSize) - 1, 0) / gamma),
  );
}
