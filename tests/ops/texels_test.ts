import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray } from "../gpu.ts";
import { Tensor } from "../../lib/tensor.ts";
import { Program } from "../../lib/gpu/program.ts";
import { writableBindings } from "../../lib/gpu/texture_contents.ts";
import { fill } from "../../lib/ops/elementwise.ts";
import { matmul, type MatmulTile } from "../../lib/ops/matmul.ts";

const TEXTURES: MatmulTile = { kind: "regtile", tm: 8, tn4: 2, textures: true };
const STORAGE: MatmulTile = { kind: "regtile", tm: 8, tn4: 2 };

Deno.test("texels: the writable bindings are read off the WGSL", () => {
  const code = `
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0)  @binding(4)  var<storage,read_write> partials: array<vec4<f32>>;
@group(0) @binding(3) var tex: texture_2d<f32>;`;
  assert.deepEqual([...writableBindings(code)].sort(), [2, 4]);
});

/** The output of `x·w` (x [24, 32], w [32, 40]) in a fresh program with storage operands. */
async function fresh(x: Tensor, w: Tensor): Promise<Float32Array> {
  const out = Tensor.empty(gpu!, [24, 40], "f32", "fresh out");
  const p = new Program(gpu!, "fresh product");
  await matmul(p, x, w, out, { tile: STORAGE });
  await p.runChecked();
  const got = await out.readFloat();
  p.destroy();
  out.destroy();
  return got;
}

function assertSame(got: Float32Array, want: Float32Array, label: string): void {
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) assert.fail(`${label}: element ${i} is ${got[i]}, want ${want[i]}`);
  }
}

Deno.test(
  { name: "texels: a program packs a tensor once until a dispatch writes it, bit for bit", ...needsGpu },
  async () => {
    const g = gpu!;
    const x = Tensor.fromArray(g, randomArray(24 * 32, 41), [24, 32], "f32", "x");
    const w = Tensor.fromArray(g, randomArray(32 * 40, 42), [32, 40], "f32", "w");
    const outs = [0, 1, 2].map((i) => Tensor.empty(g, [24, 40], "f32", `out ${i}`));
    const p = new Program(g, "reuse");
    try {
      p.readOnly(w);
      const packs = () => p.dispatches.filter((d) => d.label.startsWith("texels.pack")).length;
      await matmul(p, x, w, outs[0], { tile: TEXTURES });
      assert.equal(packs(), 2, "x and w packed for the first product");
      await matmul(p, x, w, outs[1], { tile: TEXTURES });
      assert.equal(packs(), 2, "the second product reads both textures again");
      await fill(p, x, 0.5); // writes x: its texture is stale, w's is not
      await matmul(p, x, w, outs[2], { tile: TEXTURES });
      assert.equal(packs(), 3, "x packed again after the write, w not");
      await p.runChecked();
      const [o0, o1, o2] = await Promise.all(outs.map((o) => o.readFloat()));
      assertSame(o1, o0, "second product");
      assertSame(o2, await fresh(x, w), "product after the write"); // x now holds 0.5s
      x.write(randomArray(24 * 32, 41));
      assertSame(o0, await fresh(x, w), "first product");
    } finally {
      p.destroy();
      for (const t of [x, w, ...outs]) t.destroy();
    }
  },
);

Deno.test({ name: "texels: writing a tensor declared read-only is an error", ...needsGpu }, async () => {
  const g = gpu!;
  const w = Tensor.fromArray(g, randomArray(64, 43), [64], "f32", "w");
  const p = new Program(g, "read-only");
  try {
    p.readOnly(w);
    await assert.rejects(() => fill(p, w, 2), /writes tensor w, declared read-only/);
  } finally {
    p.destroy();
    w.destroy();
  }
});
