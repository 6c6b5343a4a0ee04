import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import {
  logSoftmaxBackward,
  logSoftmaxBackwardCpu,
  logSoftmaxCpu,
  logSoftmaxForward,
  type RowKernel,
  softmaxBackward,
  softmaxBackwardCpu,
  softmaxCpu,
  softmaxForward,
} from "../../lib/ops/softmax.ts";
import { rowKernelFor } from "../../lib/ops/variant.ts";

interface Outputs {
  y: Float32Array;
  logY: Float32Array;
  dx: Float32Array;
  logDx: Float32Array;
}

/** Both kernel families: every GPU result below is checked for each. */
const KERNELS: RowKernel[] = ["workgroup", "rows"];

/**
 * Runs the four ops on x and dy (shape `shape`) in one program with the `kernel` family and reads the outputs
 * back (checking that the family asked for is the one recorded).
 */
async function runAll(
  x: Float32Array<ArrayBuffer>,
  dy: Float32Array<ArrayBuffer>,
  shape: number[],
  kernel: RowKernel,
) {
  const g = gpu!;
  const tx = Tensor.fromArray(g, x, shape, "f32", "x");
  const tdy = Tensor.fromArray(g, dy, shape, "f32", "dy");
  const [y, logY, dx, logDx] = ["y", "logY", "dx", "logDx"].map((n) => Tensor.empty(g, shape, "f32", n));
  await runOnce(g, "softmax test", async (p) => {
    await softmaxForward(p, tx, y, { kernel });
    await logSoftmaxForward(p, tx, logY, { kernel });
    await softmaxBackward(p, tdy, y, dx, { kernel });
    await logSoftmaxBackward(p, tdy, logY, logDx, { kernel });
    const rowsLabels = p.dispatches.filter((d) => d.label.includes("_rows")).length;
    assert.equal(rowsLabels, kernel === "rows" ? 4 : 0, `${kernel} kernels recorded`);
  });
  const out: Outputs = {
    y: await y.readFloat(),
    logY: await logY.readFloat(),
    dx: await dx.readFloat(),
    logDx: await logDx.readFloat(),
  };
  for (const t of [tx, tdy, y, logY, dx, logDx]) t.destroy();
  return out;
}

Deno.test({ name: "softmax: forward and backward vs CPU, odd and large rows", ...needsGpu }, async () => {
  const shapes = [[1, 1], [4, 1], [3, 7], [5, 1000], [2, 2048], [3, 5000], [300, 7], [2, 3, 11], [19, 12]];
  for (const [i, shape] of shapes.entries()) {
    for (const kernel of KERNELS) {
      const cols = shape[shape.length - 1];
      const n = shape.reduce((a, b) => a * b, 1);
      const x = randomArray(n, 10 + i, 6);
      const dy = randomArray(n, 50 + i);
      const out = await runAll(x, dy, shape, kernel);
      const tag = `[${shape}] ${kernel}`;
      const y = softmaxCpu(x, cols), logY = logSoftmaxCpu(x, cols);
      assertClose(out.y, y, `softmax ${tag}`, { atol: 1e-7, rtol: 1e-5 });
      assertClose(out.logY, logY, `log_softmax ${tag}`, { atol: 2e-6, rtol: 1e-5 });
      assertClose(out.dx, softmaxBackwardCpu(dy, y, cols), `softmax backward ${tag}`, {
        atol: 1e-6,
        rtol: 1e-4,
      });
      assertClose(out.logDx, logSoftmaxBackwardCpu(dy, logY, cols), `log_softmax backward ${tag}`, {
        atol: 1e-5,
        rtol: 1e-4,
      });
      if (cols === 1) {
        assert.ok(
          out.y.every((v) => v === 1) && out.logY.every((v) => v === 0),
          "a single column is certain",
        );
      }
    }
  }
});

Deno.test({ name: "softmax: huge, tiny and -inf logits stay finite", ...needsGpu }, async () => {
  for (const cols of [9, 12]) {
    for (const kernel of KERNELS) { // 12: the rows kernels' vec4 path
      const base = randomArray(cols, 3, 2);
      const x = new Float32Array(3 * cols);
      for (let c = 0; c < cols; c++) {
        x[c] = base[c] + 80_000; // exp(x) would overflow without the max subtraction
        x[cols + c] = base[c] - 80_000; // and underflow to 0/0
        x[2 * cols + c] = c % 3 === 0 ? -Infinity : base[c]; // masked-out columns
      }
      const out = await runAll(x, randomArray(3 * cols, 4), [3, cols], kernel);
      const tag = `${cols} columns, ${kernel}`;
      assertClose(
        out.y.subarray(0, cols),
        softmaxCpu(x.subarray(0, cols), cols),
        `softmax of +80000, ${tag}`,
        {
          atol: 1e-6,
        },
      );
      assertClose(
        out.y.subarray(cols, 2 * cols),
        softmaxCpu(x.subarray(cols, 2 * cols), cols),
        `of -80000, ${tag}`,
        {
          atol: 1e-6,
        },
      );
      assertClose(
        out.y.subarray(2 * cols),
        softmaxCpu(x.subarray(2 * cols), cols),
        `softmax with -inf, ${tag}`,
        {
          atol: 1e-7,
        },
      );
      assert.ok(out.y.every(Number.isFinite), tag);
      assert.equal(out.logY[2 * cols], -Infinity, tag);
    }
  }
});

Deno.test({ name: "softmax: more rows than one grid dimension holds", ...needsGpu }, async () => {
  // Both families on a grid folded into 65537 = 32769 × 2 workgroups: one workgroup past the last row must do
  // nothing. (One dispatch each: 65k workgroups of 256 invocations take seconds on llvmpipe.) The workgroup
  // kernels run one row per workgroup, the rows kernels ROWS_WG = 8 rows (here of 4 columns: vec4 loads).
  const g = gpu!;
  for (const [kernel, rows, cols] of [["workgroup", 65_537, 2], ["rows", 8 * 65_536 + 1, 4]] as const) {
    const x = randomArray(rows * cols, 7, 3);
    const tx = Tensor.fromArray(g, x, [rows, cols], "f32", "x");
    const y = Tensor.fromArray(
      g,
      new Float32Array(rows * cols + 64).fill(-1),
      [rows * cols + 64],
      "f32",
      "y",
    );
    await runOnce(g, "softmax folded", (p) => logSoftmaxForward(p, tx, y.view(0, [rows, cols]), { kernel }));
    const out = await y.readFloat();
    assertClose(
      out.subarray(0, rows * cols),
      logSoftmaxCpu(x, cols),
      `log_softmax (folded grid, ${kernel})`,
      {
        atol: 2e-6,
      },
    );
    assert.ok(
      out.subarray(rows * cols).every((v) => v === -1),
      `nothing written past the last row (${kernel})`,
    );
    tx.destroy();
    y.destroy();
  }
});

Deno.test({ name: "softmax: backward matches central differences", ...needsGpu }, async () => {
  const shape = [3, 5], cols = 5, n = 15, h = 1e-5;
  const x = randomArray(n, 21, 2), w = randomArray(n, 22);
  for (const kernel of KERNELS) {
    const out = await runAll(x, w, shape, kernel);
    // L(x) = Σ w ⊙ f(x); dL/dx_i by central differences on the f64 CPU forward.
    for (
      const [name, f, analytic] of [["softmax", softmaxCpu, out.dx], [
        "log_softmax",
        logSoftmaxCpu,
        out.logDx,
      ]] as const
    ) {
      const numeric = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const plus = Float64Array.from(x), minus = Float64Array.from(x);
        plus[i] += h;
        minus[i] -= h;
        const yp = f(plus, cols), ym = f(minus, cols);
        let d = 0;
        for (let j = 0; j < n; j++) d += w[j] * (yp[j] - ym[j]);
        numeric[i] = d / (2 * h);
      }
      assertClose(analytic, numeric, `${name} gradient vs finite differences (${kernel})`, {
        atol: 2e-6,
        rtol: 1e-4,
      });
    }
  }
});

Deno.test({ name: "softmax: PyTorch golden values", ...needsGpu }, async () => {
  const golden = Golden.load("loss");
  const shape = golden.shape("softmax.x");
  for (const kernel of KERNELS) {
    const out = await runAll(golden.f32("softmax.x"), golden.f32("softmax.dy"), shape, kernel);
    assertClose(out.y, golden.f32("softmax.y"), `softmax ${kernel}`, { atol: 1e-7, rtol: 1e-5 });
    assertClose(out.logY, golden.f32("log_softmax.y"), `log_softmax ${kernel}`, { atol: 1e-6, rtol: 1e-5 });
    assertClose(out.dx, golden.f32("softmax.dx"), `softmax backward ${kernel}`, { atol: 1e-7, rtol: 1e-5 });
    assertClose(out.logDx, golden.f32("log_softmax.dx"), `log_softmax backward ${kernel}`, {
      atol: 1e-6,
      rtol: 1e-5,
    });
  }
});

Deno.test({ name: "softmax: bad shapes, dtypes and aliasing are refused", ...needsGpu }, async () => {
  const g = gpu!;
  const x = Tensor.empty(g, [4, 3], "f32", "x");
  const y = Tensor.empty(g, [3, 4], "f32", "y");
  const ids = Tensor.empty(g, [4, 3], "i32", "ids");
  const empty = Tensor.empty(g, [4, 0], "f32", "empty");
  const y2 = Tensor.empty(g, [4, 3], "f32", "y2");
  await runOnce(g, "refused", async (p) => {
    await assert.rejects(() => softmaxForward(p, x, y), /softmax: x \[4, 3\] and y \[3, 4\]/);
    await assert.rejects(() => logSoftmaxForward(p, ids, x), /log_softmax: x \(ids\) is i32, expected f32/);
    await assert.rejects(() => softmaxForward(p, x, x), /must not share memory/);
    await assert.rejects(() => softmaxBackward(p, x, x, x), ShapeError);
    await assert.rejects(() => softmaxForward(p, empty, empty.reshape([4, 0])), /expected \[\.\.\., n > 0\]/);
    await assert.rejects(
      () => softmaxForward(p, x, y2, { kernel: "tiled" as RowKernel }),
      /softmax: unknown kernel "tiled" \(expected "workgroup" or "rows"\)/,
    );
    assert.equal(p.dispatches.length, 0);
  });
  for (const t of [x, y, ids, empty, y2]) t.destroy();
  assert.equal(
    rowKernelFor(g, "softmax", undefined),
    /llvmpipe|lavapipe/i.test(g.describe()) ? "rows" : "workgroup",
  );
});
