/** Muon: the GPU update against its f64 CPU reference, and the orthogonalisation it is built on. */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Program } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import { adamwState } from "../../lib/ops/adamw.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import {
  destroyMuonScratchPool,
  isMuonMatrix,
  MUON_DEFAULTS,
  muonLrFactor,
  muonScratch,
  muonScratchPool,
  muonScratchShapes,
  muonStep,
  muonStepCpu,
} from "../../lib/ops/muon.ts";

/** max |x| of an array. */
const maxAbs = (x: ArrayLike<number>) => Array.from(x).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

for (const [rows, cols] of [[12, 40], [40, 12], [24, 24]]) {
  Deno.test(
    { name: `muon step [${rows}, ${cols}] matches the f64 reference over two updates`, ...needsGpu },
    async () => {
      const g = gpu!, n = rows * cols;
      const param0 = randomArray(n, 1, 0.5);
      const grads = [randomArray(n, 2, 0.3), randomArray(n, 3, 0.3)];
      const param = Tensor.fromArray(g, param0, [rows, cols], "f32", "w");
      const grad = Tensor.empty(g, [rows, cols], "f32", "grad");
      const buf = Tensor.zeros(g, [rows, cols], "f32", "buf");
      const normSq = Tensor.empty(g, [1], "f32", "normSq");
      const state = Tensor.empty(g, [4], "f32", "state");
      const pool = muonScratchPool(g, [[rows, cols]]), scratch = muonScratch(pool, rows, cols);
      const p = new Program(g, "muon");
      const opts = { ...MUON_DEFAULTS, lrRatio: 10 };
      try {
        await muonStep(p, { param, grad, buf, normSq, state }, scratch, opts);
        let host: { param: Float64Array; buf: Float64Array } = {
          param: Float64Array.from(param0),
          buf: new Float64Array(n),
        };
        for (const [step, gr] of grads.entries()) {
          // A clipped update (norm² 4 against max norm 0.5), then an unclipped one.
          const ns = step === 0 ? 4 : 0.01, st = adamwState(step + 1, 2e-3, 0.5);
          grad.write(gr);
          normSq.write(Float32Array.of(ns));
          state.write(st);
          p.run();
          const expected = muonStepCpu({ ...host, grad: gr }, rows, cols, ns, st, opts);
          const got = await param.readFloat(), before = host.param;
          const delta = got.map((w, i) => w - before[i]), want = expected.param.map((w, i) => w - before[i]);
          assertClose(delta, want, `update ${step + 1}: param change`, {
            atol: 2e-3 * maxAbs(want),
            rtol: 0,
          });
          assertClose(await buf.readFloat(), expected.buf, `update ${step + 1}: momentum`, {
            atol: 1e-6,
            rtol: 1e-5,
          });
          host = expected;
        }
      } finally {
        p.destroy();
        destroyMuonScratchPool(pool);
        for (const t of [param, grad, buf, normSq, state]) t.destroy();
      }
    },
  );
}

Deno.test("muon's Newton–Schulz update is near-orthogonal: every row of NS(g) has a squared norm near 1", () => {
  // With no momentum history, decay or clipping, the update is lr · adjust · NS(g): read NS(g) back from it.
  const rows = 16, cols = 48, n = rows * cols, lr = 1e-2;
  const opts = { ...MUON_DEFAULTS, weightDecay: 0, momentum: 0, lrRatio: 1 };
  const r = muonStepCpu(
    { param: new Float64Array(n), grad: randomArray(n, 9), buf: new Float64Array(n) },
    rows,
    cols,
    1,
    [lr, 1, 1, 0],
    opts,
  );
  const x = r.param.map((v) => -v / (lr * muonLrFactor(rows, cols, opts.adjustLr)));
  // X Xᵀ [rows, rows]: its eigenvalues are the squared singular values; check the diagonal and the spread.
  for (let i = 0; i < rows; i++) {
    let d = 0;
    for (let j = 0; j < cols; j++) d += x[i * cols + j] ** 2;
    assert.ok(d > 0.4 && d < 1.5, `row ${i}: ‖x_i‖² = ${d}`);
  }
});

Deno.test("muon takes the hidden matrices, not vectors, lm_head or embeddings; lr factors by shape", () => {
  assert.ok(isMuonMatrix("midlayer.self_attn.q_proj.weight", [128, 128]));
  assert.ok(isMuonMatrix("fc.weight", [128, 384]));
  assert.ok(!isMuonMatrix("lm_head.weight", [2048, 128]));
  assert.ok(!isMuonMatrix("embed_tokens.weight", [2048, 128]));
  assert.ok(!isMuonMatrix("norm.weight", [128]));
  assert.ok(!isMuonMatrix("w", [1, 128]));
  assert.equal(muonLrFactor(128, 512, "match_rms_adamw"), 0.2 * Math.sqrt(512));
  assert.equal(muonLrFactor(512, 128, "original"), 2);
  assert.equal(muonLrFactor(128, 512, "original"), 1);
});

/** One Muon update of a [rows, cols] matrix on `device`: the new param. */
async function oneUpdate(device: Gpu, rows: number, cols: number): Promise<Float32Array> {
  const n = rows * cols;
  const param = Tensor.fromArray(device, randomArray(n, 21, 0.5), [rows, cols], "f32", "w");
  const grad = Tensor.fromArray(device, randomArray(n, 22, 0.3), [rows, cols], "f32", "grad");
  const buf = Tensor.fromArray(device, randomArray(n, 23, 0.1), [rows, cols], "f32", "buf");
  const normSq = Tensor.fromArray(device, Float32Array.of(4), [1], "f32", "normSq");
  const state = Tensor.fromArray(device, adamwState(3, 2e-3, 0.5), [4], "f32", "state");
  // The pool also holds a larger shape: the matrix's scratch is a view of it.
  const pool = muonScratchPool(device, [[rows, cols], [rows + 8, cols + 8]]);
  const scratch = muonScratch(pool, rows, cols);
  const p = new Program(device, "muon");
  try {
    await muonStep(p, { param, grad, buf, normSq, state }, scratch, { ...MUON_DEFAULTS, lrRatio: 10 });
    p.run();
    return await param.readFloat();
  } finally {
    p.destroy();
    destroyMuonScratchPool(pool);
    for (const t of [param, grad, buf, normSq, state]) t.destroy();
  }
}

// [binding cap, rows, cols]: X in row blocks with A and P whole (64 KiB), then A and P split too (16 KiB).
for (const [cap, rows, cols] of [[65536, 40, 600], [65536, 600, 40], [16384, 80, 200], [16384, 200, 80]]) {
  const splitGram = cap === 16384;
  Deno.test(
    {
      name: `muon over one binding: [${rows}, ${cols}] in row blocks${splitGram ? ", A and P too," : ""} ` +
        `matches the reference`,
      ...needsGpu,
    },
    async () => {
      const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: cap } });
      try {
        const pool = muonScratchPool(small, [[rows, cols]]), scratch = muonScratch(pool, rows, cols);
        const xBlocks = scratch.x[0].blocks.length, gramBlocks = scratch.gram.blocks.length;
        destroyMuonScratchPool(pool);
        assert.ok(xBlocks >= 2, `X in ${xBlocks} row blocks`);
        assert.equal(gramBlocks > 1, splitGram || rows < cols, `A in ${gramBlocks} row blocks`);
        const n = rows * cols, param0 = randomArray(n, 21, 0.5);
        const want = muonStepCpu(
          { param: param0, grad: randomArray(n, 22, 0.3), buf: randomArray(n, 23, 0.1) },
          rows,
          cols,
          4,
          adamwState(3, 2e-3, 0.5),
          { ...MUON_DEFAULTS, lrRatio: 10 },
        ).param.map((w, i) => w - param0[i]);
        for (const [name, device] of [["row blocks", small], ["whole", gpu!]] as const) {
          const got = (await oneUpdate(device, rows, cols)).map((w, i) => w - param0[i]);
          assertClose(got, want, `${name}: param change`, { atol: 2e-3 * maxAbs(want), rtol: 0 });
        }
      } finally {
        small.destroy();
      }
    },
  );
}

Deno.test("muon plans a block tile only when a product splits a block's columns", () => {
  const limits = (cap: number) => ({
    maxStorageBufferBindingSize: cap,
    minStorageBufferOffsetAlignment: 256,
  });
  const tile = (rows: number, cols: number, cap: number) =>
    muonScratchShapes([[rows, cols]], limits(cap)).find(([label]) => label === "muon block tile")?.[1][0] ??
      0;
  assert.equal(tile(40, 600, 1 << 20), 0, "everything binds");
  assert.equal(tile(600, 40, 65536), 0, "a tall X in blocks, A whole: no column is split");
  assert.ok(tile(40, 600, 65536) > 0, "a wide X in blocks splits A's columns");
  assert.ok(tile(200, 80, 16384) * 4 <= 16384, "the tile binds");
});

Deno.test("muon's scratch pool is sized for the largest matrix, not one set per shape", () => {
  const limits = { maxStorageBufferBindingSize: 1 << 30, minStorageBufferOffsetAlignment: 256 };
  const sizes = new Map(muonScratchShapes([[128, 384], [384, 128], [64, 128]], limits));
  assert.deepEqual(sizes.get("muon update"), [128 * 384]);
  assert.deepEqual(sizes.get("muon gram"), [128 * 128]);
  assert.deepEqual(muonScratchShapes([], limits), []);
});
