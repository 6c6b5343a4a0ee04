import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  argmaxAgreement,
  argmaxAgreementCpu,
  softCrossEntropy,
  softCrossEntropyBackwardCpu,
  softCrossEntropyCpu,
} from "../../lib/ops/loss.ts";
import { sum } from "../../lib/ops/reduce.ts";
import { type RowKernel, softmaxCpu } from "../../lib/ops/softmax.ts";

/** Both kernel families: every GPU result below is checked for each. */
const KERNELS: RowKernel[] = ["workgroup", "rows"];

/** A mask of `rows` values with about a third zeros (and some non-unit non-zeros, which count as 1). */
function randomMask(rows: number, seed: number): Float32Array<ArrayBuffer> {
  const r = rng(seed);
  return Float32Array.from({ length: rows }, () => {
    const u = r();
    return u < 0.33 ? 0 : u < 0.9 ? 1 : 2.5;
  });
}

interface LossRun {
  rowLoss: Float32Array;
  grad: Float32Array;
  /** The gradient of the in-place variant (written over a copy of the logits). */
  gradInPlace: Float32Array;
  rowLossInPlace: Float32Array;
  /** Σ rowLoss from the reduction, as the trainer computes loss_k. */
  loss: number;
}

/** Runs the loss with a separate gradient and in place, in one program, with the `kernel` family. */
async function runLoss(
  z: Float32Array<ArrayBuffer>,
  target: Float32Array<ArrayBuffer>,
  mask: Float32Array<ArrayBuffer>,
  shape: number[],
  denominator: number,
  gradScale: number,
  kernel: RowKernel,
): Promise<LossRun> {
  const g = gpu!;
  const rowShape = shape.slice(0, -1);
  const logits = Tensor.fromArray(g, z, shape, "f32", "logits");
  const logitsInPlace = Tensor.fromArray(g, z, shape, "f32", "logits (in place)");
  const tTarget = Tensor.fromArray(g, target, shape, "f32", "target");
  const tMask = Tensor.fromArray(g, mask, rowShape, "f32", "mask");
  const rowLoss = Tensor.empty(g, rowShape, "f32", "rowLoss");
  const rowLoss2 = Tensor.empty(g, rowShape, "f32", "rowLoss (in place)");
  const grad = Tensor.fromArray(g, new Float32Array(z.length).fill(NaN), shape, "f32", "grad");
  const loss = Tensor.empty(g, [1], "f32", "loss");
  await runOnce(g, "loss", async (p) => {
    const base = { target: tTarget, mask: tMask };
    await softCrossEntropy(p, { ...base, logits, rowLoss, grad }, { denominator, gradScale, kernel });
    await softCrossEntropy(p, { ...base, logits: logitsInPlace, rowLoss: rowLoss2, grad: logitsInPlace }, {
      denominator,
      gradScale,
      kernel,
    });
    const rowsLabels = p.dispatches.filter((d) => d.label.includes("_rows")).length;
    assert.equal(rowsLabels, kernel === "rows" ? 2 : 0, `${kernel} kernels recorded`);
    await sum(p, rowLoss, loss);
  });
  const out = {
    rowLoss: await rowLoss.readFloat(),
    grad: await grad.readFloat(),
    gradInPlace: await logitsInPlace.readFloat(),
    rowLossInPlace: await rowLoss2.readFloat(),
    loss: (await loss.readFloat())[0],
  };
  for (const t of [logits, logitsInPlace, tTarget, tMask, rowLoss, rowLoss2, grad, loss]) t.destroy();
  return out;
}

Deno.test(
  { name: "loss: soft cross-entropy and gradient vs CPU, separate and in place", ...needsGpu },
  async () => {
    const shapes = [[1, 1], [4, 1], [3, 7], [5, 1000], [2, 2048], [3, 5000], [300, 7], [2, 5, 11], [19, 12]];
    for (const [s, shape] of shapes.entries()) {
      for (const kernel of KERNELS) {
        const cols = shape[shape.length - 1], n = shape.reduce((a, b) => a * b, 1), rows = n / cols;
        const z = randomArray(n, 400 + s, 5);
        const target = Float32Array.from(softmaxCpu(randomArray(n, 500 + s, 5), cols));
        if (s === 2) target.forEach((v, i) => target[i] = 0.5 * v); // Σp = 0.5 enters the gradient as Σp
        const mask = randomMask(rows, 600 + s);
        mask[0] = 1;
        const [denominator, gradScale] = [rows, 0.8 ** 2 / 2];
        const out = await runLoss(z, target, mask, shape, denominator, gradScale, kernel);
        const tag = `[${shape}] ${kernel}`;
        const rowLoss = softCrossEntropyCpu(z, target, mask, cols, denominator);
        const grad = softCrossEntropyBackwardCpu(z, target, mask, cols, denominator, gradScale);
        assertClose(out.rowLoss, rowLoss, `rowLoss ${tag}`, { atol: 1e-6, rtol: 1e-5 });
        assertClose(out.rowLossInPlace, rowLoss, `rowLoss in place ${tag}`, { atol: 1e-6, rtol: 1e-5 });
        assertClose(out.grad, grad, `grad ${tag}`, { atol: 1e-8, rtol: 1e-4 });
        assertClose(out.gradInPlace, grad, `grad in place ${tag}`, { atol: 1e-8, rtol: 1e-4 });
        assertClose([out.loss], [rowLoss.reduce((a, b) => a + b, 0)], `loss ${tag}`, { rtol: 1e-5 });
        for (let r = 0; r < rows; r++) {
          if (mask[r] !== 0) continue;
          assert.equal(out.rowLoss[r], 0);
          assert.ok(
            out.gradInPlace.subarray(r * cols, (r + 1) * cols).every((v) => v === 0),
            "masked row zeroed",
          );
        }
      }
    }
  },
);

Deno.test({ name: "loss: gradient matches central differences", ...needsGpu }, async () => {
  const shape = [4, 6], cols = 6, n = 24, h = 1e-5;
  const z = randomArray(n, 31, 2);
  const target = Float32Array.from(softmaxCpu(randomArray(n, 32, 2), cols));
  const mask = Float32Array.of(1, 0, 1, 1);
  const [denominator, gradScale] = [8, 0.8];
  // L(z) = gradScale · Σ rowLoss(z), differentiated numerically on the f64 CPU forward.
  const numeric = new Float64Array(n);
  const L = (x: Float64Array) =>
    gradScale * softCrossEntropyCpu(x, target, mask, cols, denominator).reduce((a, b) => a + b, 0);
  for (let i = 0; i < n; i++) {
    const plus = Float64Array.from(z), minus = Float64Array.from(z);
    plus[i] += h;
    minus[i] -= h;
    numeric[i] = (L(plus) - L(minus)) / (2 * h);
  }
  for (const kernel of KERNELS) {
    const out = await runLoss(z, target, mask, shape, denominator, gradScale, kernel);
    assertClose(out.grad, numeric, `grad vs finite differences (${kernel})`, { atol: 1e-7, rtol: 1e-4 });
    assertClose(out.gradInPlace, numeric, `in-place grad vs finite differences (${kernel})`, {
      atol: 1e-7,
      rtol: 1e-4,
    });
  }
});

Deno.test({ name: "loss: PyTorch autograd golden values", ...needsGpu }, async () => {
  const golden = Golden.load("loss");
  const shape = golden.shape("loss.z"); // [B 2, T 5, Vd 11]
  const denominator = shape[0] * shape[1];
  for (const kernel of KERNELS) {
    const out = await runLoss(
      golden.f32("loss.z"),
      golden.f32("loss.target"),
      golden.f32("loss.mask"),
      shape,
      denominator,
      0.8,
      kernel,
    );
    assertClose(out.rowLoss, golden.f32("loss.row_loss"), `rowLoss ${kernel}`, { atol: 1e-7, rtol: 1e-5 });
    assertClose([out.loss], golden.f32("loss.loss"), `loss ${kernel}`, { atol: 1e-7, rtol: 1e-5 });
    assertClose(out.grad, golden.f32("loss.dz"), `dz ${kernel}`, { atol: 1e-8, rtol: 1e-5 });
    assertClose(out.gradInPlace, golden.f32("loss.dz"), `dz in place ${kernel}`, { atol: 1e-8, rtol: 1e-5 });
  }
});

Deno.test(
  { name: "loss: argmax agreement counts (golden, ids and probs, accumulate)", ...needsGpu },
  async () => {
    for (const kernel of KERNELS) await agreementGolden(kernel);
  },
);

/** The golden agreement case with the `kernel` family (see the test above). */
async function agreementGolden(kernel: RowKernel): Promise<void> {
  const g = gpu!;
  const golden = Golden.load("loss");
  const shape = golden.shape("loss.z");
  const rowShape = shape.slice(0, -1);
  const logits = Tensor.fromArray(g, golden.f32("loss.z"), shape, "f32", "logits");
  const probs = Tensor.fromArray(g, golden.f32("loss.target"), shape, "f32", "target");
  const ids = Tensor.fromArray(g, golden.ints("loss.target_ids"), rowShape, "i32", "ids");
  const mask = Tensor.fromArray(g, golden.f32("loss.mask"), rowShape, "f32", "mask");
  const counts = [0, 1].map((i) => Tensor.fromArray(g, [7, 7], [2], "f32", `counts${i}`));
  const perRow = Tensor.empty(g, [10, 2], "f32", "perRow");
  const p = new Program(g, "agreement");
  await argmaxAgreement(p, { logits, targetIds: ids, mask, counts: counts[0], perRow }, { kernel });
  // Accumulating twice from the initial (7, 7): once with a program-owned per-row scratch, once with perRow.
  await argmaxAgreement(p, { logits, targetProbs: probs, mask, counts: counts[1] }, {
    accumulate: true,
    kernel,
  });
  await argmaxAgreement(p, { logits, targetProbs: probs, mask, counts: counts[1], perRow }, {
    accumulate: true,
    kernel,
  });
  const rowsLabels = p.dispatches.filter((d) => d.label.includes("_rows")).length;
  assert.equal(rowsLabels, kernel === "rows" ? 3 : 0, `${kernel} kernels recorded`);
  await p.runChecked();
  const [correct, total] = golden.f32("loss.counts");
  assert.ok(correct > 0 && correct < total, "the golden case has both agreeing and disagreeing rows");
  assert.deepEqual([...await counts[0].read()], [correct, total], kernel);
  assert.deepEqual([...await counts[1].read()], [7 + 2 * correct, 7 + 2 * total], kernel);
  p.destroy();
  for (const t of [logits, probs, ids, mask, ...counts, perRow]) t.destroy();
}

Deno.test(
  { name: "loss: argmax agreement vs CPU on large rows, ties and two masks", ...needsGpu },
  async () => {
    const g = gpu!;
    const cases = [[1, 1], [7, 3], [40, 1000], [9, 2048], [5, 5000], [300, 7], [19, 12]];
    for (const [s, [rows, cols]] of cases.entries()) {
      for (const kernel of KERNELS) {
        const n = rows * cols;
        const target = randomArray(n, 700 + s);
        const z = randomArray(n, 800 + s);
        const r = rng(900 + s);
        const ids = new Int32Array(rows);
        for (let row = 0; row < rows; row++) {
          const off = row * cols;
          const t = Math.floor(r() * cols);
          target[off + t] = 2; // unique target argmax
          ids[row] = r() < 0.1 ? -1 : t; // some targets outside the draft vocab
          if (r() < 0.6) z[off + t] = 2; // the draft agrees on ~60% of rows
          if (r() < 0.3) z[off + Math.floor(r() * cols)] = 2; // and ties, which go to the lowest index
        }
        const mask = randomMask(rows, 1000 + s),
          correctMask = Float32Array.from(mask, (m, i) => i % 5 ? m : 0);
        const tz = Tensor.fromArray(g, z, [rows, cols], "f32", "z");
        const tp = Tensor.fromArray(g, target, [rows, cols], "f32", "p");
        const tIds = Tensor.fromArray(g, ids, [rows], "i32", "ids");
        const tMask = Tensor.fromArray(g, mask, [rows], "f32", "mask");
        const tCorrect = Tensor.fromArray(g, correctMask, [rows], "f32", "correctMask");
        const counts = [0, 1].map((i) => Tensor.empty(g, [2], "f32", `counts${i}`));
        await runOnce(g, "agreement", async (p) => {
          await argmaxAgreement(p, { logits: tz, targetIds: tIds, mask: tMask, counts: counts[0] }, {
            kernel,
          });
          await argmaxAgreement(p, {
            logits: tz,
            targetProbs: tp,
            mask: tMask,
            correctMask: tCorrect,
            counts: counts[1],
          }, { kernel });
        });
        const tag = `[${rows}, ${cols}] ${kernel}`;
        assert.deepEqual([...await counts[0].read()], argmaxAgreementCpu(z, ids, mask, cols), `ids ${tag}`);
        assert.deepEqual(
          [...await counts[1].read()],
          argmaxAgreementCpu(z, target, mask, cols, correctMask),
          `probs, two masks ${tag}`,
        );
        for (const t of [tz, tp, tIds, tMask, tCorrect, ...counts]) t.destroy();
      }
    }
  },
);

Deno.test({ name: "loss: bad arguments are refused before dispatch", ...needsGpu }, async () => {
  const g = gpu!;
  const z = Tensor.empty(g, [4, 8], "f32", "z");
  const target = Tensor.empty(g, [4, 8], "f32", "p");
  const mask = Tensor.empty(g, [4], "f32", "mask");
  const rowLoss = Tensor.empty(g, [4], "f32", "rowLoss");
  const grad = Tensor.empty(g, [4, 8], "f32", "grad");
  const counts = Tensor.empty(g, [2], "f32", "counts");
  const ids = Tensor.empty(g, [4], "i32", "ids");
  const shifted = Tensor.empty(g, [144], "f32", "buf");
  const target20 = Tensor.empty(g, [4, 20], "f32", "p20");
  const p = new Program(g, "refused");
  const ok = { logits: z, target, mask, rowLoss, grad };
  await assert.rejects(
    () => softCrossEntropy(p, { ...ok, target: Tensor.empty(g, [4, 7], "f32", "p7") }, { denominator: 4 }),
    /softCrossEntropy: logits \[4, 8\] and target \[4, 7\] must have the same shape/,
  );
  await assert.rejects(
    () => softCrossEntropy(p, { ...ok, mask: Tensor.empty(g, [5], "f32", "m5") }, { denominator: 4 }),
    /mask \(m5\) has shape \[5\], expected \[4\]/,
  );
  await assert.rejects(() => softCrossEntropy(p, ok, { denominator: 0 }), /denominator must be positive/);
  await assert.rejects(
    () => softCrossEntropy(p, ok, { denominator: 4, kernel: "tiled" as RowKernel }),
    /softCrossEntropy: unknown kernel "tiled"/,
  );
  await assert.rejects(
    () => argmaxAgreement(p, { logits: z, targetIds: ids, mask, counts }, { kernel: "tiled" as RowKernel }),
    /argmaxAgreement: unknown kernel "tiled"/,
  );
  await assert.rejects(
    () => softCrossEntropy(p, { ...ok, rowLoss: mask }, { denominator: 4 }),
    /must not share/,
  );
  // A gradient overlapping the logits without being exactly them.
  const a = shifted.view(0, [4, 20]), b = shifted.view(64, [4, 20]); // 256-byte aligned, overlapping
  await assert.rejects(
    () => softCrossEntropy(p, { ...ok, target: target20, logits: a, grad: b }, { denominator: 4 }),
    /grad \(buf\[view\]\) and logits \(buf\[view\]\) must not share memory/,
  );
  await assert.rejects(() => argmaxAgreement(p, { logits: z, mask, counts }), /exactly one of targetIds/);
  await assert.rejects(
    () => argmaxAgreement(p, { logits: z, targetIds: mask, mask, counts }),
    /targetIds \(mask\) is f32, expected i32/,
  );
  await assert.rejects(
    () => argmaxAgreement(p, { logits: z, targetIds: ids, mask, counts: rowLoss }),
    /counts \(rowLoss\) has shape \[4\], expected \[2\]/,
  );
  assert.equal(p.dispatches.length, 0);
  p.destroy();
  for (const t of [z, target, mask, rowLoss, grad, counts, ids, shifted, target20]) t.destroy();
});
