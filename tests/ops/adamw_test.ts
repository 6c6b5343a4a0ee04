import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Program } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  ADAMW_STATE_SIZE,
  type AdamWOptions,
  adamwState,
  adamwStep,
  adamwStepCpu,
} from "../../lib/ops/adamw.ts";
import { globalNormPartialsSize, globalNormSquared, globalNormSquaredCpu } from "../../lib/ops/reduce.ts";

/** A model's parameters on the GPU with one prebuilt optimizer program (norm², then one update per tensor). */
class Trainer {
  params: Tensor[];
  grads: Tensor[];
  m: Tensor[];
  v: Tensor[];
  normSq: Tensor;
  state: Tensor;
  partials: Tensor;
  program: Program;

  private constructor(initial: Float32Array<ArrayBuffer>[]) {
    const g = gpu!;
    this.params = initial.map((w, i) => Tensor.fromArray(g, w, [w.length], "f32", `w${i}`));
    this.grads = initial.map((w, i) => Tensor.empty(g, [w.length], "f32", `g${i}`));
    this.m = initial.map((w, i) => Tensor.zeros(g, [w.length], "f32", `m${i}`));
    this.v = initial.map((w, i) => Tensor.zeros(g, [w.length], "f32", `v${i}`));
    this.normSq = Tensor.empty(g, [1], "f32", "normSq");
    this.state = Tensor.empty(g, [ADAMW_STATE_SIZE], "f32", "state");
    this.partials = Tensor.empty(g, [globalNormPartialsSize(this.grads)], "f32", "partials");
    this.program = new Program(g, "optimizer step");
  }

  static async create(
    initial: Float32Array<ArrayBuffer>[],
    options: Partial<AdamWOptions>,
  ): Promise<Trainer> {
    const t = new Trainer(initial);
    await globalNormSquared(t.program, t.grads, t.partials, t.normSq);
    for (let i = 0; i < initial.length; i++) {
      await adamwStep(t.program, {
        param: t.params[i],
        grad: t.grads[i],
        m: t.m[i],
        v: t.v[i],
        normSq: t.normSq,
        state: t.state,
      }, options);
    }
    return t;
  }

  /** Uploads the gradients and the step's scalars and replays the program. */
  async step(grads: Float32Array<ArrayBuffer>[], state: Float32Array<ArrayBuffer>): Promise<void> {
    grads.forEach((g, i) => this.grads[i].write(g));
    this.state.write(state);
    await this.program.runChecked();
  }

  async read(list: Tensor[]): Promise<Float32Array[]> {
    const out = [];
    for (const t of list) out.push(await t.readFloat());
    return out;
  }

  destroy(): void {
    this.program.destroy();
    for (const t of [...this.params, ...this.grads, ...this.m, ...this.v]) t.destroy();
    for (const t of [this.normSq, this.state, this.partials]) t.destroy();
  }
}

Deno.test(
  { name: "adamw: several steps vs the CPU reference, clipping on and off", ...needsGpu },
  async () => {
    const sizes = [1, 7, 1000, 5000];
    const cases: Array<[string, number, Partial<AdamWOptions>]> = [
      ["clipping active", 0.5, { weightDecay: 0.01 }],
      ["clipping inactive", 1e6, {}],
      ["clipping off", 0, { beta1: 0.8, beta2: 0.99, eps: 1e-6 }],
    ];
    for (const [c, [name, maxNorm, options]] of cases.entries()) {
      let params = sizes.map((n, i) => randomArray(n, 10 * c + i));
      let m = sizes.map((n) => new Float32Array(n)), v = sizes.map((n) => new Float32Array(n));
      const trainer = await Trainer.create(params, options);
      for (let step = 1; step <= 3; step++) {
        const grads = sizes.map((n, i) => randomArray(n, 100 * step + 10 * c + i, 0.1));
        const state = adamwState(step, 1e-3 * step, maxNorm, { beta1: 0.9, beta2: 0.999, ...options });
        await trainer.step(grads, state);
        const normSq = globalNormSquaredCpu(grads);
        const gpuNormSq = (await trainer.normSq.readFloat())[0];
        assertClose([gpuNormSq], [normSq], `${name}: norm² step ${step}`, { rtol: 1e-5 });
        const coef = maxNorm > 0 ? Math.min(1, maxNorm / (Math.sqrt(normSq) + 1e-6)) : 1;
        assert.equal(coef < 1, name === "clipping active", `${name}: coefficient ${coef}`);
        const next = sizes.map((_, i) =>
          adamwStepCpu({ param: params[i], grad: grads[i], m: m[i], v: v[i] }, gpuNormSq, state, options)
        );
        params = next.map((x) => x.param as Float32Array<ArrayBuffer>);
        m = next.map((x) => x.m as Float32Array<ArrayBuffer>);
        v = next.map((x) => x.v as Float32Array<ArrayBuffer>);
        const [gpuParams, gpuM, gpuV] = [
          await trainer.read(trainer.params),
          await trainer.read(trainer.m),
          await trainer.read(trainer.v),
        ];
        for (let i = 0; i < sizes.length; i++) {
          const tag = `${name}: step ${step}, n=${sizes[i]}`;
          assertClose(gpuParams[i], params[i], `param ${tag}`, { atol: 1e-6, rtol: 1e-5 });
          // m = β1·m + (1 − β1)·g cancels: the error is relative to the terms (~1e-2), not to m.
          assertClose(gpuM[i], m[i], `m ${tag}`, { atol: 1e-8, rtol: 1e-5 });
          assertClose(gpuV[i], v[i], `v ${tag}`, { atol: 1e-12, rtol: 1e-5 });
        }
      }
      trainer.destroy();
    }
  },
);

Deno.test({ name: "adamw: hand-computed torch.optim.AdamW steps", ...needsGpu }, async () => {
  // Two parameters w = [1, -2], lr 0.1, weight decay 0.5, max_norm 1; grads (3, 4) then (0.1, 0).
  const trainer = await Trainer.create([Float32Array.of(1), Float32Array.of(-2)], { weightDecay: 0.5 });
  await trainer.step([Float32Array.of(3), Float32Array.of(4)], adamwState(1, 0.1, 1));
  // Step 1: |g| = 5, coef = 1/(5 + 1e-6), g = (0.6, 0.8)·c with c = 5/(5 + 1e-6); decay: w·(1 − 0.05).
  // m̂ = g, v̂ = g², so the update is lr·g/(|g| + 1e-8) = 0.1·sign(g) up to 1e-8/|g|.
  const c = 5 / (5 + 1e-6);
  const g1 = [0.6 * c, 0.8 * c];
  const w1 = [1 * 0.95 - 0.1 * g1[0] / (g1[0] + 1e-8), -2 * 0.95 - 0.1 * g1[1] / (g1[1] + 1e-8)];
  const [p1, m1, v1] = [
    await trainer.read(trainer.params),
    await trainer.read(trainer.m),
    await trainer.read(trainer.v),
  ];
  assertClose([p1[0][0], p1[1][0]], w1, "w after step 1", { atol: 1e-7, rtol: 1e-6 });
  assertClose([m1[0][0], m1[1][0]], [0.1 * g1[0], 0.1 * g1[1]], "m after step 1", { rtol: 1e-6 });
  assertClose([v1[0][0], v1[1][0]], [0.001 * g1[0] ** 2, 0.001 * g1[1] ** 2], "v after step 1", {
    rtol: 1e-5,
  });
  // Step 2: |g| = 0.1 < 1, no clipping. m = 0.9·m1 + 0.1·g, v = 0.999·v1 + 0.001·g²,
  // w = w1·(1 − 0.05) − 0.1/(1 − 0.9²) · m / (sqrt(v)/sqrt(1 − 0.999²) + 1e-8).
  await trainer.step([Float32Array.of(0.1), Float32Array.of(0)], adamwState(2, 0.1, 1));
  const g2 = [0.1, 0];
  const m2 = g2.map((g, i) => 0.9 * 0.1 * g1[i] + 0.1 * g);
  const v2 = g2.map((g, i) => 0.999 * 0.001 * g1[i] ** 2 + 0.001 * g * g);
  const w2 = w1.map((w, i) =>
    w * 0.95 - 0.1 / (1 - 0.81) * m2[i] / (Math.sqrt(v2[i] / (1 - 0.998001)) + 1e-8)
  );
  const [p2, gm2, gv2] = [
    await trainer.read(trainer.params),
    await trainer.read(trainer.m),
    await trainer.read(trainer.v),
  ];
  assertClose([gm2[0][0], gm2[1][0]], m2, "m after step 2", { rtol: 1e-6 });
  assertClose([gv2[0][0], gv2[1][0]], v2, "v after step 2", { rtol: 1e-5 });
  assertClose([p2[0][0], p2[1][0]], w2, "w after step 2", { atol: 1e-7, rtol: 1e-6 });
  trainer.destroy();
});

Deno.test({ name: "adamw: PyTorch clip_grad_norm_ + AdamW golden steps", ...needsGpu }, async () => {
  const golden = Golden.load("loss");
  const trainer = await Trainer.create([golden.f32("adamw.w1"), golden.f32("adamw.w2")], {
    weightDecay: 0.1,
  });
  for (const step of [1, 2]) {
    const k = `adamw.step${step}`;
    await trainer.step([golden.f32(`${k}.g1`), golden.f32(`${k}.g2`)], adamwState(step, 0.01, 0.5));
    const norm = Math.sqrt((await trainer.normSq.readFloat())[0]);
    assertClose([norm], golden.f32(`${k}.norm`), `${k} grad norm`, { rtol: 1e-6 });
    const [w, m, v] = [
      await trainer.read(trainer.params),
      await trainer.read(trainer.m),
      await trainer.read(trainer.v),
    ];
    for (const i of [0, 1]) {
      assertClose(w[i], golden.f32(`${k}.w${i + 1}`), `${k}.w${i + 1}`, { atol: 1e-7, rtol: 1e-6 });
      assertClose(m[i], golden.f32(`${k}.m${i + 1}`), `${k}.m${i + 1}`, { atol: 1e-9, rtol: 1e-5 });
      assertClose(v[i], golden.f32(`${k}.v${i + 1}`), `${k}.v${i + 1}`, { atol: 1e-12, rtol: 1e-5 });
    }
  }
  trainer.destroy();
});

Deno.test({ name: "adamw: state helper and argument checks", ...needsGpu }, async () => {
  const s = adamwState(3, 2e-4, 0.5);
  assertClose(s, [2e-4, 1 - 0.9 ** 3, 1 - 0.999 ** 3, 0.5], "adamwState", { atol: 0, rtol: 1e-7 });
  assert.throws(() => adamwState(0, 1e-3, 0.5), /step 0 must be an integer ≥ 1/);
  const g = gpu!;
  const [w, grad, m, v] = ["w", "g", "m", "v"].map((n) => Tensor.empty(g, [5], "f32", n));
  const normSq = Tensor.empty(g, [1], "f32", "normSq");
  const state = Tensor.empty(g, [ADAMW_STATE_SIZE], "f32", "state");
  const p = new Program(g, "refused");
  const ok = { param: w, grad, m, v, normSq, state };
  await assert.rejects(
    () => adamwStep(p, { ...ok, m: Tensor.empty(g, [6], "f32", "m6") }),
    /adamwStep: param \[5\] and m \[6\] must have the same shape/,
  );
  await assert.rejects(() => adamwStep(p, { ...ok, v: m }), /m \(m\) and v \(m\) must not share memory/);
  await assert.rejects(
    () => adamwStep(p, { ...ok, state: normSq }),
    /state \(normSq\) has shape \[1\], expected \[4\]/,
  );
  await assert.rejects(
    () => adamwStep(p, { ...ok, grad: Tensor.empty(g, [5], "f16", "g16") }),
    /grad \(g16\) is f16, expected f32/,
  );
  assert.equal(p.dispatches.length, 0);
  await adamwStep(p, { ...ok, grad: w.reshape([5]) }).then(
    () => assert.fail("grad aliasing param must be refused"),
    (e) => assert.match(String(e), /must not share memory/),
  );
  p.destroy();
  for (const t of [w, grad, m, v, normSq, state]) t.destroy();
});
