import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  DFLASH_LOSS_TYPES,
  dflashLossGradient,
  dflashRowStats,
  dflashRowStatsCpu,
  dflashSlotSums,
  dpaceWeights,
  dpaceWeightsCpu,
} from "../../lib/ops/dflash_loss.ts";

Deno.test("dflash loss: the D-PACE weights of SpecForge's worked vector", () => {
  // α 0.5, q = exp(−CE) = [·, 0.8, 0.6, 0.4], w = [0, 1, 1, 1]: Σ ω·CE per variant (draft-variants §4.3.3).
  const q = [0.9, 0.8, 0.6, 0.4], w = [0, 1, 1, 1], ce = q.map((x) => -Math.log(x));
  const want = {
    "dpace": 1.561018,
    "dpace-cumulative-confidence-only": 1.030434,
    "dpace-continuation-value-only": 2.311313,
  };
  for (const [type, value] of Object.entries(want)) {
    const omega = dpaceWeightsCpu(ce, w, type as keyof typeof want, 4, 0.5);
    assert.ok(Math.abs(omega.reduce((a, x, i) => a + x * ce[i], 0) - value) < 1e-5, type);
  }
});

Deno.test({
  name: "dflash loss: row stats, D-PACE weights, gradient and slot sums match the CPU",
  ...needsGpu,
}, async () => {
  const g = gpu!, rows = 12, vocab = 37, B = 4;
  const logits = randomArray(rows * vocab, 3, 2);
  const labels = Int32Array.from({ length: rows }, (_, r) => (r * 7) % vocab);
  const w = Float32Array.from({ length: rows }, (_, r) => r % B === 0 || r === 6 ? 0 : 1);
  const cpu = dflashRowStatsCpu(logits, labels, vocab);
  for (const type of DFLASH_LOSS_TYPES.slice(1)) {
    const t = {
      logits: Tensor.fromArray(g, logits, [rows, vocab], "f32", "logits"),
      labels: Tensor.fromArray(g, labels, [rows], "i32", "labels"),
      stats: Tensor.empty(g, [rows, 3], "f32", "stats"),
      w: Tensor.fromArray(g, w, [rows], "f32", "w"),
      omega: Tensor.empty(g, [rows], "f32", "omega"),
      scale: Tensor.fromArray(g, Float32Array.of(0.25), [1], "f32", "scale"),
      sums: Tensor.zeros(g, [B, 4], "f32", "sums"),
    };
    await runOnce(g, "dflash loss", async (p) => {
      await dflashRowStats(p, t.logits, t.labels, t.stats);
      await dpaceWeights(p, t, { type, blockSize: B, alpha: 0.3 });
      await dflashSlotSums(p, t, B);
      await dflashLossGradient(p, t);
    });
    const stats = await t.stats.readFloat();
    assertClose(stats.filter((_, i) => i % 3 === 0), cpu.lse, `${type}: lse`, { atol: 1e-5, rtol: 1e-5 });
    assertClose(stats.filter((_, i) => i % 3 === 1), cpu.ce, `${type}: ce`, { atol: 1e-5, rtol: 1e-5 });
    assert.deepEqual([...stats.filter((_, i) => i % 3 === 2)], [...cpu.correct], `${type}: correct`);
    const omega = dpaceWeightsCpu(cpu.ce, w, type, B, 0.3);
    assertClose(await t.omega.readFloat(), omega, `${type}: omega`, { atol: 1e-6, rtol: 1e-5 });
    // The gradient of 0.25·Σ ω·CE (ω held fixed) by central differences of the CPU's CE.
    const grad = await t.logits.readFloat(), h = 1e-4;
    for (const i of [0, 5, vocab + 3, 7 * vocab + labels[7], 11 * vocab + 36]) {
      const x = Float64Array.from(logits), r = Math.floor(i / vocab);
      x[i] += h;
      const up = dflashRowStatsCpu(x, labels, vocab).ce[r];
      x[i] -= 2 * h;
      const down = dflashRowStatsCpu(x, labels, vocab).ce[r];
      assert.ok(Math.abs(grad[i] - 0.25 * omega[r] * (up - down) / (2 * h)) < 1e-5, `${type}: gradient ${i}`);
    }
    const sums = await t.sums.readFloat();
    for (let k = 0; k < B; k++) {
      const slot = [...Array(rows).keys()].filter((r) => r % B === k);
      const want = [
        slot.reduce((a, r) => a + w[r] * cpu.ce[r], 0),
        slot.reduce((a, r) => a + w[r], 0),
        slot.reduce((a, r) => a + (w[r] > 0.5 ? cpu.correct[r] : 0), 0),
        slot.reduce((a, r) => a + omega[r] * cpu.ce[r], 0),
      ];
      assertClose(sums.subarray(4 * k, 4 * k + 4), want, `${type}: sums of slot ${k}`, {
        atol: 1e-4,
        rtol: 1e-5,
      });
    }
    for (const x of Object.values(t)) x.destroy();
  }
});
