import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { decodeHost, encodeHost, Tensor } from "../../lib/tensor.ts";
import {
  gegluTanhCpu,
  gegluTanhForward,
  swigluBackward,
  swigluBackwardCpu,
  swigluCpu,
  swigluForward,
} from "../../lib/ops/swiglu.ts";

function upload(data: ArrayLike<number>, shape: number[], label: string): Tensor {
  return Tensor.fromArray(gpu!, Float32Array.from(data), shape, "f32", label);
}

async function runGpu(gate: Float32Array, up: Float32Array, dout: Float32Array, shape: number[]) {
  const g = gpu!;
  const tg = upload(gate, shape, "gate"), tu = upload(up, shape, "up"), td = upload(dout, shape, "dout");
  const [out, dgate, dup] = ["out", "dgate", "dup"].map((l) => Tensor.empty(g, shape, "f32", l));
  await runOnce(g, "swiglu", async (p) => {
    await swigluForward(p, tg, tu, out);
    await swigluBackward(p, td, tg, tu, dgate, dup);
  });
  const result = { out: await out.read(), dgate: await dgate.read(), dup: await dup.read() };
  for (const t of [tg, tu, td, out, dgate, dup]) t.destroy();
  return result;
}

Deno.test({ name: "swiglu: forward and backward vs CPU on several shapes", ...needsGpu }, async () => {
  for (const shape of [[1, 1], [3, 7], [4, 344], [2, 5, 77], [97, 700]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const gate = randomArray(n, n, 8), up = randomArray(n, n + 1, 2), dout = randomArray(n, n + 2);
    // the saturated ends of the sigmoid, where a naive exp(-g) overflows
    gate[0] = -100;
    if (n > 1) gate[1] = 100;
    const got = await runGpu(gate, up, dout, shape);
    const want = swigluBackwardCpu(dout, gate, up);
    const tol = { atol: 1e-5, rtol: 1e-4 };
    assertClose(got.out, swigluCpu(gate, up), `out [${shape}]`, tol);
    assertClose(got.dgate, want.dgate, `dgate [${shape}]`, tol);
    assertClose(got.dup, want.dup, `dup [${shape}]`, tol);
  }
});

Deno.test({ name: "swiglu: matches PyTorch autograd (golden)", ...needsGpu }, async () => {
  const gold = Golden.load("layers");
  const shape = gold.shape("swiglu.gate");
  const got = await runGpu(gold.f32("swiglu.gate"), gold.f32("swiglu.up"), gold.f32("swiglu.dout"), shape);
  assertClose(got.out, gold.f32("swiglu.out"), "golden out", { atol: 1e-5, rtol: 1e-5 });
  assertClose(got.dgate, gold.f32("swiglu.dgate"), "golden dgate", { atol: 1e-5, rtol: 1e-5 });
  assertClose(got.dup, gold.f32("swiglu.dup"), "golden dup", { atol: 1e-5, rtol: 1e-5 });
});

Deno.test("swiglu: CPU backward matches central differences of the CPU forward", () => {
  const n = 12;
  const gate = Float64Array.from(randomArray(n, 31, 5)), up = Float64Array.from(randomArray(n, 32, 2));
  const dout = Float64Array.from(randomArray(n, 33));
  const loss = () => swigluCpu(gate, up).reduce((s, v, i) => s + v * dout[i], 0);
  const h = 1e-6;
  const numeric = (arr: Float64Array) =>
    Array.from(arr, (_, i) => {
      const keep = arr[i];
      arr[i] = keep + h;
      const a = loss();
      arr[i] = keep - h;
      const b = loss();
      arr[i] = keep;
      return (a - b) / (2 * h);
    });
  const { dgate, dup } = swigluBackwardCpu(dout, gate, up);
  assertClose(dgate, numeric(gate), "dgate vs finite differences", { atol: 1e-8, rtol: 1e-6 });
  assertClose(dup, numeric(up), "dup vs finite differences", { atol: 1e-8, rtol: 1e-6 });
});

Deno.test(
  { name: "swiglu: mismatched shapes and dtypes are errors before dispatch", ...needsGpu },
  async () => {
    const g = gpu!;
    const a = Tensor.empty(g, [4, 6], "f32", "a"), b = Tensor.empty(g, [6, 4], "f32", "b");
    const h = Tensor.empty(g, [4, 6], "f16", "h");
    const p = new Program(g, "bad swiglu");
    await assert.rejects(
      () => swigluForward(p, a, b, a),
      /swigluForward: gate \[4, 6\] and up \[6, 4\] must have the same shape/,
    );
    await assert.rejects(() => swigluBackward(p, a, a, a, h, a), /dgate \(h\) is f16, expected f32/);
    assert.equal(p.dispatches.length, 0);
    for (const t of [a, b, h]) t.destroy();
  },
);

Deno.test(
  { name: "geglu (GELU-tanh gate): forward vs CPU, saturated ends included", ...needsGpu },
  async () => {
    for (const shape of [[1, 1], [3, 7], [97, 700]]) {
      const n = shape.reduce((a, b) => a * b, 1);
      const gate = randomArray(n, n + 3, 6), up = randomArray(n, n + 4, 2);
      gate[0] = -100; // tanh's saturated ends: 0 and g
      if (n > 1) gate[1] = 100;
      const tg = upload(gate, shape, "gate"), tu = upload(up, shape, "up");
      const out = Tensor.empty(gpu!, shape, "f32", "out");
      await runOnce(gpu!, "geglu", (p) => gegluTanhForward(p, tg, tu, out));
      assertClose(await out.read(), gegluTanhCpu(gate, up), `out [${shape}]`, { atol: 1e-5, rtol: 1e-4 });
      for (const t of [tg, tu, out]) t.destroy();
    }
  },
);

Deno.test({ name: "swiglu: the vec4 forward gives the scalar forward's bits", ...needsGpu }, async () => {
  // 4k + 1 elements run the scalar kernel; the first 4k, viewed alone, the vec4 one.
  const n = 4 * 1000 + 1;
  const gate = randomArray(n, 21, 8), up = randomArray(n, 22, 2);
  gate[0] = -100;
  gate[1] = 100;
  const tg = upload(gate, [n], "gate"), tu = upload(up, [n], "up");
  const scalar = Tensor.empty(gpu!, [n], "f32", "out (scalar)"),
    vec4 = Tensor.empty(gpu!, [n - 1], "f32", "out");
  await runOnce(gpu!, "swiglu vec4", async (p) => {
    await swigluForward(p, tg, tu, scalar);
    await swigluForward(p, tg.view(0, [n - 1]), tu.view(0, [n - 1]), vec4);
    assert.deepEqual(p.dispatches.map((d) => d.label), ["swiglu.forward", "swiglu.forward.vec4"]);
  });
  assert.deepEqual(await vec4.readFloat(), (await scalar.readFloat()).subarray(0, n - 1));
  for (const t of [tg, tu, scalar, vec4]) t.destroy();
});

/** `values` rounded to f16 (nearest even): the 16-bit patterns and their exact f32 values. */
function toHalf(
  values: Float32Array<ArrayBuffer>,
): { bits: Uint16Array<ArrayBuffer>; wide: Float32Array<ArrayBuffer> } {
  const bits = encodeHost(values, "f16") as Uint16Array<ArrayBuffer>;
  return { bits, wide: decodeHost(bits.buffer, "f16", values.length) as Float32Array<ArrayBuffer> };
}

Deno.test(
  { name: "swiglu: f16 gate and up give the f32 kernels' bits on their values", ...needsGpu },
  async () => {
    for (const shape of [[1, 2], [3, 8], [2, 5, 78], [97, 700]]) {
      const n = shape.reduce((a, b) => a * b, 1);
      const gateF = randomArray(n, n + 5, 8), upF = randomArray(n, n + 6, 2), dout = randomArray(n, n + 7);
      gateF[0] = -100;
      gateF[1] = 100;
      const gate = toHalf(gateF), up = toHalf(upF);
      const tg = Tensor.fromArray(gpu!, gate.bits, shape, "f16", "gate f16");
      const tu = Tensor.fromArray(gpu!, up.bits, shape, "f16", "up f16");
      const td = upload(dout, shape, "dout");
      const [out, dgate, dup] = ["out", "dgate", "dup"].map((l) => Tensor.empty(gpu!, shape, "f32", l));
      const labels: string[] = [];
      await runOnce(gpu!, "swiglu f16", async (p) => {
        await swigluForward(p, tg, tu, out);
        await swigluBackward(p, td, tg, tu, dgate, dup);
        labels.push(...p.dispatches.map((d) => d.label));
      });
      assert.deepEqual(labels, ["swiglu.forward.f16", "swiglu.backward.f16"]);
      const want = await runGpu(gate.wide, up.wide, dout, shape);
      const bits = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);
      for (const [name, got] of [["out", out], ["dgate", dgate], ["dup", dup]] as const) {
        assert.deepEqual(bits(await got.readFloat()), bits(want[name] as Float32Array), `${name} [${shape}]`);
      }
      assertClose(want.out, swigluCpu(gate.wide, up.wide), `out vs CPU [${shape}]`, {
        atol: 1e-5,
        rtol: 1e-4,
      });
      for (const t of [tg, tu, td, out, dgate, dup]) t.destroy();
    }
  },
);

Deno.test(
  { name: "swiglu: f16 gate and up of mixed dtypes or an odd count are errors", ...needsGpu },
  async () => {
    const g = gpu!;
    const h = Tensor.empty(g, [3, 4], "f16", "h"), f = Tensor.empty(g, [3, 4], "f32", "f");
    const odd = Tensor.empty(g, [3, 3], "f16", "odd"), oddOut = Tensor.empty(g, [3, 3], "f32", "odd out");
    const p = new Program(g, "bad f16 swiglu");
    await assert.rejects(() => swigluForward(p, h, f, f), /swigluForward: up \(f\) is f32, expected f16/);
    await assert.rejects(() => swigluForward(p, h, h, h), /swigluForward: out \(h\) is f16, expected f32/);
    await assert.rejects(
      () => swigluBackward(p, oddOut, odd, odd, oddOut, oddOut),
      /swigluBackward: f16 gate \(odd\) needs an even element count, got 9/,
    );
    assert.equal(p.dispatches.length, 0);
    for (const t of [h, f, odd, oddOut]) t.destroy();
  },
);
