import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { isCpuAdapter } from "../../lib/gpu/device.ts";
import { type Program, runOnce } from "../../lib/gpu/program.ts";
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
