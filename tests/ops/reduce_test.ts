import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  argmax,
  argmaxCpu,
  globalNormPartialsSize,
  globalNormSquared,
  globalNormSquaredCpu,
  mean,
  rowSum,
  rowSumCpu,
  sum,
  sumCpu,
  sumPartialsSize,
} from "../../lib/ops/reduce.ts";
import type { RowKernel } from "../../lib/ops/softmax.ts";

/** Both kernel families of the per-row ops: every GPU result below is checked for each. */
const KERNELS: RowKernel[] = ["workgroup", "rows"];

Deno.test({ name: "reduce: argmax and rowSum vs CPU, with ties", ...needsGpu }, async () => {
  const g = gpu!;
  const shapes = [[1, 1], [5, 1], [3, 7], [4, 1000], [2, 2048], [3, 5000], [300, 7], [2, 3, 11], [19, 12]];
  for (const [s, shape] of shapes.entries()) {
    for (const kernel of KERNELS) {
      const cols = shape[shape.length - 1], n = shape.reduce((a, b) => a * b, 1), rows = n / cols;
      const x = randomArray(n, 100 + s, 4);
      for (let r = 0; r < rows; r += 2) {
        // Ties: the row maximum repeated at a later and at an earlier column; the earlier must win.
        const row = x.subarray(r * cols, (r + 1) * cols);
        const top = Math.max(...row) + 1;
        row[Math.floor(cols / 2)] = top;
        row[cols - 1] = top;
        row[Math.floor(cols / 3)] = top;
      }
      const tx = Tensor.fromArray(g, x, shape, "f32", "x");
      const ids = Tensor.empty(g, shape.slice(0, -1), "i32", "ids");
      const sums = Tensor.empty(g, [rows], "f32", "sums");
      await runOnce(g, "argmax", async (p) => {
        await argmax(p, tx, ids, { kernel });
        await rowSum(p, tx, sums, { kernel });
        const rowsLabels = p.dispatches.filter((d) => d.label.includes("_rows")).length;
        assert.equal(rowsLabels, kernel === "rows" ? 2 : 0, `${kernel} kernels recorded`);
      });
      const tag = `[${shape}] ${kernel}`;
      assert.deepEqual([...await ids.read()], [...argmaxCpu(x, cols)], `argmax ${tag}`);
      assertClose(await sums.read(), rowSumCpu(x, cols), `rowSum ${tag}`, { atol: 1e-4, rtol: 1e-5 });
      for (const t of [tx, ids, sums]) t.destroy();
    }
  }
});

Deno.test({ name: "reduce: argmax of NaN, infinities and signed zeros", ...needsGpu }, async () => {
  const g = gpu!;
  const narrow = [
    [1, NaN, 5, NaN], // the first NaN wins (torch.argmax)
    [-Infinity, -Infinity, -Infinity, -Infinity], // all equal: index 0
    [-0, 0, -1, -2], // -0 == 0: index 0
    [3, Infinity, Infinity, 2],
    [NaN, NaN, NaN, NaN],
  ];
  // Rows of 12 (three vec4 units in the rows kernels): winners in different lanes and units must merge in order.
  const wide = [
    [1, 2, 3, 4, 5, NaN, 7, NaN, 9, NaN, 0, 0], // first NaN at 5 (lane 1); later NaNs in lanes 3 and 1
    [0, 0, 0, 0, 0, 0, 9, 9, 9, 0, 0, 9], // ties across lanes 2, 3, 0 and 3: index 6
    [0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0, 9], // tie between lane 3 (3) and lane 0 of the next unit (4): 3
    [
      -Infinity,
      -Infinity,
      -Infinity,
      -Infinity,
      -Infinity,
      -Infinity,
      -Infinity,
      -Infinity,
      -Infinity,
      -1,
      -1,
      -2,
    ],
    [5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, NaN], // a NaN in the last column beats the larger first value
    [-0, -0, -0, -0, -0, -0, -0, -0, -0, -0, 0, -0], // all equal: 0
  ];
  for (const [rows, expected] of [[narrow, [1, 0, 0, 1, 0]], [wide, [5, 6, 3, 9, 11, 0]]] as const) {
    const cols = rows[0].length;
    const x = Float32Array.from(rows.flat());
    assert.deepEqual([...argmaxCpu(x, cols)], expected);
    for (const kernel of KERNELS) {
      const tx = Tensor.fromArray(g, x, [rows.length, cols], "f32", "x");
      const ids = Tensor.empty(g, [rows.length], "i32", "ids");
      await runOnce(g, "argmax special", (p) => argmax(p, tx, ids, { kernel }));
      assert.deepEqual([...await ids.read()], expected, `${cols} columns, ${kernel}`);
      tx.destroy();
      ids.destroy();
    }
  }
});

Deno.test(
  { name: "reduce: sum and mean, one and two stages, scale and accumulate", ...needsGpu },
  async () => {
    const g = gpu!;
    for (const n of [1, 7, 1000, 4096, 4097, 100_003]) {
      const x = randomArray(n, n);
      const tx = Tensor.fromArray(g, x, [n], "f32", "x");
      const partials = Tensor.empty(g, [sumPartialsSize(n)], "f32", "partials");
      const outs = [0, 1, 2, 3].map((i) => Tensor.fromArray(g, [10], [1], "f32", `out${i}`));
      await runOnce(g, "sum", async (p) => {
        await sum(p, tx, outs[0]);
        await sum(p, tx, outs[1], { partials, scale: -2 });
        await mean(p, tx, outs[2], { partials, accumulate: true });
        await mean(p, tx, outs[3]);
      });
      const exact = sumCpu(x);
      let abs = 0;
      for (const v of x) abs += Math.abs(v);
      const atol = 1e-6 * abs + 1e-6;
      assertClose(await outs[0].read(), [exact], `sum n=${n}`, { atol, rtol: 0 });
      assertClose(await outs[1].read(), [-2 * exact], `sum·(-2), two stages, n=${n}`, {
        atol: 2 * atol,
        rtol: 0,
      });
      assertClose(await outs[2].read(), [10 + exact / n], `10 + mean, two stages, n=${n}`, {
        atol: atol / n + 1e-6,
      });
      assertClose(await outs[3].read(), [exact / n], `mean n=${n}`, { atol: atol / n, rtol: 0 });
      for (const t of [tx, partials, ...outs]) t.destroy();
    }
  },
);

Deno.test(
  { name: "reduce: global norm² of many tensors, bit-identical on replay", ...needsGpu },
  async () => {
    const g = gpu!;
    const sizes = [1, 7, 4096, 5000, 100_003, 33];
    const arrays = sizes.map((n, i) => randomArray(n, 300 + i, 0.5));
    const tensors = arrays.map((a, i) => Tensor.fromArray(g, a, [a.length], "f32", `g${i}`));
    // A view at an offset inside a larger buffer counts only its own elements.
    const big = Tensor.fromArray(g, randomArray(512, 9, 100), [512], "f32", "big");
    const view = big.view(128, [64], "big[128:192]");
    const all = [...tensors, view];
    const partials = Tensor.empty(g, [globalNormPartialsSize(all)], "f32", "partials");
    assert.equal(partials.size, 1 + 1 + 1 + 2 + 25 + 1 + 1);
    const out = Tensor.empty(g, [1], "f32", "normSq");
    const p = new Program(g, "global norm");
    await globalNormSquared(p, all, partials, out);
    const runs: number[] = [];
    for (let i = 0; i < 3; i++) {
      await p.runChecked();
      runs.push((await out.read())[0]);
    }
    const viewValues = (await big.readFloat()).subarray(128, 192);
    const expected = globalNormSquaredCpu([...arrays, viewValues]);
    assertClose([runs[0]], [expected], "global norm²", { rtol: 1e-5 });
    assert.ok(runs.every((r) => Object.is(r, runs[0])), `replays differ: ${runs}`);
    p.destroy();
    for (const t of [...tensors, big, partials, out]) t.destroy();
  },
);

Deno.test({ name: "reduce: bad arguments are refused before dispatch", ...needsGpu }, async () => {
  const g = gpu!;
  const x = Tensor.empty(g, [3, 5000], "f32", "x");
  const f = Tensor.empty(g, [3], "f32", "f");
  const ids = Tensor.empty(g, [4], "i32", "ids");
  const one = Tensor.empty(g, [1], "f32", "one");
  const p = new Program(g, "refused");
  await assert.rejects(() => argmax(p, x, f), /argmax: out \(f\) is f32, expected i32/);
  await assert.rejects(() => argmax(p, x, ids), /argmax: out \(ids\) has shape \[4\], expected \[3\]/);
  await assert.rejects(
    () => rowSum(p, x, f, { kernel: "tiled" as RowKernel }),
    /rowSum: unknown kernel "tiled" \(expected "workgroup" or "rows"\)/,
  );
  await assert.rejects(() => sum(p, x, f), /sum: out \(f\) has shape \[3\], expected \[1\]/);
  await assert.rejects(
    () => sum(p, x, one, { partials: one }),
    /partials \(one\) \[1\] holds 1 values, 4 needed/,
  );
  await assert.rejects(() => globalNormSquared(p, [x, x], f, one), /holds 3 values, 8 needed/);
  await assert.rejects(() => globalNormSquared(p, [x], x, one), /must not share memory/);
  assert.equal(p.dispatches.length, 0);
  p.destroy();
  for (const t of [x, f, ids, one]) t.destroy();
});
