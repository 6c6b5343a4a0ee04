/**
 * The fused EAGLE-3 position loss (lib/ops/eagle3_loss.ts) against the ops it replaces, recorded one after the
 * other (the teacher rows' softmax, argmaxAgreement, softCrossEntropy in place): the same bits, for both kernel
 * families, vec4 and scalar rows, whole batches and head windows, in place and with a separate gradient; and
 * against the CPU references.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import { Tensor } from "../../lib/tensor.ts";
import { eagle3Loss } from "../../lib/ops/eagle3_loss.ts";
import { teacherProbsCpu } from "../../lib/ops/eagle3_teacher.ts";
import { softmaxForward } from "../../lib/ops/softmax.ts";
import {
  argmaxAgreement,
  argmaxAgreementCpu,
  softCrossEntropy,
  softCrossEntropyBackwardCpu,
  softCrossEntropyCpu,
} from "../../lib/ops/loss.ts";
import type { RowKernel } from "../../lib/ops/variant.ts";

const SEQ = 8, BATCH = 3, N = SEQ * BATCH;

interface Case {
  cols: number;
  k: number;
  /** The window: its first batch row and its rows (the whole batch when row0 = 0 and rows = N). */
  row0: number;
  rows: number;
}

interface Inputs {
  logits: Float32Array<ArrayBuffer>;
  teacher: Float32Array<ArrayBuffer>;
  posMask: Float32Array<ArrayBuffer>;
  lossMask: Float32Array<ArrayBuffer>;
  targetIds: Int32Array<ArrayBuffer>;
}

/** Random inputs of a window; two rows hold ties for their best logit (the lowest column must win). */
function inputs({ cols, rows, k }: Case, seed: number): Inputs {
  const r = rng(seed);
  const logits = randomArray(rows * cols, seed, 3);
  for (const row of [1, 5]) logits[row * cols + 2] = logits[row * cols + cols - 1] = 9;
  const lossMask = Float32Array.from({ length: rows }, () => r() < 0.25 ? 0 : 1);
  const posMask = lossMask.map((m) => m !== 0 && r() < 0.8 ? 1 : 0);
  const targetIds = Int32Array.from(
    { length: rows },
    (_, row) => r() < 0.1 ? -1 : row % 4 === 1 ? 2 : row % cols,
  );
  return {
    logits,
    teacher: randomArray((rows + k + 1) * cols, seed + 1, 3), // enough rows past the window for any k
    posMask,
    lossMask,
    targetIds,
  };
}

/** Outputs of one way of computing the loss. */
interface Outputs {
  rowLoss: Float32Array;
  perRow: Float32Array;
  grad: Float32Array;
}

/** The inputs as tensors; the teacher holds the rows the window reads (to a sequence's end or k + 1 past it). */
function tensors(c: Case, x: Inputs) {
  const g = gpu!;
  const teacherRows = Math.min(c.rows + c.k + 1, N - c.row0);
  return {
    logits: Tensor.fromArray(g, x.logits, [c.rows, c.cols], "f32", "logits"),
    teacherLogits: Tensor.fromArray(
      g,
      x.teacher.slice(0, teacherRows * c.cols),
      [teacherRows, c.cols],
      "f32",
      "L",
    ),
    posMask: Tensor.fromArray(g, x.posMask, [c.rows], "f32", "pos mask"),
    lossMask: Tensor.fromArray(g, x.lossMask, [c.rows], "f32", "loss mask"),
    targetIds: Tensor.fromArray(g, x.targetIds, [c.rows], "i32", "target ids"),
    rowLoss: Tensor.empty(g, [c.rows], "f32", "row loss"),
    perRow: Tensor.empty(g, [c.rows, 2], "f32", "per row"),
  };
}

const OPTIONS = { denominator: 37, gradScale: 0.64 };

/** The fused kernel, in place or into a separate gradient. */
async function fused(c: Case, x: Inputs, kernel: RowKernel, inPlace: boolean): Promise<Outputs> {
  const t = tensors(c, x);
  const grad = inPlace ? undefined : Tensor.empty(gpu!, [c.rows, c.cols], "f32", "grad");
  await runOnce(gpu!, "eagle3 loss", async (p) => {
    await eagle3Loss(p, { ...t, grad }, { ...OPTIONS, seqLen: SEQ, position: c.k, row0: c.row0, kernel });
    assert.equal(p.dispatches.length, 1);
    assert.equal(p.dispatches[0].label.includes("_rows"), kernel === "rows");
  });
  const out = {
    rowLoss: await t.rowLoss.readFloat(),
    perRow: await t.perRow.readFloat(),
    grad: await (grad ?? t.logits).readFloat(),
  };
  for (const y of [...Object.values(t), grad]) y?.destroy();
  return out;
}

/**
 * The ops the fused kernel replaces, one after the other: p^k as the softmax of the teacher rows k + 1 past
 * each row (softmaxForward, whose formula the kernel uses), 1/Vd past a sequence's end; the agreement; the
 * soft cross-entropy in place.
 */
async function unfused(c: Case, x: Inputs, kernel: RowKernel): Promise<Outputs> {
  const g = gpu!, t = tensors(c, x);
  const shifted = x.teacher.slice((c.k + 1) * c.cols, (c.k + 1 + c.rows) * c.cols);
  const teacher = Tensor.fromArray(g, shifted, [c.rows, c.cols], "f32", "L shifted");
  const probs = Tensor.empty(g, [c.rows, c.cols], "f32", "p_k");
  const counts = Tensor.empty(g, [2], "f32", "counts");
  await runOnce(g, "p_k", (p) => softmaxForward(p, teacher, probs, { kernel }));
  const p = await probs.readFloat();
  for (let r = 0; r < c.rows; r++) {
    if ((c.row0 + r) % SEQ + c.k + 1 >= SEQ) p.fill(Math.fround(1 / c.cols), r * c.cols, (r + 1) * c.cols);
  }
  probs.write(p);
  await runOnce(g, "unfused loss", async (p) => {
    await argmaxAgreement(
      p,
      { logits: t.logits, targetIds: t.targetIds, mask: t.lossMask, counts, perRow: t.perRow },
      { totals: false, kernel },
    );
    await softCrossEntropy(
      p,
      { logits: t.logits, target: probs, mask: t.posMask, rowLoss: t.rowLoss, grad: t.logits },
      { ...OPTIONS, kernel },
    );
  });
  const out = {
    rowLoss: await t.rowLoss.readFloat(),
    perRow: await t.perRow.readFloat(),
    grad: await t.logits.readFloat(),
  };
  for (const y of [...Object.values(t), teacher, probs, counts]) y.destroy();
  return out;
}

const CASES: Case[] = [13, 16].flatMap((cols) =>
  [0, 2, 9].flatMap((k) => [{ cols, k, row0: 0, rows: N }, { cols, k, row0: SEQ, rows: SEQ }])
);

Deno.test({
  name: "eagle3Loss gives the bits of softmax, argmaxAgreement and softCrossEntropy",
  ...needsGpu,
}, async () => {
  for (const [i, c] of CASES.entries()) {
    const x = inputs(c, 100 + i);
    for (const kernel of ["workgroup", "rows"] as const) {
      const want = await unfused(c, x, kernel);
      for (const inPlace of [true, false]) {
        const got = await fused(c, x, kernel, inPlace);
        const what = `${JSON.stringify(c)} ${kernel}${inPlace ? " in place" : ""}`;
        assert.deepEqual(got.rowLoss, want.rowLoss, `row loss, ${what}`);
        assert.deepEqual(got.perRow, want.perRow, `per row, ${what}`);
        assert.deepEqual(got.grad, want.grad, `gradient, ${what}`);
      }
    }
  }
});

Deno.test({ name: "eagle3Loss matches the CPU references", ...needsGpu }, async () => {
  // The whole batch (rows 0..N, so the CPU teacher sees the same rows) at two positions and both widths.
  for (const c of CASES.filter((c) => c.row0 === 0 && c.k < 9)) {
    const x = inputs(c, 7);
    const probs = teacherProbsCpu(x.teacher, N, c.cols, SEQ, c.k);
    for (const kernel of ["workgroup", "rows"] as const) {
      const got = await fused(c, x, kernel, true);
      const what = `${c.cols} columns, k ${c.k}, ${kernel}`;
      const rowLoss = softCrossEntropyCpu(x.logits, probs, x.posMask, c.cols, OPTIONS.denominator);
      assertClose(got.rowLoss, rowLoss, `row loss, ${what}`, { atol: 1e-6, rtol: 1e-5 });
      const grad = softCrossEntropyBackwardCpu(
        x.logits,
        probs,
        x.posMask,
        c.cols,
        OPTIONS.denominator,
        OPTIONS.gradScale,
      );
      assertClose(got.grad, grad, `gradient, ${what}`, { atol: 1e-7, rtol: 1e-5 });
      const correct = got.perRow.filter((_, j) => j % 2 === 0).reduce((a, b) => a + b, 0);
      const counted = got.perRow.filter((_, j) => j % 2 === 1).reduce((a, b) => a + b, 0);
      assert.deepEqual(
        [correct, counted],
        argmaxAgreementCpu(x.logits, x.targetIds, x.lossMask, c.cols),
        what,
      );
    }
  }
});

Deno.test({ name: "eagle3Loss refuses bad tensors with the op and tensor named", ...needsGpu }, async () => {
  const c: Case = { cols: 16, k: 2, row0: SEQ, rows: SEQ };
  const t = tensors(c, inputs(c, 3));
  const opts = { ...OPTIONS, seqLen: SEQ, position: c.k, row0: c.row0 };
  const short = t.teacherLogits.view(0, [c.rows - 1, c.cols]); // neither reaching k + 1 past nor a sequence end
  const ids = Tensor.empty(gpu!, [c.rows], "f32", "float ids");
  try {
    await runOnce(gpu!, "bad", async (p) => {
      await assert.rejects(() => eagle3Loss(p, { ...t, targetIds: ids }, opts), /eagle3Loss.*targetIds/);
      await assert.rejects(() => eagle3Loss(p, { ...t, teacherLogits: short }, opts), ShapeError);
      await assert.rejects(() => eagle3Loss(p, { ...t, perRow: t.rowLoss }, opts), /eagle3Loss.*perRow/);
      await assert.rejects(() => eagle3Loss(p, { ...t, grad: t.logits }, opts), /eagle3Loss.*grad/);
      await assert.rejects(() => eagle3Loss(p, t, { ...opts, denominator: 0 }), RangeError);
    });
  } finally {
    for (const y of [...Object.values(t), ids]) y.destroy();
  }
});
