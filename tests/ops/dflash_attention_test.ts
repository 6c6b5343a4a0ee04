import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  dflashAttentionBackward,
  dflashAttentionBackwardCpu,
  dflashAttentionCpu,
  type DflashAttentionDims,
  dflashAttentionForward,
  type DflashBlocks,
  dflashOpenRanges,
  type DflashRanges,
  dflashRanges,
} from "../../lib/ops/dflash_attention.ts";

/** The boolean mask [nb, Q, S + Q] the ranges describe (key j < S: context, else block key j − S). */
function maskOf(r: DflashRanges, nb: number, S: number, Q: number): number[] {
  const mask: number[] = [];
  for (let row = 0; row < nb * Q; row++) {
    const [cl, ch, bl, bh] = r.table.subarray(row * 4, row * 4 + 4);
    for (let j = 0; j < S + Q; j++) mask.push(j < S ? +(j >= cl && j < ch) : +(j - S >= bl && j - S < bh));
  }
  return mask;
}

Deno.test("dflash attention: the ranges give SpecForge's masks (full, window 3, window 1)", () => {
  const g = Golden.load("dflash");
  const blocks: DflashBlocks = {
    batches: 2,
    blocks: 2,
    blockSize: 3,
    anchors: Int32Array.from(g.ints("mask.anchors")),
    keep: Uint8Array.from(g.ints("mask.keep")),
  };
  for (const [name, window] of [["full", null], ["window3", 3], ["window1", 1]] as const) {
    assert.deepEqual(maskOf(dflashRanges(blocks, 8, window), 2, 8, 6), g.ints(`mask.${name}`), name);
  }
});

/** Two samples, three blocks of 4 over 9 context rows; the second sample's last block dropped. */
const BLOCKS: DflashBlocks = {
  batches: 2,
  blocks: 3,
  blockSize: 4,
  anchors: Int32Array.from([0, 3, 7, 2, 5, 0]),
  keep: Uint8Array.from([1, 1, 1, 1, 1, 0]),
};
// Block key rows from 20 (two padding rows after the 18 context rows).
const DIMS: DflashAttentionDims = {
  batches: 2,
  seq: 9,
  queries: 12,
  heads: 4,
  kvHeads: 2,
  headDim: 8,
  blockRow0: 20,
};

function inputs(d: DflashAttentionDims, seed: number) {
  const keyRows = d.blockRow0 + d.batches * d.queries;
  return {
    q: randomArray(d.batches * d.queries * d.heads * d.headDim, seed),
    k: randomArray(keyRows * d.kvHeads * d.headDim, seed + 1),
    v: randomArray(keyRows * d.kvHeads * d.headDim, seed + 2),
    dout: randomArray(d.batches * d.queries * d.heads * d.headDim, seed + 3),
  };
}

Deno.test(
  { name: "dflash attention: forward and backward match the CPU reference", ...needsGpu },
  async () => {
    const g = gpu!;
    const cases: Array<[string, DflashRanges]> = [
      ["full", dflashRanges(BLOCKS, DIMS.seq, null, DIMS.blockRow0)],
      ["window 3", dflashRanges(BLOCKS, DIMS.seq, 3, DIMS.blockRow0)],
      ["open", dflashOpenRanges(DIMS.batches, DIMS.seq, DIMS.queries, DIMS.blockRow0)],
    ];
    for (const [i, [name, ranges]] of cases.entries()) {
      const d = DIMS, x = inputs(d, 10 * i);
      const T = (data: Float32Array<ArrayBuffer>, shape: number[], label: string) =>
        Tensor.fromArray(g, data, shape, "f32", label);
      const keyRows = d.blockRow0 + d.batches * d.queries, qRows = d.batches * d.queries;
      const t = {
        q: T(x.q, [qRows, d.heads * d.headDim], "q"),
        k: T(x.k, [keyRows, d.kvHeads * d.headDim], "k"),
        v: T(x.v, [keyRows, d.kvHeads * d.headDim], "v"),
        ranges: Tensor.fromArray(g, ranges.table, [ranges.table.length], "u32", "ranges"),
        out: Tensor.empty(g, [qRows, d.heads * d.headDim], "f32", "out"),
        stats: Tensor.empty(g, [qRows * d.heads, 2], "f32", "stats"),
      };
      const grads = {
        dout: T(x.dout, [qRows, d.heads * d.headDim], "dout"),
        dq: Tensor.empty(g, t.q.shape, "f32", "dq"),
        dk: Tensor.empty(g, t.k.shape, "f32", "dk"),
        dv: Tensor.empty(g, t.v.shape, "f32", "dv"),
      };
      await runOnce(g, "dflash attention", async (p) => {
        await dflashAttentionForward(p, t, d);
        await dflashAttentionBackward(p, t, grads, d);
      });
      const tol = { atol: 2e-5, rtol: 1e-4 };
      assertClose(await t.out.readFloat(), dflashAttentionCpu(x.q, x.k, x.v, ranges, d), `${name}: out`, tol);
      const want = dflashAttentionBackwardCpu(x.q, x.k, x.v, x.dout, ranges, d);
      assertClose(await grads.dq.readFloat(), want.dq, `${name}: dq`, tol);
      assertClose(await grads.dk.readFloat(), want.dk, `${name}: dk`, tol);
      assertClose(await grads.dv.readFloat(), want.dv, `${name}: dv`, tol);
      if (name !== "open") {
        // The dropped block's rows attend nothing: exactly zero, never NaN.
        const out = await t.out.readFloat(), w = d.heads * d.headDim;
        assert.ok(out.subarray(20 * w, 24 * w).every((e) => e === 0), `${name}: a dropped block is 0`);
      }
      for (const x of [...Object.values(t), ...Object.values(grads)]) x.destroy();
    }
  },
);

Deno.test("dflash attention: CPU backward matches central finite differences of the CPU forward", () => {
  const d: DflashAttentionDims = {
    batches: 1,
    seq: 5,
    queries: 6,
    heads: 2,
    kvHeads: 1,
    headDim: 4,
    blockRow0: 5,
  };
  const blocks: DflashBlocks = {
    batches: 1,
    blocks: 2,
    blockSize: 3,
    anchors: Int32Array.from([1, 3]),
    keep: Uint8Array.from([1, 1]),
  };
  const ranges = dflashRanges(blocks, d.seq, 2);
  const x = inputs(d, 7);
  const q = Float64Array.from(x.q), k = Float64Array.from(x.k), v = Float64Array.from(x.v);
  const loss = () => dflashAttentionCpu(q, k, v, ranges, d).reduce((s, o, i) => s + o * x.dout[i], 0);
  const grads = dflashAttentionBackwardCpu(q, k, v, x.dout, ranges, d);
  for (const [name, arr, grad] of [["q", q, grads.dq], ["k", k, grads.dk], ["v", v, grads.dv]] as const) {
    const numeric = arr.map((_, i) => {
      const keep = arr[i], h = 1e-6;
      arr[i] = keep + h;
      const up = loss();
      arr[i] = keep - h;
      const down = loss();
      arr[i] = keep;
      return (up - down) / (2 * h);
    });
    assertClose(grad, numeric, `finite differences: d${name}`, { atol: 1e-7, rtol: 1e-5 });
  }
});
