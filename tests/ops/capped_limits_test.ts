/**
 * Tensors over the binding size (lib/ops/blocks.ts): on a device whose maxStorageBufferBindingSize is capped
 * at 64 KiB, the optimizer's ops (global grad norm, clipped AdamW, zeroing) work block by block and give the
 * uncapped device's results bit for bit; one binding of a too-large tensor is refused with its name.
 */
import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray } from "../gpu.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { Tensor } from "../../lib/tensor.ts";
import { AdamWOptimizer } from "../../lib/train/optimizer.ts";
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
  const opt = await AdamWOptimizer.create(device, params, { maxGradNorm: 0.5 });
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
