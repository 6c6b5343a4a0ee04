/** The draft optimizer: clipped AdamW over several tensors against a CPU reference, zeroing, state round trip. */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Tensor } from "../../lib/tensor.ts";
import { adamwState, adamwStepCpu } from "../../lib/ops/adamw.ts";
import { globalNormSquaredCpu } from "../../lib/ops/reduce.ts";
import { MUON_DEFAULTS, muonStepCpu } from "../../lib/ops/muon.ts";
import { DraftOptimizer, type NamedParameter } from "../../lib/train/optimizer.ts";

const SHAPES: number[][] = [[7, 5], [33], [3, 4, 130]];

function makeParams(seed: number): { params: NamedParameter[]; initial: Float32Array<ArrayBuffer>[] } {
  const initial = SHAPES.map((s, i) => randomArray(s.reduce((a, b) => a * b, 1), seed + i, 0.5));
  const params = SHAPES.map((shape, i) => ({
    name: `layer${i}.weight`,
    param: Tensor.fromArray(gpu!, initial[i], shape, "f32", `w${i}`),
    grad: Tensor.zeros(gpu!, shape, "f32", `g${i}`),
  }));
  return { params, initial };
}

/** Gradients for step `s`: large at first (clipping active), small later (clip coefficient 1). */
function grads(s: number): Float32Array<ArrayBuffer>[] {
  return SHAPES.map((shape, i) =>
    randomArray(shape.reduce((a, b) => a * b, 1), 100 * s + i, s < 2 ? 3 : 0.001)
  );
}

Deno.test(
  { name: "optimizer: clipped AdamW over several tensors matches the CPU reference", ...needsGpu },
  async () => {
    const { params, initial } = makeParams(1);
    const opt = await DraftOptimizer.create(gpu!, params, { maxGradNorm: 0.5 });
    let w: Float32Array[] = initial.map((x) => Float32Array.from(x));
    let m: Float32Array[] = initial.map((x) => new Float32Array(x.length));
    let v: Float32Array[] = initial.map((x) => new Float32Array(x.length));
    const lrs = [1e-2, 2e-2, 5e-3, 1e-3];
    for (let s = 0; s < lrs.length; s++) {
      const g = grads(s);
      g.forEach((x, i) => params[i].grad.write(x));
      opt.update(lrs[s]);
      const normSq = globalNormSquaredCpu(g);
      const state = adamwState(s + 1, lrs[s], 0.5);
      const next = w.map((_, i) =>
        adamwStepCpu({ param: w[i], grad: g[i], m: m[i], v: v[i] }, normSq, state)
      );
      w = next.map((n) => n.param);
      m = next.map((n) => n.m);
      v = next.map((n) => n.v);
      assertClose([await opt.lastGradNorm()], [Math.sqrt(normSq)], `grad norm at step ${s + 1}`, {
        rtol: 1e-5,
      });
      for (let i = 0; i < params.length; i++) {
        assertClose(await params[i].param.readFloat(), w[i], `param ${i} after step ${s + 1}`, {
          atol: 1e-6,
          rtol: 1e-5,
        });
        // The update zeroes the gradients for the next accumulation window.
        assert.ok((await params[i].grad.readFloat()).every((x) => x === 0), `grad ${i} zeroed`);
      }
    }
    assert.equal(opt.steps, lrs.length);
    opt.destroy();
    for (const p of params) [p.param, p.grad].forEach((t) => t.destroy());
  },
);

Deno.test({ name: "optimizer: saved state resumes bit for bit", ...needsGpu }, async () => {
  const a = makeParams(7);
  const b = makeParams(7);
  const optA = await DraftOptimizer.create(gpu!, a.params, { maxGradNorm: 0.5 });
  const optB = await DraftOptimizer.create(gpu!, b.params, { maxGradNorm: 0.5 });
  const lr = (s: number) => 1e-2 / (s + 1);
  const run = (opt: DraftOptimizer, ps: NamedParameter[], s: number) => {
    grads(s).forEach((x, i) => ps[i].grad.write(x));
    opt.update(lr(s));
  };
  for (let s = 0; s < 2; s++) run(optA, a.params, s);
  // B gets A's weights and optimizer state after 2 steps, then both take 2 more.
  const saved = await optA.stateTensors();
  assert.equal(saved.size, 2 * SHAPES.length);
  assert.ok(saved.has("layer1.weight.exp_avg") && saved.has("layer1.weight.exp_avg_sq"));
  for (let i = 0; i < SHAPES.length; i++) b.params[i].param.write(await a.params[i].param.readFloat());
  optB.loadState(saved, optA.steps, "test state");
  assert.equal(optB.steps, 2);
  for (let s = 2; s < 4; s++) {
    run(optA, a.params, s);
    run(optB, b.params, s);
  }
  for (let i = 0; i < SHAPES.length; i++) {
    assert.deepEqual(await b.params[i].param.readFloat(), await a.params[i].param.readFloat(), `param ${i}`);
  }
  // A missing or misshapen moment is named.
  const broken = new Map(saved);
  broken.delete("layer2.weight.exp_avg_sq");
  assert.throws(() => optB.loadState(broken, 2, "ckpt/optimizer.safetensors"), /layer2\.weight\.exp_avg_sq/);
  const misshapen = new Map(saved);
  misshapen.set("layer0.weight.exp_avg", { ...saved.get("layer0.weight.exp_avg")!, shape: [5, 7] });
  assert.throws(
    () => optB.loadState(misshapen, 2, "ckpt"),
    /layer0\.weight\.exp_avg is F32 \[5, 7\], expected F32 \[7, 5\]/,
  );
  for (const o of [optA, optB]) o.destroy();
});

Deno.test({ name: "optimizer: bad parameter lists are refused", ...needsGpu }, async () => {
  const t = Tensor.zeros(gpu!, [4], "f32", "t");
  const g = Tensor.zeros(gpu!, [5], "f32", "g");
  await assert.rejects(
    () => DraftOptimizer.create(gpu!, [{ name: "x", param: t, grad: g }], { maxGradNorm: 0.5 }),
    /x param \[4\] and grad \[5\] differ/,
  );
  await assert.rejects(
    () =>
      DraftOptimizer.create(gpu!, [{ name: "x", param: t, grad: t }, { name: "x", param: t, grad: t }], {
        maxGradNorm: 0.5,
      }),
    /listed twice/,
  );
  t.destroy();
  g.destroy();
});

Deno.test(
  { name: "optimizer: Muon for the hidden matrices, AdamW for the rest, resumable", ...needsGpu },
  async () => {
    const shapes: [string, number[]][] = [["fc.weight", [6, 20]], ["norm.weight", [20]], ["lm_head.weight", [
      9,
      6,
    ]]];
    const initial = shapes.map(([, s], i) => randomArray(s.reduce((a, b) => a * b, 1), 40 + i, 0.5));
    const make = () =>
      shapes.map(([name, shape], i) => ({
        name,
        param: Tensor.fromArray(gpu!, initial[i], shape, "f32", name),
        grad: Tensor.zeros(gpu!, shape, "f32", `${name} grad`),
      }));
    const muon = { ...MUON_DEFAULTS, lrRatio: 10 };
    const a = make(), b = make();
    const optA = await DraftOptimizer.create(gpu!, a, { maxGradNorm: 0.5, muon });
    const optB = await DraftOptimizer.create(gpu!, b, { maxGradNorm: 0.5, muon });
    const gradsAt = (s: number) =>
      shapes.map(([, sh], i) => randomArray(sh.reduce((x, y) => x * y, 1), 7 * s + i, 0.4));
    let w: ArrayLike<number>[] = initial, buf: Float64Array = new Float64Array(120);
    let m: Float32Array[] = shapes.map(([, sh]) => new Float32Array(sh.reduce((x, y) => x * y, 1)));
    let v: Float32Array[] = m.map((x) => x.slice());
    try {
      for (let s = 0; s < 2; s++) {
        const g = gradsAt(s), lr = 1e-3 * (s + 1);
        g.forEach((x, i) => a[i].grad.write(x));
        optA.update(lr);
        const normSq = globalNormSquaredCpu(g), state = adamwState(s + 1, lr, 0.5);
        const fc = muonStepCpu({ param: w[0], grad: g[0], buf }, 6, 20, normSq, state, muon);
        const rest = [1, 2].map((i) =>
          adamwStepCpu({ param: w[i], grad: g[i], m: m[i], v: v[i] }, normSq, state)
        );
        const fcDelta = fc.param.map((x, j) => x - w[0][j]);
        const got = await a[0].param.readFloat();
        assertClose(got.map((x, j) => x - w[0][j]), fcDelta, `fc (Muon) at update ${s + 1}`, {
          atol: 2e-3 * Math.max(...fcDelta.map(Math.abs)),
          rtol: 0,
        });
        for (const [k, r] of rest.entries()) {
          assertClose(await a[k + 1].param.readFloat(), r.param, `${shapes[k + 1][0]} (AdamW)`, {
            atol: 1e-6,
            rtol: 1e-5,
          });
        }
        w = [got, ...rest.map((r) => r.param)];
        buf = fc.buf;
        m = [m[0], ...rest.map((r) => r.m)];
        v = [v[0], ...rest.map((r) => r.v)];
      }
      const saved = await optA.stateTensors();
      assert.deepEqual([...saved.keys()].sort(), [
        "fc.weight.momentum_buffer",
        "lm_head.weight.exp_avg",
        "lm_head.weight.exp_avg_sq",
        "norm.weight.exp_avg",
        "norm.weight.exp_avg_sq",
      ]);
      for (let i = 0; i < shapes.length; i++) b[i].param.write(await a[i].param.readFloat());
      optB.loadState(saved, optA.steps, "test state");
      for (const [opt, ps] of [[optA, a], [optB, b]] as const) {
        gradsAt(5).forEach((x, i) => ps[i].grad.write(x));
        opt.update(5e-4);
      }
      for (let i = 0; i < shapes.length; i++) {
        assert.deepEqual(
          await b[i].param.readFloat(),
          await a[i].param.readFloat(),
          `${shapes[i][0]} resumed`,
        );
      }
    } finally {
      optA.destroy();
      optB.destroy();
      for (const p of [...a, ...b]) [p.param, p.grad].forEach((t) => t.destroy());
    }
  },
);
