/** The LK loss kernels (lib/ops/lk_loss.ts) against their CPU reference: α, the masked sums, the gradient. */
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import { lkAcceptance, lkGradient, lkLossCpu, type LkLossOptions } from "../../lib/ops/lk_loss.ts";

const VARIANTS: Array<[string, LkLossOptions]> = [
  ["alpha", { type: "alpha", klScale: 1, klDecay: 1 }],
  ["lambda", { type: "lambda", klScale: 0.9, klDecay: 3 }],
];

Deno.test(
  { name: "lk loss kernels match their CPU reference (α, sums, gradient; odd shapes)", ...needsGpu },
  async () => {
    const g = gpu!;
    for (const [seq, rows, cols, position] of [[5, 15, 13, 0], [7, 14, 40, 2]]) {
      const z = randomArray(rows * cols, rows + cols, 2), teacher = randomArray(rows * cols, 3 * rows, 3);
      const full = Float32Array.from(
        { length: rows * 2 },
        (_, i) => i % 2 === 0 ? 2 + (i % 5) * 0.1 : 20 + i,
      );
      const mask = Float32Array.from({ length: rows }, (_, r) => (r * 7) % 3 === 0 ? 0 : 1);
      const klGrad = randomArray(rows * cols, 11, 0.01);
      for (const [name, lk] of VARIANTS) {
        const t = (x: Float32Array<ArrayBuffer>, shape: number[], label: string) =>
          Tensor.fromArray(g, x, shape, "f32", label);
        const tensors = {
          logits: t(Float32Array.from(z), [rows, cols], "z"),
          teacherLogits: t(teacher, [rows, cols], "teacher"),
          teacherMaxSum: t(full, [rows, 2], "max/sum"),
          mask: t(mask, [rows], "mask"),
          alphaS: Tensor.zeros(g, [rows, 2], "f32", "alphaS"),
          stats: Tensor.zeros(g, [4], "f32", "stats"),
        };
        const kl = t(klGrad, [rows, cols], "kl grad");
        try {
          await runOnce(g, "lk", async (p) => {
            await lkAcceptance(p, tensors, { seqLen: seq, position });
            await lkGradient(p, tensors, kl, lk, { seqLen: seq, position, scale: 0.64 });
          });
          const want = lkLossCpu(z, teacher, full, mask, cols, seq, position, lk, {
            loss: 0,
            grad: klGrad,
            scale: 0.64,
          });
          const alphaS = await tensors.alphaS.readFloat();
          assertClose(alphaS.filter((_, i) => i % 2 === 0), want.alpha, `${name} α`, {
            atol: 1e-6,
            rtol: 1e-5,
          });
          const stats = await tensors.stats.readFloat();
          assertClose([stats[0] / stats[1]], [want.meanAlpha], `${name} Ā`, { atol: 1e-6, rtol: 1e-5 });
          assertClose(await tensors.logits.readFloat(), want.grad, `${name} gradient`, {
            atol: 1e-7,
            rtol: 1e-4,
          });
        } finally {
          for (const x of [...Object.values(tensors), kl]) x.destroy();
        }
      }
    }
  },
);
