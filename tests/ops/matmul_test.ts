import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { roundBf16, Tensor } from "../../lib/tensor.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import * as ew from "../../lib/ops/elementwise.ts";
import {
  DEFAULT_CPU_TILE,
  DEFAULT_GPU_TILE,
  linear,
  linearBackward,
  linearBackwardCpu,
  linearCpu,
  matmul,
  matmulCpu,
  type MatmulOptions,
  type MatmulTile,
  tileName,
} from "../../lib/ops/matmul.ts";

/**
 * Both kernel families, with tiles small enough that the test shapes span several tiles (small kernels also
 * compile fast; the default CPU tile comes from the same generator and is checked on its own below).
 */
const TILES: MatmulTile[] = [
  { kind: "regtile", tm: 8, tn4: 2 },
  { kind: "regtile", tm: 4, tn4: 1 },
  { kind: "tiled", bm: 16, bn: 16, bk: 8 },
];

/** [M, N, K]: odd sizes, 1, sizes larger than a tile, and shapes that divide the tiles exactly. */
const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [3, 5, 7],
  [17, 65, 33],
  [65, 3, 130],
  [32, 64, 16],
];

interface Case {
  batch: number;
  batchedB: boolean;
  M: number;
  N: number;
  K: number;
  opts: MatmulOptions;
  bType?: "f32" | "f16" | "bf16";
}

/** A case's operands on the host (B rounded as stored), their shapes, and the output's prior contents. */
function caseData(c: Case, seed: number) {
  const { batch, M, N, K, opts } = c;
  const aShape = opts.transA ? [K, M] : [M, K];
  const bShape = opts.transB ? [N, K] : [K, N];
  const aFull = batch > 1 ? [batch, ...aShape] : aShape;
  const bFull = c.batchedB ? [batch, ...bShape] : bShape;
  const outShape = batch > 1 ? [batch, M, N] : [M, N];
  const bType = c.bType ?? "f32";
  let bHost = randomArray(bFull.reduce((x, y) => x * y, 1), seed + 1);
  if (bType === "bf16") bHost = bHost.map(roundBf16);
  if (bType === "f16") bHost = Float32Array.from(Float16Array.from(bHost));
  const aHost = randomArray(aFull.reduce((x, y) => x * y, 1), seed);
  const prev = randomArray(outShape.reduce((x, y) => x * y, 1), seed + 2);
  return { aHost, aFull, bHost, bFull, bType, prev, outShape };
}

/** The case's tensors on the GPU. */
function caseTensors(d: ReturnType<typeof caseData>): [Tensor, Tensor, Tensor] {
  const g = gpu!;
  return [
    Tensor.fromArray(g, d.aHost, d.aFull, "f32", "a"),
    Tensor.fromArray(g, d.bHost, d.bFull, d.bType, "b"),
    Tensor.fromArray(g, d.prev, d.outShape, "f32", "out"),
  ];
}

/** Runs one product on the GPU and compares it with the CPU reference (B rounded as stored). */
async function check(c: Case, seed: number, label: string, tol = { atol: 2e-5, rtol: 2e-4 }) {
  const d = caseData(c, seed);
  const [a, b, out] = caseTensors(d);
  await runOnce(gpu!, label, (p) => matmul(p, a, b, out, c.opts));
  const expected = matmulCpu(d.aHost, d.aFull, d.bHost, d.bFull, {
    transA: c.opts.transA,
    transB: c.opts.transB,
    alpha: c.opts.alpha,
    out: c.opts.accumulate ? d.prev : undefined,
  });
  assertClose(await out.read(), expected, label, tol);
  for (const t of [a, b, out]) t.destroy();
}

Deno.test({
  name: "matmul: NN, NT, TN, TT vs CPU on odd and tile-sized shapes, every tile kind",
  ...needsGpu,
}, async () => {
  let seed = 1;
  for (const tile of TILES) {
    for (const [M, N, K] of SHAPES) {
      for (const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]]) {
        const opts = { transA, transB, tile, splitK: 1 };
        await check(
          { batch: 1, batchedB: false, M, N, K, opts },
          seed++,
          `${tileName(tile)} ${transA ? "T" : "N"}${transB ? "T" : "N"} ${M}x${N}x${K}`,
        );
      }
    }
  }
});

Deno.test({ name: "matmul: the default tiles on aligned and odd shapes", ...needsGpu }, async () => {
  let seed = 50;
  const cases: Array<[number, number, number, boolean, boolean]> = [
    [64, 256, 32, false, false], // divides the tiles: vec4 loads, unchecked tiled kernel
    [33, 130, 36, false, true], // ragged M and N
    [36, 65, 9, true, false], // odd K: scalar loads
  ];
  // The default CPU tile is a large unrolled kernel (seconds to compile on lavapipe): one aligned case.
  for (const [tile, shapes] of [[DEFAULT_CPU_TILE, cases.slice(0, 1)], [DEFAULT_GPU_TILE, cases]] as const) {
    for (const [M, N, K, transA, transB] of shapes) {
      const opts = { transA, transB, tile, splitK: 1 };
      await check(
        { batch: 1, batchedB: false, M, N, K, opts },
        seed++,
        `${tileName(tile)} ${transA ? "T" : "N"}${transB ? "T" : "N"} ${M}x${N}x${K}`,
      );
    }
  }
});

Deno.test({ name: "matmul: batched, broadcast B, accumulate and alpha", ...needsGpu }, async () => {
  let seed = 100;
  for (
    const tile of [{ kind: "regtile", tm: 8, tn4: 2 }, {
      kind: "tiled",
      bm: 16,
      bn: 16,
      bk: 8,
    }] as MatmulTile[]
  ) {
    for (const [M, N, K] of [[17, 33, 9], [8, 32, 64]]) {
      for (const batchedB of [true, false]) {
        for (const transB of [false, true]) {
          const opts = { transB, alpha: -0.75, accumulate: true, tile };
          await check(
            { batch: 3, batchedB, M, N, K, opts },
            seed++,
            `${tileName(tile)} batch 3 ${batchedB ? "batched" : "shared"} B ${
              transB ? "NT" : "NN"
            } ${M}x${N}x${K}`,
          );
        }
      }
      await check(
        { batch: 2, batchedB: true, M, N, K, opts: { transA: true, alpha: 2, tile } },
        seed++,
        "TN batch 2",
      );
    }
  }
});

Deno.test(
  { name: "matmul: split-K (forced and chosen) matches the unsplit product", ...needsGpu },
  async () => {
    let seed = 200;
    for (
      const tile of [{ kind: "regtile", tm: 8, tn4: 2 }, {
        kind: "tiled",
        bm: 16,
        bn: 16,
        bk: 8,
      }] as MatmulTile[]
    ) {
      for (const splitK of [2, 3, 7]) {
        for (const accumulate of [false, true]) {
          const opts = { transA: true, splitK, accumulate, alpha: 0.5, tile };
          await check(
            { batch: 1, batchedB: false, M: 13, N: 20, K: 101, opts },
            seed++,
            `split ${splitK} ${tileName(tile)}`,
          );
        }
      }
      await check(
        { batch: 2, batchedB: false, M: 6, N: 10, K: 77, opts: { splitK: 4, accumulate: true, tile } },
        seed++,
        "split 4 batched, shared B",
      );
      // A tall, skinny contraction: the heuristic splits it.
      const g = gpu!;
      const [M, N, K] = [8, 12, 4096];
      const aHost = randomArray(K * M, seed), bHost = randomArray(K * N, seed + 1);
      const a = Tensor.fromArray(g, aHost, [K, M], "f32", "a");
      const b = Tensor.fromArray(g, bHost, [K, N], "f32", "b");
      const out = Tensor.empty(g, [M, N], "f32", "out");
      const p = new Program(g, "tall");
      await matmul(p, a, b, out, { transA: true, tile });
      assert.deepEqual(
        p.dispatches.map((d) => d.label.split(".")[0] + (d.label.endsWith("splitk_reduce") ? ".reduce" : "")),
        ["matmul", "matmul.reduce"],
        "a 8x12 product over K = 4096 is split",
      );
      await p.runChecked();
      assertClose(await out.read(), matmulCpu(aHost, [K, M], bHost, [K, N], { transA: true }), "tall split", {
        atol: 1e-4,
        rtol: 1e-4,
      });
      p.destroy();
      for (const t of [a, b, out]) t.destroy();
    }
  },
);

/** Runs `c` with `tile`: the output (to compare two tiles' results bit for bit) and the kernels dispatched. */
async function product(
  c: Case,
  tile: MatmulTile,
  seed: number,
): Promise<{ out: Float32Array; kernels: string[] }> {
  const [a, b, out] = caseTensors(caseData(c, seed));
  const p = new Program(gpu!, `${tileName(tile)} product`);
  try {
    await matmul(p, a, b, out, { ...c.opts, tile });
    await p.runChecked();
    return { out: await out.readFloat(), kernels: p.dispatches.map((d) => d.label) };
  } finally {
    p.destroy();
    for (const t of [a, b, out]) t.destroy();
  }
}

Deno.test(
  { name: "matmul: texture operands give the storage kernel's result bit for bit", ...needsGpu },
  async () => {
    const storage: MatmulTile = { kind: "regtile", tm: 8, tn4: 2 };
    const textures: MatmulTile = { ...storage, textures: true };
    const cases: Array<[string, Case]> = [
      ["NN", { batch: 1, batchedB: false, M: 24, N: 68, K: 36, opts: {} }],
      ["NT", { batch: 1, batchedB: false, M: 17, N: 33, K: 40, opts: { transB: true } }],
      ["TN", { batch: 1, batchedB: false, M: 20, N: 64, K: 12, opts: { transA: true } }],
      ["TT", { batch: 1, batchedB: false, M: 16, N: 9, K: 28, opts: { transA: true, transB: true } }],
      ["bf16 B", { batch: 1, batchedB: false, M: 9, N: 72, K: 32, opts: { transB: true }, bType: "bf16" }],
      ["batched, accumulate, alpha", {
        batch: 3,
        batchedB: true,
        M: 12,
        N: 40,
        K: 20,
        opts: { accumulate: true, alpha: 0.5 },
      }],
      ["broadcast B, split-K", { batch: 2, batchedB: false, M: 24, N: 72, K: 2048, opts: { splitK: 4 } }],
      // Over one texture row (8192 texels): A and B are 2 rows and a part.
      ["over texture rows", { batch: 1, batchedB: false, M: 72, N: 72, K: 1024, opts: {} }],
    ];
    if (gpu!.features.shaderF16) {
      cases.push(["f16 B", { batch: 1, batchedB: false, M: 16, N: 72, K: 16, opts: {}, bType: "f16" }]);
    }
    let seed = 700;
    for (const [label, c] of cases) {
      const want: Float32Array = (await product(c, storage, seed)).out;
      const { out: got, kernels } = await product(c, textures, seed);
      seed += 3;
      assert.ok(
        kernels.some((k) => k.startsWith("texels.pack")),
        `${label}: no packing in ${kernels}`,
      );
      assert.equal(got.length, want.length, label);
      for (let i = 0; i < want.length; i++) {
        if (!Object.is(got[i], want[i])) {
          assert.fail(
            `${label}: element ${i} is ${got[i]}, storage gave ${want[i]}`,
          );
        }
      }
    }
  },
);

Deno.test({ name: "matmul: B is packed only when several row tiles read it", ...needsGpu }, async () => {
  const tile: MatmulTile = { kind: "regtile", tm: 8, tn4: 2, textures: true };
  const packed = async (M: number, N: number) => {
    const { kernels } = await product({ batch: 1, batchedB: false, M, N, K: 32, opts: {} }, tile, 900);
    return kernels.filter((k) => k.startsWith("texels.pack")).length;
  };
  assert.equal(await packed(2, 128), 1); // A (every lane reads its rows), not B (one row tile)
  assert.equal(await packed(24, 32), 2); // and B, read by three row tiles
});

Deno.test({ name: "matmul: bf16 and f16 B, unpacked in the loader", ...needsGpu }, async () => {
  const types: Array<"bf16" | "f16"> = ["bf16"];
  if (gpu!.features.shaderF16) types.push("f16");
  else console.log("matmul f16 B: skipped, the device lacks shader-f16");
  let seed = 300;
  for (const bType of types) {
    // Small tiles: the loaders are what differs from the f32 cases above, and small kernels compile fast.
    for (
      const tile of [{ kind: "regtile", tm: 8, tn4: 2 }, {
        kind: "tiled",
        bm: 16,
        bn: 16,
        bk: 8,
      }] as MatmulTile[]
    ) {
      for (const [M, N, K] of [[17, 65, 33], [16, 64, 32]]) {
        for (const transB of [false, true]) {
          await check(
            { batch: 1, batchedB: false, M, N, K, opts: { transB, tile }, bType },
            seed++,
            `${bType} B ${tileName(tile)} ${transB ? "NT" : "NN"} ${M}x${N}x${K}`,
          );
        }
      }
      await check(
        {
          batch: 2,
          batchedB: false,
          M: 5,
          N: 12,
          K: 8,
          opts: { transB: true, accumulate: true, tile },
          bType,
        },
        seed++,
        `${bType} shared B batch 2`,
      );
    }
  }
});

Deno.test({ name: "linear and linearBackward vs CPU reference", ...needsGpu }, async () => {
  const g = gpu!;
  let seed = 400;
  for (const [rows, inF, outF] of [[5, 7, 3], [130, 64, 24]]) {
    const x = randomArray(rows * inF, seed++),
      w = randomArray(outF * inF, seed++),
      dy = randomArray(rows * outF, seed++);
    const prevDx = randomArray(rows * inF, seed++), prevDw = randomArray(outF * inF, seed++);
    const tx = Tensor.fromArray(g, x, [rows, inF], "f32", "x");
    const tw = Tensor.fromArray(g, w, [outF, inF], "f32", "w");
    const tdy = Tensor.fromArray(g, dy, [rows, outF], "f32", "dy");
    const ty = Tensor.empty(g, [rows, outF], "f32", "y");
    const tdx = Tensor.fromArray(g, prevDx, [rows, inF], "f32", "dx");
    const tdw = Tensor.fromArray(g, prevDw, [outF, inF], "f32", "dw");
    const p = new Program(g, "linear");
    await linear(p, tx, tw, ty);
    await linearBackward(p, tdy, tx, tw, tdx, tdw, {
      accumulateDx: true,
      accumulateDw: true,
    });
    await p.runChecked();
    const tol = { atol: 5e-5, rtol: 2e-4 };
    assertClose(await ty.read(), linearCpu(x, w, rows, inF, outF), `linear y ${rows}x${inF}x${outF}`, tol);
    const [dx, dw] = linearBackwardCpu(dy, x, w, rows, inF, outF);
    assertClose(await tdx.read(), dx.map((v, i) => v + prevDx[i]), `linear dx ${rows}x${inF}x${outF}`, tol);
    assertClose(await tdw.read(), dw.map((v, i) => v + prevDw[i]), `linear dw ${rows}x${inF}x${outF}`, tol);
    p.destroy();
    for (const t of [tx, tw, tdy, ty, tdx, tdw]) t.destroy();
  }
});

Deno.test(
  { name: "linearBackward vs central finite differences (f64) on a tiny shape", ...needsGpu },
  async () => {
    const g = gpu!;
    const [rows, inF, outF] = [3, 4, 5];
    const x = randomArray(rows * inF, 500),
      w = randomArray(outF * inF, 501),
      gy = randomArray(rows * outF, 502);
    // L(x, W) = Σ_{r,o} gy[r,o]·y[r,o] with y = x·Wᵀ, so dL/dy = gy; evaluated in f64.
    const loss = (xs: Float64Array, ws: Float64Array) => {
      let s = 0;
      for (let r = 0; r < rows; r++) {
        for (let o = 0; o < outF; o++) {
          let y = 0;
          for (let i = 0; i < inF; i++) y += xs[r * inF + i] * ws[o * inF + i];
          s += gy[r * outF + o] * y;
        }
      }
      return s;
    };
    const numeric = (which: "x" | "w") => {
      const xs = Float64Array.from(x), ws = Float64Array.from(w);
      const v = which === "x" ? xs : ws;
      const h = 1e-3;
      return Float64Array.from(v, (_, i) => {
        const keep = v[i];
        v[i] = keep + h;
        const up = loss(xs, ws);
        v[i] = keep - h;
        const down = loss(xs, ws);
        v[i] = keep;
        return (up - down) / (2 * h);
      });
    };
    const tx = Tensor.fromArray(g, x, [rows, inF], "f32", "x");
    const tw = Tensor.fromArray(g, w, [outF, inF], "f32", "w");
    const tdy = Tensor.fromArray(g, gy, [rows, outF], "f32", "dy");
    const tdx = Tensor.empty(g, [rows, inF], "f32", "dx");
    const tdw = Tensor.empty(g, [outF, inF], "f32", "dw");
    await runOnce(g, "linear backward", async (p) => {
      await linearBackward(p, tdy, tx, tw, tdx, tdw);
    });
    assertClose(await tdx.read(), numeric("x"), "dx vs finite differences", { atol: 1e-4, rtol: 1e-3 });
    assertClose(await tdw.read(), numeric("w"), "dw vs finite differences", { atol: 1e-4, rtol: 1e-3 });
    // Only dW, the weights in bf16 (frozen target weights still give dx).
    const twb = Tensor.fromArray(g, w, [outF, inF], "bf16", "w bf16");
    await runOnce(g, "linear backward dx only", async (p) => {
      await linearBackward(p, tdy, tx, twb, tdx, null);
    });
    const [dxRef] = linearBackwardCpu(gy, x, w.map(roundBf16), rows, inF, outF);
    assertClose(await tdx.read(), dxRef, "dx with bf16 W", { atol: 1e-5, rtol: 1e-4 });
    for (const t of [tx, tw, twb, tdy, tdx, tdw]) t.destroy();
  },
);

Deno.test({ name: "matmul: shape and dtype errors before any dispatch", ...needsGpu }, async () => {
  const g = gpu!;
  const t = (shape: number[], dtype: "f32" | "i32" | "bf16" = "f32", label = "t") =>
    Tensor.empty(g, shape, dtype, label);
  const p = new Program(g, "bad");
  const both = (e: unknown) =>
    e instanceof ShapeError && /^matmul: /.test(e.message) && /\[4, 3\]/.test(e.message) &&
    /\[5, 6\]/.test(e.message);
  await assert.rejects(() => matmul(p, t([4, 3]), t([5, 6]), t([4, 6])), both);
  await assert.rejects(() => matmul(p, t([4, 3]), t([5, 6]), t([4, 6]), { transB: true }), both);
  await assert.rejects(() => matmul(p, t([4, 3]), t([3, 6]), t([4, 5])), /matmul: out .* expected \[4, 6\]/);
  await assert.rejects(() => matmul(p, t([2, 4, 3]), t([3, 3, 6]), t([2, 4, 6])), /batch sizes differ/);
  await assert.rejects(() => matmul(p, t([4, 3]), t([2, 3, 6]), t([4, 6])), /b is batched but a is not/);
  await assert.rejects(() => matmul(p, t([4, 3], "i32"), t([3, 6]), t([4, 6])), /matmul: a .* is i32/);
  await assert.rejects(() => matmul(p, t([4, 3]), t([3, 6], "i32"), t([4, 6])), /matmul: b .* is i32/);
  await assert.rejects(
    () => linear(p, t([4, 3]), t([6, 4]), t([4, 6])),
    /matmul: a .* \[4, 3\] and b .* \[6, 4\]/,
  );
  await assert.rejects(
    () => linearBackward(p, t([4, 6]), t([4, 3]), t([6, 5]), t([4, 3]), null),
    /linearBackward: dy .* \[4, 6\], x .* \[4, 3\] and w .* \[6, 5\]/,
  );
  await assert.rejects(() => matmul(p, t([4, 3]), t([3, 6]), t([4, 6]), { splitK: 0 }), /splitK/);
  assert.equal(p.dispatches.length, 0);
});

Deno.test(
  { name: "matmul: an addend gives the product then accumulate bit for bit, and the CPU sum", ...needsGpu },
  async () => {
    const g = gpu!;
    const tiles: Array<[string, MatmulTile, number | undefined]> = [
      ["regtile, textures (fused)", { kind: "regtile", tm: 8, tn4: 2, textures: true }, undefined],
      ["regtile, storage (fused)", { kind: "regtile", tm: 8, tn4: 2 }, undefined],
      ["regtile, split K (unfused)", { kind: "regtile", tm: 8, tn4: 2 }, 2],
      ["tiled (unfused)", { kind: "tiled", bm: 16, bn: 16, bk: 8 }, undefined],
    ];
    const [M, N, K] = [20, 36, 24];
    const aHost = randomArray(M * K, 61), wHost = randomArray(N * K, 62), dHost = randomArray(M * N, 63);
    const want = matmulCpu(aHost, [M, K], wHost, [N, K], { transB: true, out: dHost });
    for (const [label, tile, splitK] of tiles) {
      const a = Tensor.fromArray(g, aHost, [M, K], "f32", "a");
      const w = Tensor.fromArray(g, wHost, [N, K], "f32", "w");
      const d = Tensor.fromArray(g, dHost, [M, N], "f32", "d");
      const [fused, twoPass] = [0, 1].map((i) => Tensor.empty(g, [M, N], "f32", `out ${i}`));
      const p = new Program(g, label);
      const opts = { transB: true, tile, splitK };
      await matmul(p, a, w, fused, { ...opts, addend: d });
      await matmul(p, a, w, twoPass, opts);
      await ew.accumulate(p, twoPass, d);
      await p.runChecked();
      const [got, ref] = [await fused.readFloat(), await twoPass.readFloat()];
      assert.ok(got.every((x, i) => Object.is(x, ref[i])), `${label}: differs from product + accumulate`);
      assertClose(got, want, label, { atol: 1e-5, rtol: 1e-5 });
      const fusedKernel = p.dispatches.some((k) => k.label.endsWith("+addend"));
      assert.equal(fusedKernel, label.endsWith("(fused)"), `${label}: ${p.dispatches.map((k) => k.label)}`);
      p.destroy();
      for (const t of [a, w, d, fused, twoPass]) t.destroy();
    }
    const p = new Program(g, "bad addend");
    const t = Tensor.empty(g, [4, 4], "f32", "t");
    await assert.rejects(
      () => matmul(p, t, t, t, { addend: Tensor.empty(g, [4, 3], "f32", "short") }),
      ShapeError,
    );
    p.destroy();
    t.destroy();
  },
);
