import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  RMSNORM_ROWS_PER_BLOCK,
  rmsnormBackward,
  rmsnormBackwardCpu,
  rmsnormCpu,
  rmsnormForward,
  type RmsnormKernel,
  rmsnormScratchSize,
} from "../../lib/ops/rmsnorm.ts";

const EPS = 1e-5;

function upload(data: ArrayLike<number>, shape: number[], label: string): Tensor {
  return Tensor.fromArray(gpu!, Float32Array.from(data), shape, "f32", label);
}

/** Runs forward and backward on the GPU and returns everything read back. */
async function runGpu(
  x: Float32Array,
  w: Float32Array,
  dy: Float32Array,
  rows: number,
  hidden: number,
  kernel?: RmsnormKernel,
) {
  const g = gpu!;
  const tx = upload(x, [rows, hidden], "x"),
    tw = upload(w, [hidden], "w"),
    tdy = upload(dy, [rows, hidden], "dy");
  const ty = Tensor.empty(g, [rows, hidden], "f32", "y");
  const trstd = Tensor.empty(g, [rows], "f32", "rstd");
  const tdx = Tensor.empty(g, [rows, hidden], "f32", "dx");
  const tdw = Tensor.empty(g, [hidden], "f32", "dw");
  await runOnce(g, "rmsnorm", async (p) => {
    await rmsnormForward(p, tx, tw, ty, trstd, { eps: EPS, kernel });
    await rmsnormBackward(p, tdy, tx, tw, trstd, tdx, tdw, { kernel });
  });
  const result = { y: await ty.read(), rstd: await trstd.read(), dx: await tdx.read(), dw: await tdw.read() };
  for (const t of [tx, tw, tdy, ty, trstd, tdx, tdw]) t.destroy();
  return result;
}

Deno.test({ name: "rmsnorm: forward and backward vs CPU on several shapes", ...needsGpu }, async () => {
  // one element, odd widths, widths above one workgroup (strided), rows spanning several dw blocks
  const shapes: Array<[number, number]> = [[1, 1], [3, 7], [5, 128], [2, 1000], [3, 8192], [130, 33], [
    200,
    96,
  ]];
  for (const [rows, hidden] of shapes) {
    const x = randomArray(rows * hidden, rows + hidden, 2);
    const w = randomArray(hidden, 7 * hidden, 1).map((v) => 1 + 0.5 * v);
    const dy = randomArray(rows * hidden, 3 * rows + hidden);
    const want = rmsnormCpu(x, w, rows, hidden, EPS);
    const grads = rmsnormBackwardCpu(dy, x, w, rows, hidden, EPS);
    // Both row kernel families, whatever the adapter's default.
    for (const kernel of ["workgroup", "rows"] as const) {
      const got = await runGpu(x, w, dy, rows, hidden, kernel);
      const tag = `[${rows}, ${hidden}] ${kernel}`;
      assertClose(got.y, want.y, `y ${tag}`, { atol: 1e-5, rtol: 1e-4 });
      assertClose(got.rstd, want.rstd, `rstd ${tag}`, { atol: 1e-5, rtol: 1e-4 });
      assertClose(got.dx, grads.dx, `dx ${tag}`, { atol: 1e-4, rtol: 1e-3 });
      assertClose(got.dw, grads.dw, `dw ${tag}`, { atol: 1e-4, rtol: 1e-3 });
    }
  }
});

Deno.test(
  { name: "rmsnorm: backward accumulates, with a caller's scratch or a created one", ...needsGpu },
  async () => {
    const g = gpu!;
    for (const rows of [RMSNORM_ROWS_PER_BLOCK, 3 * RMSNORM_ROWS_PER_BLOCK + 5]) {
      const hidden = 40;
      const x = randomArray(rows * hidden, 1), w = randomArray(hidden, 2), dy = randomArray(rows * hidden, 3);
      const dx0 = randomArray(rows * hidden, 4), dw0 = randomArray(hidden, 5);
      const tx = upload(x, [rows, hidden], "x"),
        tw = upload(w, [hidden], "w"),
        tdy = upload(dy, [rows, hidden], "dy");
      const trstd = upload(rmsnormCpu(x, w, rows, hidden, EPS).rstd, [rows], "rstd");
      const tdx = upload(dx0, [rows, hidden], "dx"), tdw = upload(dw0, [hidden], "dw");
      const size = rmsnormScratchSize(rows, hidden);
      assert.equal(
        size,
        rows > RMSNORM_ROWS_PER_BLOCK ? Math.ceil(rows / RMSNORM_ROWS_PER_BLOCK) * hidden : 0,
      );
      const scratch = size > 0 ? Tensor.empty(g, [size + 3], "f32", "scratch") : undefined;
      await runOnce(g, "rmsnorm accumulate", async (p) => {
        await rmsnormBackward(p, tdy, tx, tw, trstd, tdx, tdw, {
          accumulateDx: true,
          accumulateDw: true,
          scratch,
        });
      });
      const want = rmsnormBackwardCpu(dy, x, w, rows, hidden, EPS);
      assertClose(await tdx.read(), want.dx.map((v, i) => v + dx0[i]), `accumulated dx rows=${rows}`, {
        atol: 1e-4,
        rtol: 1e-3,
      });
      assertClose(await tdw.read(), want.dw.map((v, i) => v + dw0[i]), `accumulated dw rows=${rows}`, {
        atol: 1e-4,
        rtol: 1e-3,
      });
      // without a scratch the program gets one (only when two stages are needed: a reduce dispatch)
      const p = new Program(g, "rmsnorm created scratch");
      await rmsnormBackward(p, tdy, tx, tw, trstd, tdx, tdw);
      assert.equal(p.dispatches.some((d) => d.label === "rmsnorm.dw_reduce"), size > 0);
      await p.runChecked();
      assertClose(await tdw.read(), want.dw, `dw rows=${rows}`, { atol: 1e-4, rtol: 1e-3 });
      p.destroy();
      for (const t of [tx, tw, tdy, trstd, tdx, tdw, scratch]) t?.destroy();
    }
  },
);

Deno.test("rmsnorm: CPU backward matches central differences of the CPU forward", () => {
  const rows = 2, hidden = 5, eps = 1e-3;
  const x = Float64Array.from(randomArray(rows * hidden, 11, 1.5));
  const w = Float64Array.from(randomArray(hidden, 12)).map((v) => 1 + v);
  const dy = Float64Array.from(randomArray(rows * hidden, 13));
  const loss = (xx: ArrayLike<number>, ww: ArrayLike<number>) =>
    rmsnormCpu(xx, ww, rows, hidden, eps).y.reduce((s, v, i) => s + v * dy[i], 0);
  const { dx, dw } = rmsnormBackwardCpu(dy, x, w, rows, hidden, eps);
  const h = 1e-6;
  const numeric = (arr: Float64Array, f: () => number) =>
    Array.from(arr, (_, i) => {
      const keep = arr[i];
      arr[i] = keep + h;
      const up = f();
      arr[i] = keep - h;
      const down = f();
      arr[i] = keep;
      return (up - down) / (2 * h);
    });
  assertClose(dx, numeric(x, () => loss(x, w)), "dx vs finite differences", { atol: 1e-7, rtol: 1e-6 });
  assertClose(dw, numeric(w, () => loss(x, w)), "dw vs finite differences", { atol: 1e-7, rtol: 1e-6 });
});

Deno.test({ name: "rmsnorm: matches PyTorch autograd (golden)", ...needsGpu }, async () => {
  const gold = Golden.load("layers");
  const [rows, hidden] = gold.shape("rmsnorm.x");
  const x = gold.f32("rmsnorm.x"), w = gold.f32("rmsnorm.w"), dy = gold.f32("rmsnorm.dy");
  const g = gpu!;
  const tx = upload(x, [rows, hidden], "x"),
    tw = upload(w, [hidden], "w"),
    tdy = upload(dy, [rows, hidden], "dy");
  const ty = Tensor.empty(g, [rows, hidden], "f32", "y"), trstd = Tensor.empty(g, [rows], "f32", "rstd");
  const tdx = Tensor.empty(g, [rows, hidden], "f32", "dx"), tdw = Tensor.empty(g, [hidden], "f32", "dw");
  await runOnce(g, "rmsnorm golden", async (p) => {
    await rmsnormForward(p, tx, tw, ty, trstd, { eps: 1e-6 });
    await rmsnormBackward(p, tdy, tx, tw, trstd, tdx, tdw);
  });
  assertClose(await ty.read(), gold.f32("rmsnorm.y"), "golden y", { atol: 1e-5, rtol: 1e-4 });
  assertClose(await tdx.read(), gold.f32("rmsnorm.dx"), "golden dx", { atol: 1e-4, rtol: 1e-4 });
  assertClose(await tdw.read(), gold.f32("rmsnorm.dw"), "golden dw", { atol: 1e-5, rtol: 1e-4 });
  for (const t of [tx, tw, tdy, ty, trstd, tdx, tdw]) t.destroy();
});

Deno.test({ name: "rmsnorm: shape and dtype errors come before any dispatch", ...needsGpu }, async () => {
  const g = gpu!;
  const x = Tensor.empty(g, [4, 8], "f32", "x"), w = Tensor.empty(g, [7], "f32", "w");
  const y = Tensor.empty(g, [4, 8], "f32", "y"), rstd = Tensor.empty(g, [4], "f32", "rstd");
  const wi = Tensor.empty(g, [8], "i32", "wi"), w8 = Tensor.empty(g, [8], "f32", "w8");
  const p = new Program(g, "bad rmsnorm");
  await assert.rejects(
    () => rmsnormForward(p, x, w, y, rstd, { eps: EPS }),
    /rmsnormForward: w \(w\) has shape \[7\], expected \[8\]/,
  );
  await assert.rejects(
    () => rmsnormForward(p, x, wi, y, rstd, { eps: EPS }),
    /w \(wi\) is i32, expected f32/,
  );
  const big = Tensor.empty(g, [200, 8], "f32", "big"), rstdBig = Tensor.empty(g, [200], "f32", "rstdBig");
  const small = Tensor.empty(g, [8], "f32", "small scratch");
  await assert.rejects(
    () => rmsnormBackward(p, big, big, w8, rstdBig, big, w8, { scratch: small }),
    (e: Error) => e instanceof ShapeError && /needs 32/.test(e.message),
  );
  assert.equal(p.dispatches.length, 0);
  for (const t of [x, w, y, rstd, wi, w8, big, rstdBig, small]) t.destroy();
});

Deno.test(
  { name: "rmsnorm: column blocks (y written, dy read) give the plain op's bits", ...needsGpu },
  async () => {
    const g = gpu!;
    // [rows, hidden, columns of the wide matrix, first column of the block]: vec4-aligned and not (an H that
    // is a multiple of 4 in an unaligned block runs the scalar kernel, which sums in another order).
    const cases: Array<[number, number, number, number]> = [[130, 32, 96, 32], [5, 7, 16, 6], [3, 6, 20, 2]];
    for (const kernel of ["rows", "workgroup"] as RmsnormKernel[]) {
      for (const [rows, hidden, cols, col0] of cases) {
        const x = randomArray(rows * hidden, rows + hidden, 2);
        const w = randomArray(hidden, 7 * hidden, 1).map((v) => 1 + 0.5 * v);
        const dy = randomArray(rows * hidden, 3 * rows + hidden);
        const wide = randomArray(rows * cols, 11 * rows + cols);
        for (let r = 0; r < rows; r++) wide.set(dy.subarray(r * hidden, (r + 1) * hidden), r * cols + col0);
        const plain = await runGpu(x, w, dy, rows, hidden, kernel);
        const tx = upload(x, [rows, hidden], "x"), tw = upload(w, [hidden], "w");
        const tWide = upload(wide, [rows, cols], "wide dy");
        const tOut = upload(wide, [rows, cols], "wide y");
        const trstd = Tensor.empty(g, [rows], "f32", "rstd");
        const tdx = Tensor.empty(g, [rows, hidden], "f32", "dx"),
          tdw = Tensor.empty(g, [hidden], "f32", "dw");
        await runOnce(g, "rmsnorm blocks", async (p) => {
          await rmsnormForward(p, tx, tw, { matrix: tOut, col0 }, trstd, { eps: EPS, kernel });
          await rmsnormBackward(p, { matrix: tWide, col0 }, tx, tw, trstd, tdx, tdw, { kernel });
        });
        const y = await tOut.readFloat(), dx = await tdx.readFloat(), dw = await tdw.readFloat();
        const what = `${kernel} ${rows}x${hidden} in [${rows}, ${cols}] at ${col0}`;
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < cols; c++) {
            const inBlock = c >= col0 && c < col0 + hidden;
            const want = inBlock ? plain.y[r * hidden + c - col0] : wide[r * cols + c];
            assert.equal(y[r * cols + c], want, `${what}: y[${r}, ${c}]`);
          }
        }
        assert.deepEqual(dx, Float32Array.from(plain.dx), `${what}: dx`);
        assert.deepEqual(dw, Float32Array.from(plain.dw), `${what}: dw`);
        for (const t of [tx, tw, tWide, tOut, trstd, tdx, tdw]) t.destroy();
      }
    }
  },
);

Deno.test(
  { name: "rmsnorm: dw four columns per invocation gives the scalar kernel's bits", ...needsGpu },
  async () => {
    const g = gpu!;
    // dy read plainly (vec4 dw kernel) and from a column block starting at column 2 (scalar dw kernel): the
    // weight gradient must agree bit for bit, with one block of rows, several, and a short last one.
    for (const rows of [5, RMSNORM_ROWS_PER_BLOCK, 2 * RMSNORM_ROWS_PER_BLOCK + 3]) {
      const hidden = 32, cols = 40, col0 = 2;
      const x = randomArray(rows * hidden, rows, 2), w = randomArray(hidden, 3, 1);
      const dy = randomArray(rows * hidden, rows + 1), wide = randomArray(rows * cols, rows + 2);
      for (let r = 0; r < rows; r++) wide.set(dy.subarray(r * hidden, (r + 1) * hidden), r * cols + col0);
      const tx = upload(x, [rows, hidden], "x"),
        tw = upload(w, [hidden], "w"),
        tdy = upload(dy, [rows, hidden], "dy");
      const tWide = upload(wide, [rows, cols], "wide dy"), trstd = Tensor.empty(g, [rows], "f32", "rstd");
      const y = Tensor.empty(g, [rows, hidden], "f32", "y"),
        dx = Tensor.empty(g, [rows, hidden], "f32", "dx");
      const dwVec4 = upload(new Float32Array(hidden).fill(0.5), [hidden], "dw vec4");
      const dwScalar = upload(new Float32Array(hidden).fill(0.5), [hidden], "dw scalar");
      await runOnce(g, "rmsnorm dw", async (p) => {
        await rmsnormForward(p, tx, tw, y, trstd, { eps: EPS });
        await rmsnormBackward(p, tdy, tx, tw, trstd, dx, dwVec4, { accumulateDw: true });
        await rmsnormBackward(p, { matrix: tWide, col0 }, tx, tw, trstd, dx, dwScalar, {
          accumulateDw: true,
        });
        const labels = p.dispatches.map((d) => d.label).filter((l) => l.startsWith("rmsnorm.dw_partials"));
        assert.deepEqual(labels, ["rmsnorm.dw_partials.vec4", "rmsnorm.dw_partials"]);
      });
      assert.deepEqual(await dwVec4.readFloat(), await dwScalar.readFloat(), `dw over ${rows} rows`);
      for (const t of [tx, tw, tdy, tWide, trstd, y, dx, dwVec4, dwScalar]) t.destroy();
    }
  },
);
