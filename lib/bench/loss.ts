/**
 * Speed of the row kernels (softmax, the fused EAGLE-3 loss, the accuracy metric) at a draft vocabulary of
 * 32000, and of the optimizer step (global grad norm + AdamW) over draft-layer-shaped parameters. These are
 * memory-bound kernels, so each row notes the effective bandwidth (bytes a kernel must move / time).
 */
import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { softmaxForward } from "../ops/softmax.ts";
import { argmaxAgreement, softCrossEntropy } from "../ops/loss.ts";
import { eagle3Loss } from "../ops/eagle3_loss.ts";
import { globalNormPartialsSize, globalNormSquared } from "../ops/reduce.ts";
import { ADAMW_STATE_SIZE, adamwState, adamwStep } from "../ops/adamw.ts";
import { type BenchOptions, type BenchRow, timeProgram } from "./types.ts";

function gbps(bytes: number, ms: number): string {
  return `${(bytes / ms / 1e6).toFixed(1)} GB/s`;
}

/** Softmax, soft cross-entropy, argmax agreement, global norm² and AdamW timings. */
export async function benchLoss(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const rows = opts.quick ? 64 : 1024, vocab = 32000, reps = opts.quick ? 2 : 5;
  const n = rows * vocab;
  const shape = `${rows}x${vocab}`;
  const out: BenchRow[] = [];
  const fill = (len: number, scale: number) =>
    Float32Array.from({ length: len }, (_, i) => scale * Math.sin(i));
  const logits = Tensor.fromArray(gpu, fill(n, 4), [rows, vocab], "f32", "bench logits");
  const target = Tensor.fromArray(gpu, new Float32Array(n).fill(1 / vocab), [rows, vocab], "f32", "bench p");
  const y = Tensor.empty(gpu, [rows, vocab], "f32", "bench y");
  const mask = Tensor.fromArray(gpu, new Float32Array(rows).fill(1), [rows], "f32", "bench mask");
  const rowLoss = Tensor.empty(gpu, [rows], "f32", "bench rowLoss");
  const counts = Tensor.empty(gpu, [2], "f32", "bench counts");
  const timed = async (name: string, bytes: number, build: (p: Program) => Promise<unknown>) => {
    const p = new Program(gpu, `bench ${name}`);
    const scratch = await build(p);
    const ms = await timeProgram(gpu, p, reps);
    out.push({ group: "loss", name, shape, ms, tokensPerSec: rows / ms * 1000, note: gbps(bytes, ms) });
    p.destroy();
    if (scratch instanceof Tensor) scratch.destroy();
  };
  await timed("softmax forward", 3 * 4 * n, (p) => softmaxForward(p, logits, y));
  await timed(
    "soft cross-entropy (grad to y)",
    5 * 4 * n,
    (p) =>
      softCrossEntropy(p, { logits, target, mask, rowLoss, grad: y }, { denominator: rows, gradScale: 0.8 }),
  );
  await timed(
    "argmax agreement (target probs)",
    2 * 4 * n,
    (p) => argmaxAgreement(p, { logits, targetProbs: target, mask, counts }, { accumulate: true }),
  );
  // The fused loss of one TTT position, teacher logits of one sequence of `rows` rows (k 0): it reads the
  // logits twice, the teacher rows three times (statistics, Σp, the loss), and writes the gradient.
  const perRow = Tensor.empty(gpu, [rows, 2], "f32", "bench per row");
  const ids = Tensor.fromArray(gpu, new Int32Array(rows), [rows], "i32", "bench target ids");
  await timed(
    "eagle3 loss (teacher p, KL, agreement)",
    6 * 4 * n,
    (p) =>
      eagle3Loss(p, {
        logits,
        teacherLogits: y,
        posMask: mask,
        lossMask: mask,
        targetIds: ids,
        rowLoss,
        perRow,
        grad: target,
      }, { seqLen: rows, position: 0, denominator: rows, gradScale: 0.8 }),
  );
  for (const t of [logits, target, y, mask, rowLoss, counts, perRow, ids]) t.destroy();

  // Parameters of one EAGLE-3 draft layer at hidden H: fc [H, 3H], q [H, 2H], k and v [H/4, 2H], o [H, H],
  // gate and up [3.5H, H], down [H, 3.5H], norms [H].
  const h = opts.quick ? 256 : 1024;
  const sizes = [
    3 * h * h,
    2 * h * h,
    h * h / 2,
    h * h / 2,
    h * h,
    3.5 * h * h,
    3.5 * h * h,
    3.5 * h * h,
    h,
    h,
  ];
  const total = sizes.reduce((a, b) => a + b, 0);
  const make = (label: string, value: number) =>
    sizes.map((s, i) => Tensor.fromArray(gpu, new Float32Array(s).fill(value), [s], "f32", `${label}${i}`));
  const [params, grads, m, v] = [make("w", 0.01), make("g", 1e-3), make("m", 0), make("v", 0)];
  const partials = Tensor.empty(gpu, [globalNormPartialsSize(grads)], "f32", "bench partials");
  const normSq = Tensor.empty(gpu, [1], "f32", "bench normSq");
  const state = Tensor.fromArray(gpu, adamwState(1, 1e-4, 0.5), [ADAMW_STATE_SIZE], "f32", "bench state");
  const optShape = `${sizes.length} tensors, ${(total / 1e6).toFixed(1)}M params (H ${h})`;
  const timedOpt = async (name: string, bytes: number, build: (p: Program) => Promise<void>) => {
    const p = new Program(gpu, `bench ${name}`);
    await build(p);
    const ms = await timeProgram(gpu, p, reps);
    out.push({ group: "optimizer", name, shape: optShape, ms, note: gbps(bytes, ms) });
    p.destroy();
  };
  await timedOpt("global grad norm²", 4 * total, (p) => globalNormSquared(p, grads, partials, normSq));
  await timedOpt("AdamW step (clipped)", 7 * 4 * total, async (p) => {
    for (let i = 0; i < sizes.length; i++) {
      await adamwStep(p, { param: params[i], grad: grads[i], m: m[i], v: v[i], normSq, state });
    }
  });
  for (const t of [...params, ...grads, ...m, ...v, partials, normSq, state]) t.destroy();
  return out;
}
