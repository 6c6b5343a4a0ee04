import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Tensor } from "../../lib/tensor.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { vocabStatsCpu, vocabStatsMerge } from "../../lib/ops/vocab_stats.ts";

Deno.test(
  { name: "vocab stats: chunked log-sum-exp and argmax equal the whole-row ones", ...needsGpu },
  async () => {
    const g = gpu!;
    for (const [rows, vocab, chunk] of [[3, 10, 10], [5, 1000, 256], [17, 2048, 300], [2, 7, 3]]) {
      const logits = randomArray(rows * vocab, rows + vocab, 8);
      // A tie across chunks: the lowest id must win.
      logits[0 * vocab + 1] = 50;
      logits[0 * vocab + vocab - 1] = 50;
      const maxSum = Tensor.empty(g, [rows, 2], "f32", "maxSum");
      const argmax = Tensor.empty(g, [rows], "i32", "argmax");
      const chunks: Tensor[] = [];
      await runOnce(g, "vocab stats", async (p) => {
        for (let c0 = 0; c0 < vocab; c0 += chunk) {
          const cols = Math.min(chunk, vocab - c0);
          const block = new Float32Array(rows * cols);
          for (let r = 0; r < rows; r++) {
            block.set(logits.subarray(r * vocab + c0, r * vocab + c0 + cols), r * cols);
          }
          const t = Tensor.fromArray(g, block, [rows, cols], "f32", `chunk ${c0}`);
          chunks.push(t);
          await vocabStatsMerge(p, t, maxSum, argmax, { colOffset: c0, first: c0 === 0 });
        }
      });
      const want = vocabStatsCpu(logits, rows, vocab);
      const ms = await maxSum.read();
      const lse = Array.from({ length: rows }, (_, r) => ms[2 * r] + Math.log(ms[2 * r + 1]));
      assertClose(lse, want.logSumExp, `log-sum-exp rows ${rows} vocab ${vocab} chunk ${chunk}`, {
        atol: 1e-5,
      });
      assert.deepEqual([...await argmax.read()], [...want.argmax], `argmax rows ${rows} vocab ${vocab}`);
      assert.equal(want.argmax[0], 1);
      for (const t of [maxSum, argmax, ...chunks]) t.destroy();
    }
  },
);
