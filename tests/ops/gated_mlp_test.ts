import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { cpuKernels, Gpu, isCpuAdapter } from "../../lib/gpu/device.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { type DType, Tensor } from "../../lib/tensor.ts";
import { gatedLinear, swigluDownBackward } from "../../lib/ops/gated_mlp.ts";
import { gatedMatmul, linear, linearBackward, linearBackwardCpu, linearCpu } from "../../lib/ops/matmul.ts";
import {
  gegluTanhCpu,
  gegluTanhForward,
  swigluBackward,
  swigluBackwardCpu,
  swigluCpu,
  swigluForward,
} from "../../lib/ops/swiglu.ts";

// [R, H, I]: vec4 and scalar loads, one and several row tiles (B packed or not), column groups cut short. Small
// widths keep the kernels' tiles small: the unrolled 16×32 tile takes seconds to compile, and longer on GL.
const SHAPES = [[5, 12, 40], [7, 6, 9], [40, 20, 60]];

async function read(t: Tensor): Promise<Float32Array> {
  return (await t.read()) as Float32Array;
}

function upload(
  data: Float32Array<ArrayBuffer>,
  shape: number[],
  label: string,
  dtype: DType = "f32",
): Tensor {
  return Tensor.fromArray(gpu!, data, shape, dtype, label);
}

function empty(shape: number[], label: string): Tensor {
  return Tensor.empty(gpu!, shape, "f32", label);
}

function sameBits(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  const i = a.findIndex((v, k) => v !== b[k]);
  assert.equal(i, -1, `${what}: element ${i} is ${got[i]}, the unfused ops give ${want[i]}`);
}

/** The matmul dispatches a program built by `build` records, by label. */
async function dispatchLabels(build: (p: Program) => Promise<void>) {
  const labels: string[] = [];
  await runOnce(gpu!, "labels", async (p) => {
    await build(p);
    labels.push(...p.dispatches.map((d) => d.label).filter((l) => l.startsWith("matmul.")));
  });
  return labels;
}

async function forwardCase(R: number, H: number, I: number, dtype: DType, activation: "silu" | "gelu_tanh") {
  const x = upload(randomArray(R * H, R + H, 2), [R, H], "x");
  const wg = upload(randomArray(I * H, I + 1, 0.5), [I, H], "w_gate", dtype);
  const wu = upload(randomArray(I * H, I + 2, 0.5), [I, H], "w_up", dtype);
  const [act, gate, up, act2, scratchGate, scratchUp, refAct, refGate, refUp] = [
    "act",
    "gate",
    "up",
    "act (not kept)",
    "gate scratch",
    "up scratch",
    "ref act",
    "ref gate",
    "ref up",
  ].map((l) => empty([R, I], l));
  await runOnce(gpu!, "gated forward", async (p) => {
    await gatedLinear(p, x, wg, wu, { act, gate, up, keep: true }, activation);
    await gatedLinear(p, x, wg, wu, { act: act2, gate: scratchGate, up: scratchUp, keep: false }, activation);
    await linear(p, x, wg, refGate);
    await linear(p, x, wu, refUp);
    if (activation === "silu") await swigluForward(p, refGate, refUp, refAct);
    else await gegluTanhForward(p, refGate, refUp, refAct);
  });
  const what = `[${R}, ${H}, ${I}] ${dtype} ${activation}`;
  const want = await read(refAct);
  sameBits(await read(act), want, `act ${what}`);
  sameBits(await read(act2), want, `act (not kept) ${what}`);
  sameBits(await read(gate), await read(refGate), `gate ${what}`);
  sameBits(await read(up), await read(refUp), `up ${what}`);
  const [xs, gs, us] = [await read(x), await read(wg), await read(wu)];
  const g = linearCpu(xs, gs, R, H, I), u = linearCpu(xs, us, R, H, I);
  const cpu = activation === "silu" ? swigluCpu(g, u) : gegluTanhCpu(g, u);
  assertClose(want, cpu, `act vs CPU ${what}`, { atol: 1e-4, rtol: 1e-4 });
  for (const t of [x, wg, wu, act, gate, up, act2, scratchGate, scratchUp, refAct, refGate, refUp]) {
    t.destroy();
  }
}

Deno.test({ name: "gated MLP: the fused forward has the unfused ops' bits", ...needsGpu }, async () => {
  const dtypes: DType[] = ["f32", "bf16", ...(gpu?.features.shaderF16 ? ["f16" as const] : [])];
  for (const [R, H, I] of SHAPES) await forwardCase(R, H, I, "f32", "silu");
  // Half-precision weights and Gemma's activation on the shape with several row tiles (B packed).
  for (const dtype of dtypes.slice(1)) await forwardCase(40, 20, 60, dtype, "silu");
  await forwardCase(40, 20, 60, "f32", "gelu_tanh");
});

async function backwardCase(R: number, H: number, I: number) {
  const dy = upload(randomArray(R * H, R * H, 1), [R, H], "dy");
  const act = upload(randomArray(R * I, R + I, 1), [R, I], "act");
  const gate = upload(randomArray(R * I, R + I + 1, 6), [R, I], "gate");
  const up = upload(randomArray(R * I, R + I + 2, 2), [R, I], "up");
  const w = upload(randomArray(H * I, H + I, 0.5), [H, I], "w_down");
  const [dAct, dGate, dUp, refDAct, refDGate, refDUp] = [
    "d act",
    "d gate",
    "d up",
    "ref d act",
    "ref d gate",
    "ref d up",
  ]
    .map((l) => empty([R, I], l));
  const [dW, refDW] = ["dW", "ref dW"].map((l) => empty([H, I], l));
  await runOnce(gpu!, "gated backward", async (p) => {
    await swigluDownBackward(p, dy, { act, gate, up }, w, { dAct, dGate, dUp, dWDown: dW });
    await linearBackward(p, dy, act, w, refDAct, refDW);
    await swigluBackward(p, refDAct, gate, up, refDGate, refDUp);
  });
  const what = `[${R}, ${H}, ${I}]`;
  sameBits(await read(dGate), await read(refDGate), `d gate ${what}`);
  sameBits(await read(dUp), await read(refDUp), `d up ${what}`);
  sameBits(await read(dW), await read(refDW), `dW ${what}`);
  const [dys, acts, ws] = [await read(dy), await read(act), await read(w)];
  const [dActCpu] = linearBackwardCpu(dys, acts, ws, R, I, H);
  const grads = swigluBackwardCpu(dActCpu, await read(gate), await read(up));
  assertClose(await read(dGate), grads.dgate, `d gate vs CPU ${what}`, { atol: 1e-4, rtol: 1e-4 });
  assertClose(await read(dUp), grads.dup, `d up vs CPU ${what}`, { atol: 1e-4, rtol: 1e-4 });
  for (const t of [dy, act, gate, up, w, dAct, dGate, dUp, refDAct, refDGate, refDUp, dW, refDW]) t.destroy();
}

Deno.test({ name: "gated MLP: the fused backward has the unfused ops' bits", ...needsGpu }, async () => {
  for (const [R, H, I] of SHAPES) await backwardCase(R, H, I);
});

Deno.test(
  { name: "gated MLP: one kernel on CPU adapters, the unfused ops elsewhere", ...needsGpu },
  async () => {
    const [R, H, I] = [40, 20, 60];
    const x = empty([R, H], "x"), dy = empty([R, H], "dy");
    const [wg, wu] = [empty([I, H], "w_gate"), empty([I, H], "w_up")];
    const wd = empty([H, I], "w_down"), dW = empty([H, I], "dW");
    const [act, gate, up, dAct, dGate, dUp] = ["act", "gate", "up", "d act", "d gate", "d up"].map((l) =>
      empty([R, I], l)
    );
    const labels = await dispatchLabels(async (p) => {
      await gatedLinear(p, x, wg, wu, { act, gate, up, keep: true }, "silu");
      await swigluDownBackward(p, dy, { act, gate, up }, wd, { dAct, dGate, dUp, dWDown: dW });
    });
    if (isCpuAdapter(gpu!)) {
      assert.equal(labels.filter((l) => l.includes("+silu forward")).length, 1, labels.join(", "));
      assert.equal(labels.filter((l) => l.includes("+swiglu backward")).length, 1, labels.join(", "));
    }
    for (const t of [x, dy, wg, wu, wd, dW, act, gate, up, dAct, dGate, dUp]) t.destroy();
  },
);

Deno.test({ name: "gated MLP: a mismatched up weight or output is an error", ...needsGpu }, async () => {
  const x = empty([4, 8], "x"), wg = empty([12, 8], "w_gate"), bad = empty([12, 4], "w_up (bad)");
  const act = empty([4, 12], "act"), badOut = empty([4, 5], "gate (bad)");
  await assert.rejects(
    () =>
      runOnce(
        gpu!,
        "bad",
        async (p) => {
          await gatedMatmul(p, x, wg, act, { kind: "forward", activation: "silu", u: bad }, { transB: true });
        },
      ),
    /w_up \(bad\) is f32 \[12, 4\], expected f32 \[12, 8\]/,
  );
  await assert.rejects(
    () =>
      runOnce(gpu!, "bad", async (p) => {
        const u = wg, gate = badOut, up = act;
        await gatedMatmul(p, x, wg, act, { kind: "forward", activation: "silu", u, gate, up }, {
          transB: true,
        });
      }),
    /gate \(bad\) is f32 \[4, 5\], expected f32 \[4, 12\]/,
  );
  for (const t of [x, wg, bad, act, badOut]) t.destroy();
});

Deno.test({
  name: "gated MLP: projection biases run the unfused ops, bias before the activation",
  ...needsGpu,
}, async () => {
  const [R, H, I] = [5, 12, 40];
  const x = upload(randomArray(R * H, 3, 2), [R, H], "x");
  const wg = upload(randomArray(I * H, 4, 0.5), [I, H], "w_gate"),
    wu = upload(randomArray(I * H, 5, 0.5), [I, H], "w_up");
  const bg = upload(randomArray(I, 6), [I], "b_gate"), bu = upload(randomArray(I, 7), [I], "b_up");
  const [act, gate, up] = ["act", "gate", "up"].map((l) => empty([R, I], l));
  await runOnce(gpu!, "biased", async (p) => {
    await gatedLinear(p, x, wg, wu, { act, gate, up, keep: false }, "silu", { gate: bg, up: bu });
  });
  const [xs, gs, us, bgs, bus] = [
    await read(x),
    await read(wg),
    await read(wu),
    await read(bg),
    await read(bu),
  ];
  const g = linearCpu(xs, gs, R, H, I).map((v, i) => v + bgs[i % I]);
  const u = linearCpu(xs, us, R, H, I).map((v, i) => v + bus[i % I]);
  assertClose(await read(act), swigluCpu(g, u), "act with biases vs CPU", { atol: 1e-4, rtol: 1e-4 });
  for (const t of [x, wg, wu, bg, bu, act, gate, up]) t.destroy();
});

/**
 * With f16 gate and up, the fused forward and backward (CPU adapters) against the unfused path the GPU kernel
 * families take (linear, convert, the f16 SwiGLU kernels), and both against the f32 ops on the f16 values.
 */
async function halfCase(dev: Gpu, R: number, H: number, I: number): Promise<Record<string, Float32Array>> {
  const up32 = (data: Float32Array<ArrayBuffer>, shape: number[], label: string) =>
    Tensor.fromArray(dev, data, shape, "f32", label);
  const x = up32(randomArray(R * H, R + H, 2), [R, H], "x");
  const wg = up32(randomArray(I * H, I + 1, 0.5), [I, H], "w_gate");
  const wu = up32(randomArray(I * H, I + 2, 0.5), [I, H], "w_up");
  const dy = up32(randomArray(R * H, R * H, 1), [R, H], "dy");
  const wd = up32(randomArray(H * I, H + I, 0.5), [H, I], "w_down");
  const [gate, up] = ["gate f16", "up f16"].map((l) => Tensor.empty(dev, [R, I], "f16", l));
  const [act, dAct, dGate, dUp] = ["act", "d act", "d gate", "d up"].map((l) =>
    Tensor.empty(dev, [R, I], "f32", l)
  );
  const dW = Tensor.empty(dev, [H, I], "f32", "dW");
  await runOnce(dev, "gated f16", async (p) => {
    await gatedLinear(p, x, wg, wu, { act, gate, up, keep: true }, "silu");
    await swigluDownBackward(p, dy, { act, gate, up }, wd, { dAct, dGate, dUp, dWDown: dW });
  });
  const out: Record<string, Float32Array> = {};
  for (const [name, t] of Object.entries({ act, gate, up, dGate, dUp, dW })) out[name] = await read(t);
  // The f32 ops on the rounded products: the same bits.
  const [xs, gs, us] = [await read(x), await read(wg), await read(wu)];
  const [g16, u16] = [
    up32(Float32Array.from(out.gate), [R, I], "gate (f32 of f16)"),
    up32(Float32Array.from(out.up), [R, I], "up (f32 of f16)"),
  ];
  const [refAct, refDAct, refDGate, refDUp] = ["ref act", "ref d act", "ref d gate", "ref d up"].map((l) =>
    Tensor.empty(dev, [R, I], "f32", l)
  );
  const refDW = Tensor.empty(dev, [H, I], "f32", "ref dW");
  await runOnce(dev, "gated f16 reference", async (p) => {
    await swigluForward(p, g16, u16, refAct);
    await linearBackward(p, dy, refAct, wd, refDAct, refDW);
    await swigluBackward(p, refDAct, g16, u16, refDGate, refDUp);
  });
  const what = `[${R}, ${H}, ${I}] f16${dev === gpu ? "" : ", GPU kernels"}`;
  sameBits(out.act, await read(refAct), `act ${what}`);
  sameBits(out.dGate, await read(refDGate), `d gate ${what}`);
  sameBits(out.dUp, await read(refDUp), `d up ${what}`);
  sameBits(out.dW, await read(refDW), `dW ${what}`);
  // f16 rounding of the products, within half an f16 ulp of the CPU's.
  assertClose(out.gate, linearCpu(xs, gs, R, H, I), `gate vs CPU ${what}`, { atol: 1e-4, rtol: 2 ** -11 });
  assertClose(out.up, linearCpu(xs, us, R, H, I), `up vs CPU ${what}`, { atol: 1e-4, rtol: 2 ** -11 });
  for (const t of [x, wg, wu, dy, wd, gate, up, act, dAct, dGate, dUp, dW, g16, u16]) t.destroy();
  for (const t of [refAct, refDAct, refDGate, refDUp, refDW]) t.destroy();
  return out;
}

Deno.test(
  { name: "gated MLP: f16 gate and up, fused and unfused, give the same bits", ...needsGpu },
  async () => {
    const gpuKernels = cpuKernels(gpu!) ? await Gpu.create({ kernels: "gpu" }) : null;
    try {
      for (const [R, H, I] of [[5, 12, 40], [7, 6, 10], [40, 20, 60]]) {
        const fused = await halfCase(gpu!, R, H, I);
        if (!gpuKernels) continue;
        const unfused = await halfCase(gpuKernels, R, H, I);
        for (const name of ["act", "gate", "up", "dGate", "dUp"]) {
          sameBits(fused[name], unfused[name], `${name} [${R}, ${H}, ${I}] fused vs unfused`);
        }
      }
    } finally {
      gpuKernels?.destroy();
    }
  },
);

Deno.test({
  name: "gated MLP: f16 gate and up label the fused kernels",
  ...needsGpu,
  ignore: !gpu || !isCpuAdapter(gpu),
}, async () => {
  const [R, H, I] = [40, 20, 60];
  const x = empty([R, H], "x"), dy = empty([R, H], "dy");
  const [wg, wu] = [empty([I, H], "w_gate"), empty([I, H], "w_up")];
  const wd = empty([H, I], "w_down"), dW = empty([H, I], "dW");
  const [gate, up] = ["gate", "up"].map((l) => Tensor.empty(gpu!, [R, I], "f16", l));
  const [act, dAct, dGate, dUp] = ["act", "d act", "d gate", "d up"].map((l) => empty([R, I], l));
  const labels = await dispatchLabels(async (p) => {
    await gatedLinear(p, x, wg, wu, { act, gate, up, keep: true }, "silu");
    await swigluDownBackward(p, dy, { act, gate, up }, wd, { dAct, dGate, dUp, dWDown: dW });
  });
  assert.equal(labels.filter((l) => l.endsWith("+silu forward f16")).length, 1, labels.join(", "));
  assert.equal(labels.filter((l) => l.endsWith("+swiglu backward f16")).length, 1, labels.join(", "));
  for (const t of [x, dy, wg, wu, wd, dW, act, gate, up, dAct, dGate, dUp]) t.destroy();
});

Deno.test(
  { name: "gated MLP: f16 gate and up need SwiGLU, both f16 and an even width", ...needsGpu },
  async () => {
    const x = empty([4, 8], "x"), w = empty([12, 8], "w"), w9 = empty([9, 8], "w9");
    const act = empty([4, 12], "act"), act9 = empty([4, 9], "act9"), f = empty([4, 12], "up f32");
    const [h, h9] = [Tensor.empty(gpu!, [4, 12], "f16", "gate f16"), Tensor.empty(gpu!, [4, 9], "f16", "g9")];
    const p = new Program(gpu!, "bad f16 gated");
    await assert.rejects(
      () => gatedLinear(p, x, w, w, { act, gate: h, up: h, keep: true }, "gelu_tanh"),
      /gatedLinear: f16 gate and up \(gate f16\) are for SwiGLU, not gelu_tanh/,
    );
    await assert.rejects(
      () => gatedLinear(p, x, w, w, { act, gate: h, up: f, keep: true }, "silu"),
      /gatedLinear: saved gate and up \(gate f16 f16, up f32 f32\) must be both f32, or both f16 with an even/,
    );
    await assert.rejects(
      () => gatedLinear(p, x, w9, w9, { act: act9, gate: h9, up: h9, keep: true }, "silu"),
      /even column count \(9\)/,
    );
    assert.equal(p.dispatches.length, 0);
    for (const t of [x, w, w9, act, act9, f, h, h9]) t.destroy();
  },
);
