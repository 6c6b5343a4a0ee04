import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import {
  gatherRows,
  gatherRowsCpu,
  ropeAtPositions,
  ropeAtPositionsCpu,
  scatterRows,
  scatterRowsCpu,
  treeAttentionCpu,
  type TreeAttentionDims,
  treeAttentionForward,
} from "../../lib/ops/tree_attention.ts";
import { attentionCpu } from "../../lib/ops/attention.ts";
import { ropeTable } from "../../lib/ops/rope.ts";

/** A random 0/1 mask [rows, treeLen] with the diagonal set (each row attends itself). */
function randomMask(rows: number, treeLen: number, seed: number): Uint32Array<ArrayBuffer> {
  const r = rng(seed);
  const m = new Uint32Array(rows * treeLen);
  for (let t = 0; t < rows; t++) {
    for (let j = 0; j < treeLen; j++) m[t * treeLen + j] = j === t || r() < 0.4 ? 1 : 0;
  }
  return m;
}

Deno.test({ name: "tree attention matches its CPU reference", ...needsGpu }, async () => {
  const g = gpu!;
  const cases = [
    { rows: 1, heads: 2, kvHeads: 1, headDim: 8, cacheLen: 16, treeLen: 1, prefix: 5 },
    { rows: 7, heads: 4, kvHeads: 2, headDim: 16, cacheLen: 40, treeLen: 9, prefix: 23 },
    { rows: 5, heads: 3, kvHeads: 3, headDim: 6, cacheLen: 12, treeLen: 5, prefix: 0 },
    // The tree region runs past the cache: keys beyond it are ignored.
    { rows: 4, heads: 2, kvHeads: 2, headDim: 32, cacheLen: 10, treeLen: 6, prefix: 7 },
  ];
  for (const [i, d] of cases.entries()) {
    const q = randomArray(d.rows * d.heads * d.headDim, 10 + i);
    const k = randomArray(d.cacheLen * d.kvHeads * d.headDim, 20 + i);
    const v = randomArray(d.cacheLen * d.kvHeads * d.headDim, 30 + i);
    const mask = randomMask(d.rows, d.treeLen, 40 + i);
    const T = (data: Float32Array<ArrayBuffer>, shape: number[], label: string) =>
      Tensor.fromArray(g, data, shape, "f32", label);
    const qt = T(q, [d.rows, d.heads, d.headDim], "q");
    const kt = T(k, [d.cacheLen, d.kvHeads, d.headDim], "k");
    const vt = T(v, [d.cacheLen, d.kvHeads, d.headDim], "v");
    const meta = Tensor.fromArray(g, Int32Array.from([99, d.prefix]), [2], "i32", "meta");
    const maskT = Tensor.fromArray(g, mask, [d.rows, d.treeLen], "u32", "mask");
    const out = Tensor.empty(g, qt.shape, "f32", "out");
    await runOnce(
      g,
      "tree attention",
      (p) => treeAttentionForward(p, { q: qt, k: kt, v: vt, meta, mask: maskT, out }, { prefixSlot: 1 }),
    );
    const want = treeAttentionCpu({ q, k, v, mask, prefix: d.prefix }, d);
    assertClose(await out.readFloat(), want, `tree attention case ${i}`, { atol: 2e-5, rtol: 1e-4 });
    for (const t of [qt, kt, vt, meta, maskT, out]) t.destroy();
  }
});

Deno.test("tree attention CPU reference with a causal mask is causal attention over the cache", () => {
  // Rows appended at prefix..prefix+Tq−1 with a lower-triangular mask = attention with queryOffset = prefix.
  const d = { rows: 4, heads: 2, kvHeads: 1, headDim: 4, cacheLen: 9, treeLen: 4 };
  const prefix = 5;
  const q = randomArray(d.rows * d.heads * d.headDim, 1);
  const k = randomArray(d.cacheLen * d.kvHeads * d.headDim, 2);
  const v = randomArray(d.cacheLen * d.kvHeads * d.headDim, 3);
  const mask = new Uint32Array(16).map((_, i) => (i % 4 <= Math.floor(i / 4) ? 1 : 0));
  const tree = treeAttentionCpu({ q, k, v, mask, prefix }, d);
  const ref = attentionCpu(
    { q, k, v, lengths: [d.cacheLen] },
    {
      batch: 1,
      queryLen: d.rows,
      keyLen: d.cacheLen,
      heads: 2,
      kvHeads: 1,
      headDim: 4,
      diagSteps: 0,
    },
    { causal: true, queryOffset: prefix },
  );
  assertClose(tree, ref.out, "causal tree attention", { atol: 1e-12, rtol: 1e-12 });
});

Deno.test({
  name: "tree attention with a sliding window: CPU reference = windowed causal attention = GPU",
  ...needsGpu,
}, async () => {
  // A chain of 4 rows at positions prefix..prefix+3 with a causal mask and a window of 3 keys.
  const d = { rows: 4, heads: 2, kvHeads: 1, headDim: 4, cacheLen: 9, treeLen: 4 };
  const prefix = 5, window = { size: 3, positions: [5, 6, 7, 8] };
  const q = randomArray(d.rows * d.heads * d.headDim, 4);
  const k = randomArray(d.cacheLen * d.kvHeads * d.headDim, 5);
  const v = randomArray(d.cacheLen * d.kvHeads * d.headDim, 6);
  const mask = new Uint32Array(16).map((_, i) => (i % 4 <= Math.floor(i / 4) ? 1 : 0));
  const tree = treeAttentionCpu({ q, k, v, mask, prefix, window }, d);
  const dims = {
    batch: 1,
    queryLen: d.rows,
    keyLen: d.cacheLen,
    heads: 2,
    kvHeads: 1,
    headDim: 4,
    diagSteps: 0,
  };
  const ref = attentionCpu({ q, k, v, lengths: [d.cacheLen] }, dims, {
    causal: true,
    queryOffset: prefix,
    window: window.size,
  });
  assertClose(tree, ref.out, "windowed causal tree attention", { atol: 1e-12, rtol: 1e-12 });
  // A branching tree on the GPU: rows 1 and 2 are siblings at the same position.
  const g = gpu!;
  const tq = { rows: 5, heads: 4, kvHeads: 2, headDim: 16, cacheLen: 30, treeLen: 5 };
  const pre = 20, positions = [20, 21, 21, 22, 22];
  const q2 = randomArray(tq.rows * tq.heads * tq.headDim, 7);
  const k2 = randomArray(tq.cacheLen * tq.kvHeads * tq.headDim, 8);
  const v2 = randomArray(tq.cacheLen * tq.kvHeads * tq.headDim, 9);
  const mask2 = Uint32Array.from([1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
  const T = (data: Float32Array<ArrayBuffer>, shape: number[]) =>
    Tensor.fromArray(g, data, shape, "f32", "t");
  const qt = T(q2, [tq.rows, tq.heads, tq.headDim]), kt = T(k2, [tq.cacheLen, tq.kvHeads, tq.headDim]);
  const vt = T(v2, [tq.cacheLen, tq.kvHeads, tq.headDim]);
  const meta = Tensor.fromArray(g, Int32Array.from([pre]), [1], "i32", "meta");
  const maskT = Tensor.fromArray(g, mask2, [tq.rows, tq.treeLen], "u32", "mask");
  const pos = Tensor.fromArray(g, Int32Array.from(positions), [tq.rows], "i32", "positions");
  const out = Tensor.empty(g, qt.shape, "f32", "out");
  await runOnce(
    g,
    "windowed tree attention",
    (p) =>
      treeAttentionForward(p, { q: qt, k: kt, v: vt, meta, mask: maskT, out }, {
        window: { size: 4, positions: pos },
      }),
  );
  const want = treeAttentionCpu({
    q: q2,
    k: k2,
    v: v2,
    mask: mask2,
    prefix: pre,
    window: { size: 4, positions },
  }, tq);
  assertClose(await out.readFloat(), want, "windowed tree attention (GPU)", { atol: 2e-5, rtol: 1e-4 });
  for (const t of [qt, kt, vt, meta, maskT, pos, out]) t.destroy();
});

Deno.test(
  { name: "rope at positions, gather and scatter rows match their CPU references", ...needsGpu },
  async () => {
    const g = gpu!;
    const [rows, heads, hd] = [5, 3, 8];
    const table = ropeTable(
      { ropeTheta: 10000, ropeScaling: { type: "default" }, maxPositionEmbeddings: 64 },
      hd,
      32,
    );
    const x = randomArray(rows * heads * hd, 7);
    const positions = Int32Array.from([3, 3, 17, 0, 31]);
    const xt = Tensor.fromArray(g, x, [rows, heads, hd], "f32", "x");
    const pt = Tensor.fromArray(g, positions, [rows], "i32", "positions");
    const cos = Tensor.fromArray(g, table.cos, [32, hd / 2], "f32", "cos");
    const sin = Tensor.fromArray(g, table.sin, [32, hd / 2], "f32", "sin");
    const src = randomArray(6 * 5, 8);
    const srcT = Tensor.fromArray(g, src, [6, 5], "f32", "src");
    const index = Int32Array.from([4, -1, 0, 4, 9]);
    const indexT = Tensor.fromArray(g, index, [5], "i32", "index");
    const gathered = Tensor.empty(g, [5, 5], "f32", "gathered");
    const dst0 = randomArray(8 * 5, 9);
    const dst = Tensor.fromArray(g, dst0, [8, 5], "f32", "dst");
    const meta = Tensor.fromArray(g, Int32Array.from([4]), [1], "i32", "meta");
    await runOnce(g, "rope/gather/scatter", async (p) => {
      await ropeAtPositions(p, xt, pt, cos, sin);
      await gatherRows(p, srcT, indexT, gathered);
      await scatterRows(p, srcT, dst, meta, 0);
    });
    assertClose(
      await xt.readFloat(),
      ropeAtPositionsCpu(x, positions, table.cos, table.sin, [rows, heads, hd]),
      "rope at positions",
    );
    // A partial rotary width (MLA's rope columns first in each head): the first 4 of 8 columns rotate.
    const part = ropeTable(
      { ropeTheta: 10000, ropeScaling: { type: "default" }, maxPositionEmbeddings: 64 },
      4,
      32,
    );
    const xp = Tensor.fromArray(g, x, [rows, heads, hd], "f32", "x partial");
    const [pc, ps] = [part.cos, part.sin].map((t, i) =>
      Tensor.fromArray(g, t, [32, 2], "f32", `partial ${i}`)
    );
    await runOnce(g, "rope partial", (p) => ropeAtPositions(p, xp, pt, pc, ps));
    const wantPartial = ropeAtPositionsCpu(x, positions, part.cos, part.sin, [rows, heads, hd], 4);
    assertClose(await xp.readFloat(), wantPartial, "partial rope at positions");
    assert.deepEqual(
      Array.from(wantPartial).filter((_, i) => i % hd >= 4),
      Array.from(x).filter((_, i) => i % hd >= 4),
    );
    for (const t of [xp, pc, ps]) t.destroy();
    assertClose(await gathered.readFloat(), gatherRowsCpu(src, 5, index), "gather rows", {
      atol: 0,
      rtol: 0,
    });
    // Rows 4..9 of an 8-row dst: the last two source rows fall off the end.
    assertClose(await dst.readFloat(), scatterRowsCpu(src, dst0, 5, 4), "scatter rows", { atol: 0, rtol: 0 });
    for (const t of [xt, pt, cos, sin, srcT, indexT, gathered, dst, meta]) t.destroy();
  },
);

Deno.test(
  { name: "tree attention ops refuse bad shapes and dtypes, naming the op", ...needsGpu },
  async () => {
    const g = gpu!;
    const q = Tensor.empty(g, [2, 2, 4], "f32", "q");
    const k = Tensor.empty(g, [6, 2, 4], "f32", "k");
    const meta = Tensor.empty(g, [1], "i32", "meta");
    const badMask = Tensor.empty(g, [3, 2], "u32", "mask");
    const fMask = Tensor.empty(g, [2, 2], "f32", "mask");
    await assert.rejects(
      runOnce(g, "bad", (p) => treeAttentionForward(p, { q, k, v: k, meta, mask: badMask, out: q })),
      (e: Error) => e instanceof ShapeError && /treeAttentionForward/.test(e.message),
    );
    await assert.rejects(
      runOnce(g, "bad", (p) => treeAttentionForward(p, { q, k, v: k, meta, mask: fMask, out: q })),
      (e: Error) => e instanceof ShapeError && /mask/.test(e.message),
    );
    await assert.rejects(
      runOnce(g, "bad", (p) => scatterRows(p, k.reshape([6, 8]), k.reshape([6, 8]), meta, 0)),
      /share a buffer/,
    );
    for (const t of [q, k, meta, badMask, fMask]) t.destroy();
  },
);

/** A random tree attention case of dims `d` on the GPU (seeds from `seed`): host arrays and tensors. */
function randomTreeCase(
  d: TreeAttentionDims & { prefix: number },
  seed: number,
) {
  const g = gpu!;
  const host = {
    q: randomArray(d.rows * d.heads * d.headDim, seed),
    k: randomArray(d.cacheLen * d.kvHeads * d.headDim, seed + 1),
    v: randomArray(d.cacheLen * d.kvHeads * d.headDim, seed + 2),
    mask: randomMask(d.rows, d.treeLen, seed + 3),
  };
  const T = (data: Float32Array<ArrayBuffer>, shape: number[], label: string) =>
    Tensor.fromArray(g, data, shape, "f32", label);
  const t = {
    q: T(host.q, [d.rows, d.heads, d.headDim], "q"),
    k: T(host.k, [d.cacheLen, d.kvHeads, d.headDim], "k"),
    v: T(host.v, [d.cacheLen, d.kvHeads, d.headDim], "v"),
    meta: Tensor.fromArray(g, Int32Array.from([d.prefix]), [1], "i32", "meta"),
    mask: Tensor.fromArray(g, host.mask, [d.rows, d.treeLen], "u32", "mask"),
    out: Tensor.empty(g, [d.rows, d.heads, d.headDim], "f32", "out"),
  };
  return { host, t };
}

Deno.test(
  { name: "tree attention with sinks (GPT-OSS) matches its CPU reference", ...needsGpu },
  async () => {
    const d = { rows: 6, heads: 4, kvHeads: 2, headDim: 16, cacheLen: 30, treeLen: 6, prefix: 17 };
    const { host, t } = randomTreeCase(d, 50);
    const sinks = randomArray(d.heads, 54, 2);
    const sinkT = Tensor.fromArray(gpu!, sinks, [d.heads], "f32", "sinks");
    await runOnce(gpu!, "tree attention sinks", (p) => treeAttentionForward(p, t, { sinks: sinkT }));
    const want = treeAttentionCpu({ ...host, prefix: d.prefix, sinks }, d);
    assertClose(await t.out.readFloat(), want, "tree attention with sinks", { atol: 2e-5, rtol: 1e-4 });
    for (const x of [...Object.values(t), sinkT]) x.destroy();
  },
);

Deno.test(
  { name: "tree attention with chunks (Llama 4) matches its CPU reference", ...needsGpu },
  async () => {
    const d = { rows: 5, heads: 2, kvHeads: 1, headDim: 8, cacheLen: 24, treeLen: 5, prefix: 10 };
    const { host, t } = randomTreeCase(d, 60);
    const positions = Int32Array.from([10, 11, 11, 12, 13]); // a tree: depths 0, 1, 1, 2, 3 after 10 cached
    const pos = Tensor.fromArray(gpu!, positions, [d.rows], "i32", "positions");
    await runOnce(
      gpu!,
      "tree attention chunks",
      (p) => treeAttentionForward(p, t, { chunk: { size: 4, positions: pos } }),
    );
    const want = treeAttentionCpu({ ...host, prefix: d.prefix, chunk: { size: 4, positions } }, d);
    assertClose(await t.out.readFloat(), want, "tree attention with chunks", { atol: 2e-5, rtol: 1e-4 });
    for (const x of [...Object.values(t), pos]) {
      x.destroy();
    }
  },
);
