import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { params, Program, runOnce } from "../../lib/gpu/program.ts";
import * as K from "../../kernels/rope.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import { Tensor } from "../../lib/tensor.ts";
import { parseRopeScaling, parseTargetConfig, type TargetConfig } from "../../lib/models/config.ts";
import {
  ropeAttentionFactor,
  ropeBackward,
  ropeBackwardCpu,
  type RopeConfig,
  ropeCpu,
  ropeForward,
  ropeInvFreq,
  type RopeShape,
  ropeTable,
  ropeType,
} from "../../lib/ops/rope.ts";

/** A toy Llama config.json (head_dim 16, as in the golden tensors) with the given rotary fields. */
function llama(rotary: Record<string, unknown>): TargetConfig {
  return parseTargetConfig({
    architectures: ["LlamaForCausalLM"],
    hidden_size: 64,
    num_attention_heads: 4,
    intermediate_size: 96,
    num_hidden_layers: 2,
    vocab_size: 256,
    ...rotary,
  });
}

const YARN_SCALING = {
  rope_type: "yarn",
  factor: 4,
  original_max_position_embeddings: 32,
  beta_fast: 32,
  beta_slow: 1,
  mscale: 1.2,
  mscale_all_dim: 0.5,
};

/** A yarn config like the golden "yarn" variant with some rope_scaling fields replaced. */
function yarnWith(changes: Record<string, unknown>): TargetConfig {
  return llama({
    rope_theta: 10000,
    max_position_embeddings: 128,
    rope_scaling: { ...YARN_SCALING, ...changes },
  });
}

/**
 * tests/golden/make_layers.py's VARIANTS as the rotary fields of a config.json: [fields, table positions,
 * seqLen]. llama3 uses the Transformers-5 spelling (`rope_parameters` carrying `rope_theta`), dynamic the
 * legacy `type`.
 */
const VARIANTS: Record<string, [Record<string, unknown>, number, number]> = {
  default: [{ rope_theta: 10000, max_position_embeddings: 64 }, 24, 24],
  linear: [
    { rope_theta: 10000, max_position_embeddings: 64, rope_scaling: { rope_type: "linear", factor: 2.5 } },
    24,
    24,
  ],
  dynamic: [
    { rope_theta: 10000, max_position_embeddings: 16, rope_scaling: { type: "dynamic", factor: 2 } },
    40,
    40,
  ],
  llama3: [
    {
      max_position_embeddings: 131072,
      rope_parameters: {
        rope_type: "llama3",
        rope_theta: 500000,
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    },
    24,
    24,
  ],
  yarn: [{ rope_theta: 10000, max_position_embeddings: 128, rope_scaling: YARN_SCALING }, 24, 24],
  // low == high after clamping (both correction dims below 0): exercises `high += 0.001`; beta_fast and
  // beta_slow take their defaults (32, 1), the values in make_layers.py
  yarn_equal: [
    {
      rope_theta: 10000,
      max_position_embeddings: 8,
      rope_scaling: { rope_type: "yarn", factor: 2, original_max_position_embeddings: 4 },
    },
    24,
    24,
  ],
};
/** The parsed config of each variant. */
const CONFIGS: Record<string, TargetConfig> = Object.fromEntries(
  Object.entries(VARIANTS).map(([name, [fields]]) => [name, llama(fields)]),
);
const GOLDEN_OFFSET = 3;

function upload(data: ArrayLike<number>, shape: number[], label: string): Tensor {
  return Tensor.fromArray(gpu!, Float32Array.from(data), shape, "f32", label);
}

Deno.test("rope: inv_freq and cos/sin tables of every variant match PyTorch (golden)", () => {
  const gold = Golden.load("layers");
  for (const [name, [, positions, seqLen]] of Object.entries(VARIANTS)) {
    const cfg = CONFIGS[name];
    assert.equal(ropeType(cfg), name === "yarn_equal" ? "yarn" : name);
    const headDim = cfg.headDim;
    assert.equal(gold.shape(`rope.${name}.x`)[3], headDim);
    assertClose(ropeInvFreq(cfg, headDim, seqLen), gold.f32(`rope.${name}.inv_freq`), `${name} inv_freq`, {
      atol: 1e-9,
      rtol: 1e-6,
    });
    const { cos, sin } = ropeTable(cfg, headDim, positions, seqLen);
    assertClose(cos, gold.f32(`rope.${name}.cos`), `${name} cos`, { atol: 5e-6, rtol: 0 });
    assertClose(sin, gold.f32(`rope.${name}.sin`), `${name} sin`, { atol: 5e-6, rtol: 0 });
  }
});

Deno.test("rope: a bare rope_scaling object parsed by parseRopeScaling gives the same table", () => {
  const cfg: RopeConfig = {
    ropeTheta: 10000,
    ropeScaling: parseRopeScaling(YARN_SCALING, 128),
    maxPositionEmbeddings: 128,
  };
  assert.deepEqual(ropeTable(cfg, 16, 24), ropeTable(CONFIGS.yarn, 16, 24));
});

Deno.test("rope: variant details (yarn factor and truncate, llama3 regimes, dynamic below its limit)", () => {
  const m = (s: number, mu: number) => 0.1 * mu * Math.log(s) + 1;
  // yarn's attention factor (transformers): attention_factor if given; m(f, mscale)/m(f, mscale_all_dim) when
  // both are given and non-zero; else m(f, 1)
  assert.ok(Math.abs(ropeAttentionFactor(CONFIGS.yarn) - m(4, 1.2) / m(4, 0.5)) < 1e-12);
  assert.ok(Math.abs(ropeAttentionFactor(CONFIGS.yarn_equal) - m(2, 1)) < 1e-12);
  assert.equal(ropeAttentionFactor(yarnWith({ attention_factor: 0.5 })), 0.5);
  assert.ok(Math.abs(ropeAttentionFactor(yarnWith({ mscale_all_dim: undefined })) - m(4, 1)) < 1e-12);
  assert.ok(Math.abs(ropeAttentionFactor(yarnWith({ mscale: undefined })) - m(4, 1)) < 1e-12);
  assert.equal(ropeAttentionFactor(yarnWith({ factor: 1 })), 1);
  assert.equal(ropeAttentionFactor(CONFIGS.llama3), 1);
  // yarn_equal: both correction dims clamp to 0, so high = 0.001 and only dimension 0 keeps its frequency
  const plain = ropeInvFreq(CONFIGS.default, 16);
  const eq = ropeInvFreq(CONFIGS.yarn_equal, 16);
  assert.equal(eq[0], plain[0]);
  for (let i = 1; i < 8; i++) assert.equal(eq[i], Math.fround(plain[i] / 2));
  // yarn truncate: the golden variant's correction range is dim(32) ≈ −1.6 .. dim(1) ≈ 1.41; truncated to
  // [0, 2] (the default, as in the golden), else [0, 1.41] and dimension 1 is further interpolated
  assert.deepEqual(ropeInvFreq(yarnWith({ truncate: true }), 16), ropeInvFreq(CONFIGS.yarn, 16));
  const high = 16 * Math.log(32 / (2 * Math.PI)) / (2 * Math.log(10000));
  assert.ok(high > 1.4 && high < 1.5);
  const untruncated = ropeInvFreq(yarnWith({ truncate: false }), 16);
  for (let i = 0; i < 8; i++) {
    const ramp = Math.min(i / high, 1);
    assert.equal(untruncated[i], Math.fround(plain[i] / 4 * ramp + plain[i] * (1 - ramp)), `dim ${i}`);
  }
  assert.ok(untruncated[1] < ropeInvFreq(CONFIGS.yarn, 16)[1]);
  // llama3 on Llama-3.1 values: high frequencies kept, low ones divided by 8, one blended in between
  const l3 = ropeInvFreq(CONFIGS.llama3, 16), base = ropeInvFreq(llama({ rope_theta: 500000 }), 16);
  assert.equal(l3[0], base[0]);
  assert.equal(l3[7], Math.fround(base[7] / 8));
  assert.ok(l3[4] < base[4] && l3[4] > base[4] / 8);
  // dynamic NTK leaves the frequencies alone up to max_position_embeddings
  const dyn = CONFIGS.dynamic;
  assert.deepEqual(ropeInvFreq(dyn, 16, 16), ropeInvFreq(CONFIGS.default, 16));
  assert.ok(ropeInvFreq(dyn, 16, 17)[7] < ropeInvFreq(dyn, 16, 16)[7]);
  assert.throws(() => ropeTable(dyn, 15, 4), ShapeError);
});

Deno.test({
  name: "rope: forward and backward of every variant match PyTorch autograd (golden)",
  ...needsGpu,
}, async () => {
  const gold = Golden.load("layers");
  const g = gpu!;
  for (const [name, [, positions, seqLen]] of Object.entries(VARIANTS)) {
    const cfg = CONFIGS[name];
    const shape = gold.shape(`rope.${name}.x`);
    const { cos, sin } = ropeTable(cfg, shape[3], positions, seqLen);
    const tcos = upload(cos, [positions, shape[3] / 2], "cos"),
      tsin = upload(sin, [positions, shape[3] / 2], "sin");
    const x = upload(gold.f32(`rope.${name}.x`), shape, "x"),
      dy = upload(gold.f32(`rope.${name}.dy`), shape, "dy");
    const y = Tensor.empty(g, shape, "f32", "y"), dx = Tensor.empty(g, shape, "f32", "dx");
    await runOnce(g, "rope golden", async (p) => {
      await ropeForward(p, x, y, tcos, tsin, { positionOffset: GOLDEN_OFFSET });
      await ropeBackward(p, dy, dx, tcos, tsin, { positionOffset: GOLDEN_OFFSET });
    });
    assertClose(await y.read(), gold.f32(`rope.${name}.y`), `${name} y`, { atol: 2e-5, rtol: 1e-4 });
    assertClose(await dx.read(), gold.f32(`rope.${name}.dx`), `${name} dx`, { atol: 2e-5, rtol: 1e-4 });
    for (const t of [tcos, tsin, x, dy, y, dx]) t.destroy();
  }
});

Deno.test({
  name: "rope: partial rotary width (Phi-4-mini's 0.75): GPU vs CPU, the rest passes through",
  ...needsGpu,
}, async () => {
  const g = gpu!;
  const shape: RopeShape = [2, 9, 3, 16], rotary = 12, offset = 4;
  const positions = 9 + offset;
  const { cos, sin } = ropeTable(CONFIGS.default, rotary, positions);
  const n = shape.reduce((a, b) => a * b, 1);
  const x = randomArray(n, 3), d = randomArray(n, 4);
  const wantY = ropeCpu(x, cos, sin, shape, offset, rotary);
  const wantDx = ropeBackwardCpu(d, cos, sin, shape, offset, rotary);
  for (let e = 0; e < n; e += 16) {
    for (let c = rotary; c < 16; c++) assert.equal(wantY[e + c], x[e + c], "pass-through columns unchanged");
  }
  const tcos = upload(cos, [positions, rotary / 2], "cos"),
    tsin = upload(sin, [positions, rotary / 2], "sin");
  const tx = upload(x, shape, "x"), td = upload(d, shape, "d");
  const ty = Tensor.empty(g, shape, "f32", "y"), tdx = Tensor.empty(g, shape, "f32", "dx");
  await runOnce(g, "partial rope", async (p) => {
    await ropeForward(p, tx, ty, tcos, tsin, { positionOffset: offset });
    await ropeBackward(p, td, tdx, tcos, tsin, { positionOffset: offset });
  });
  assertClose(await ty.read(), wantY, "partial forward", { atol: 1e-5, rtol: 1e-5 });
  assertClose(await tdx.read(), wantDx, "partial backward", { atol: 1e-5, rtol: 1e-5 });
  for (const t of [tcos, tsin, tx, td, ty, tdx]) t.destroy();
});

Deno.test({
  name: "rope: GPU vs CPU on several shapes, out of place, in place and in one arena",
  ...needsGpu,
}, async () => {
  const g = gpu!;
  const cfg = CONFIGS.yarn;
  const cases: Array<[RopeShape, number]> = [[[1, 1, 1, 2], 0], [[2, 7, 3, 16], 5], [[3, 33, 5, 64], 0], [[
    1,
    100,
    2,
    128,
  ], 28]];
  for (const [shape, offset] of cases) {
    const [, seq, , headDim] = shape;
    const positions = seq + offset;
    const { cos, sin } = ropeTable(cfg, headDim, positions);
    const tcos = upload(cos, [positions, headDim / 2], "cos"),
      tsin = upload(sin, [positions, headDim / 2], "sin");
    const n = shape.reduce((a, b) => a * b, 1);
    const x = randomArray(n, n), d = randomArray(n, n + 1);
    const wantY = ropeCpu(x, cos, sin, shape, offset), wantDx = ropeBackwardCpu(d, cos, sin, shape, offset);
    const tag = `[${shape}] offset ${offset}`;
    const tol = { atol: 1e-5, rtol: 1e-5 };
    // distinct tensors
    const tx = upload(x, shape, "x"), td = upload(d, shape, "d");
    const ty = Tensor.empty(g, shape, "f32", "y"), tdx = Tensor.empty(g, shape, "f32", "dx");
    await runOnce(g, "rope", async (p) => {
      await ropeForward(p, tx, ty, tcos, tsin, { positionOffset: offset });
      await ropeBackward(p, td, tdx, tcos, tsin, { positionOffset: offset });
    });
    assertClose(await ty.read(), wantY, `forward ${tag}`, tol);
    assertClose(await tdx.read(), wantDx, `backward ${tag}`, tol);
    // in place
    await runOnce(g, "rope in place", async (p) => {
      await ropeForward(p, tx, tx, tcos, tsin, { positionOffset: offset });
      await ropeBackward(p, td, td, tcos, tsin, { positionOffset: offset });
    });
    assertClose(await tx.read(), wantY, `forward in place ${tag}`, tol);
    assertClose(await td.read(), wantDx, `backward in place ${tag}`, tol);
    // input and output as two views of one arena buffer (output first, to cover both orders of offsets)
    const stride = Math.ceil(n / 64) * 64;
    const arena = Tensor.zeros(g, [2 * stride], "f32", "arena");
    const outView = arena.view(0, shape, "arena out"), inView = arena.view(stride, shape, "arena in");
    inView.write(x);
    await runOnce(
      g,
      "rope arena",
      (p) => ropeForward(p, inView, outView, tcos, tsin, { positionOffset: offset }),
    );
    assertClose(await outView.read(), wantY, `forward in an arena ${tag}`, tol);
    assertClose(await inView.read(), x, `arena input untouched ${tag}`, { atol: 0, rtol: 0 });
    for (const t of [tcos, tsin, tx, td, ty, tdx, arena]) t.destroy();
  }
});

Deno.test("rope: CPU backward matches central differences of the CPU forward", () => {
  const shape: RopeShape = [2, 3, 2, 6];
  const { cos, sin } = ropeTable(CONFIGS.yarn, 6, 5);
  const n = 2 * 3 * 2 * 6;
  const x = Float64Array.from(randomArray(n, 21)), dy = Float64Array.from(randomArray(n, 22));
  const loss = () => ropeCpu(x, cos, sin, shape, 2).reduce((s, v, i) => s + v * dy[i], 0);
  const h = 1e-6;
  const numeric = Array.from(x, (_, i) => {
    const keep = x[i];
    x[i] = keep + h;
    const up = loss();
    x[i] = keep - h;
    const down = loss();
    x[i] = keep;
    return (up - down) / (2 * h);
  });
  assertClose(ropeBackwardCpu(dy, cos, sin, shape, 2), numeric, "rope dx vs finite differences", {
    atol: 1e-8,
    rtol: 1e-6,
  });
});

Deno.test(
  { name: "rope: positions beyond the table and bad shapes are errors before dispatch", ...needsGpu },
  async () => {
    const g = gpu!;
    const x = Tensor.empty(g, [2, 8, 2, 16], "f32", "x"), y = Tensor.empty(g, [2, 8, 2, 16], "f32", "y");
    const cos = Tensor.empty(g, [10, 8], "f32", "cos"), sin = Tensor.empty(g, [10, 8], "f32", "sin");
    const cosBad = Tensor.empty(g, [10, 9], "f32", "cosBad");
    const x3 = Tensor.empty(g, [8, 2, 16], "f32", "x3");
    const p = new Program(g, "bad rope");
    await ropeForward(p, x, y, cos, sin, { positionOffset: 2 });
    assert.equal(p.dispatches.length, 1);
    await assert.rejects(
      () => ropeForward(p, x, y, cos, sin, { positionOffset: 3 }),
      /positions up to 10 \(offset 3 \+ seq 8\) exceed the table's 10 positions/,
    );
    await assert.rejects(
      () => ropeBackward(p, x, y, cosBad, cosBad),
      /cos \(cosBad\) has shape \[10,9\], expected \[positions, 1\.\.8\]/,
    );
    await assert.rejects(() => ropeForward(p, x3, x3, cos, sin), /expected \[batch, seq, heads, headDim\]/);
    await assert.rejects(() => ropeForward(p, x, y, cos, sin, { positionOffset: -1 }), ShapeError);
    const arena = Tensor.empty(g, [2 * 2 * 8 * 2 * 16], "f32", "arena");
    const a = arena.view(0, [2, 8, 2, 16]), b = arena.view(64, [2, 8, 2, 16]);
    await assert.rejects(() => ropeForward(p, a, b, cos, sin), /overlap without being the same tensor/);
    assert.equal(p.dispatches.length, 1);
    p.destroy();
    for (const t of [x, y, cos, sin, cosBad, x3, arena]) t.destroy();
  },
);

Deno.test({
  name: "rope: vec4 units give the scalar kernel's bits (forward, backward, in place)",
  ...needsGpu,
}, async () => {
  const g = gpu!;
  // x [B 2, T 5, 3 heads, hd 16] at positions 3.., full rotary width and a partial one (r 8: pass-through too).
  const [B, T, nh, hd, offset] = [2, 5, 3, 16, 3];
  for (const rotary of [hd, 8]) {
    const half = rotary / 2;
    const { cos, sin } = ropeTable(llama({ rope_theta: 10000 }), rotary, offset + T);
    const tcos = Tensor.fromArray(g, cos, [offset + T, half], "f32", "cos");
    const tsin = Tensor.fromArray(g, sin, [offset + T, half], "f32", "sin");
    const x = randomArray(B * T * nh * hd, rotary, 2), shape = [B, T, nh, hd];
    for (const entryPoint of ["forward", "backward"] as const) {
      const tx = Tensor.fromArray(g, x, shape, "f32", "x");
      const vec4 = Tensor.empty(g, shape, "f32", "vec4"),
        inPlace = Tensor.fromArray(g, x, shape, "f32", "x (in place)");
      const scalar = Tensor.empty(g, shape, "f32", "scalar");
      await runOnce(g, "rope vec4", async (p) => {
        const op = entryPoint === "forward" ? ropeForward : ropeBackward;
        await op(p, tx, vec4, tcos, tsin, { positionOffset: offset });
        await op(p, inPlace, inPlace, tcos, tsin, { positionOffset: offset });
        const units = B * T * nh * (hd / 2);
        const fields = params(
          ["u32", units],
          ["u32", T],
          ["u32", nh],
          ["u32", half],
          ["u32", offset],
          ["u32", 0],
          ["u32", 0],
          ["u32", hd / 2],
        );
        await p.add(
          { name: "rope scalar", code: K.separate, entryPoint },
          [fields, tx, scalar, tcos, tsin],
          Math.ceil(units / K.ROPE_WG),
        );
        assert.deepEqual(p.dispatches.slice(0, 2).map((d) => d.label), [
          `rope.${entryPoint}.vec4`,
          `rope.${entryPoint}.vec4.aliased`,
        ]);
      });
      const want = await scalar.readFloat(), what = `${entryPoint}, r ${rotary}`;
      assert.deepEqual(await vec4.readFloat(), want, what);
      assert.deepEqual(await inPlace.readFloat(), want, `${what}, in place`);
      for (const t of [tx, vec4, inPlace, scalar]) t.destroy();
    }
    tcos.destroy();
    tsin.destroy();
  }
});
