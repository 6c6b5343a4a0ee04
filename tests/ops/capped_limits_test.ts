/**
 * Tensors over the binding size (lib/ops/blocks.ts): on a device whose maxStorageBufferBindingSize is capped
 * at 64 KiB, the optimizer's ops (global grad norm, clipped AdamW, zeroing) work block by block and give the
 * uncapped device's results bit for bit, and so do linear layers whose weight is over the binding (its row
 * blocks); one binding of a too-large tensor is refused with its name.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Program } from "../../lib/gpu/program.ts";
import { linear, linearBackward, linearCpu } from "../../lib/ops/matmul.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { Tensor } from "../../lib/tensor.ts";
import { DraftOptimizer } from "../../lib/train/optimizer.ts";
import { blockElements, flatBlocks } from "../../lib/ops/blocks.ts";

const CAP = 64 * 1024;
// 3 and 2.5 bindings' worth, a size that is not a multiple of the reduction chunk, and a small tensor.
const SHAPES = [[3 * 16384 + 100], [160, 257], [33]];

async function fiveUpdates(device: Gpu): Promise<Float32Array[]> {
  const params = SHAPES.map((shape, i) => ({
    name: `p${i}`,
    param: Tensor.fromArray(
      device,
      randomArray(shape.reduce((a, b) => a * b), 10 + i, 0.5),
      shape,
      "f32",
      `w${i}`,
    ),
    grad: Tensor.zeros(device, shape, "f32", `g${i}`),
  }));
  const opt = await DraftOptimizer.create(device, params, { maxGradNorm: 0.5 });
  for (let s = 1; s <= 5; s++) {
    params.forEach((p, i) => p.grad.write(randomArray(p.grad.size, 100 * s + i, s < 3 ? 3 : 0.01)));
    opt.update(1e-3);
    if (s === 3) opt.zeroGrads();
  }
  const out = [
    ...await Promise.all(params.map((p) => p.param.readFloat())),
    Float32Array.of(await opt.lastGradNorm()),
  ];
  out.push(...await Promise.all(params.map((p) => p.grad.readFloat())));
  opt.destroy();
  params.forEach((p) => (p.param.destroy(), p.grad.destroy()));
  return out;
}

Deno.test(
  { name: "capped binding size: blocks are aligned, bind, and cover the tensor", ...needsGpu },
  async () => {
    const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
    try {
      assert.equal(small.limits.maxStorageBufferBindingSize, CAP);
      const t = Tensor.zeros(small, [100_000], "f32", "big");
      assert.throws(() => t.binding(), /tensor big \[100000\] f32: 400000 bytes exceed .* 65536 bytes/);
      const per = blockElements(t, 4096);
      assert.equal(per % 4096, 0);
      const blocks = flatBlocks(t, per);
      assert.equal(blocks.reduce((a, b) => a + b.size, 0), t.size);
      for (const b of blocks) assert.ok(b.binding().size! <= CAP);
      t.destroy();
    } finally {
      small.destroy();
    }
  },
);

Deno.test({
  name: "capped binding size: the optimizer update equals the uncapped one bit for bit",
  ...needsGpu,
}, async () => {
  const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
  try {
    const capped = await fiveUpdates(small);
    const full = await fiveUpdates(gpu!);
    assert.equal(capped.length, full.length);
    capped.forEach((a, i) => assert.deepEqual(a, full[i], `output ${i}`));
  } finally {
    small.destroy();
  }
});

/** y = x·Wᵀ (accumulated onto y0), dx = dy·W, dW = dW0 + dyᵀ·x on `device`, W [300, 70] (82 KiB). */
async function linearRun(device: Gpu): Promise<Float32Array[]> {
  const R = 24, OUT = 300, IN = 70;
  const t = (data: Float32Array<ArrayBuffer>, shape: number[], label: string) =>
    Tensor.fromArray(device, data, shape, "f32", label);
  const x = t(randomArray(R * IN, 1, 1), [R, IN], "x"), w = t(randomArray(OUT * IN, 2, 0.2), [OUT, IN], "w");
  const y = t(randomArray(R * OUT, 3, 1), [R, OUT], "y"), dy = t(randomArray(R * OUT, 4, 1), [R, OUT], "dy");
  const dx = Tensor.zeros(device, [R, IN], "f32", "dx"), dw = t(randomArray(OUT * IN, 5, 1), [OUT, IN], "dw");
  const p = new Program(device, "capped linear");
  await linear(p, x, w, y, { accumulate: true });
  await linearBackward(p, dy, x, w, dx, dw, { accumulateDw: true });
  await p.runChecked();
  const out = [await y.readFloat(), await dx.readFloat(), await dw.readFloat()];
  p.destroy();
  [x, w, y, dy, dx, dw].forEach((u) => u.destroy());
  return out;
}

Deno.test(
  { name: "capped binding size: linear and its backward over W's row blocks", ...needsGpu },
  async () => {
    const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
    try {
      const [y, dx, dw] = await linearRun(small);
      const [yFull, dxFull, dwFull] = await linearRun(gpu!);
      assert.deepEqual(y, yFull, "y: each output is the same dot product in the same order");
      assert.deepEqual(dw, dwFull, "dW: each row block is the same contraction over the rows");
      assertClose(dx, dxFull, "dx: summed over W's row blocks", { atol: 1e-5, rtol: 1e-5 });
      // Against the CPU reference as well (the unsplit run could share a bug).
      const x = randomArray(24 * 70, 1, 1),
        w = randomArray(300 * 70, 2, 0.2),
        y0 = randomArray(24 * 300, 3, 1);
      const ref = linearCpu(x, w, 24, 70, 300).map((v, i) => v + y0[i]);
      assertClose(y, ref, "y vs CPU", { atol: 1e-4, rtol: 1e-4 });
    } finally {
      small.destroy();
    }
  },
);
