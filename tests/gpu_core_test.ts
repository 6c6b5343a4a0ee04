import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "./gpu.ts";
import { Tensor } from "../lib/tensor.ts";
import { foldGrid, Program, runOnce } from "../lib/gpu/program.ts";
import { GpuValidationError, LimitError, ShapeError } from "../lib/gpu/errors.ts";
import * as ew from "../lib/ops/elementwise.ts";
import { matmul } from "../lib/ops/matmul.ts";
import { formatProfile, profileProgram } from "../lib/gpu/profile.ts";

Deno.test({ name: "device: limits and features come from the adapter", ...needsGpu }, () => {
  const g = gpu!;
  assert.ok(g.limits.maxStorageBufferBindingSize >= 128 * 1024 * 1024);
  assert.ok(g.limits.maxComputeInvocationsPerWorkgroup >= 256);
  assert.equal(g.limits.maxComputeWorkgroupStorageSize, g.adapter.limits.maxComputeWorkgroupStorageSize);
  assert.match(g.describe(), /\S/);
});

Deno.test({ name: "tensor: upload and download of every dtype", ...needsGpu }, async () => {
  const g = gpu!;
  const x = [1.5, -2, 1, 3.140625, 0.1];
  assert.deepEqual([...await Tensor.fromArray(g, x, [5], "f32", "f32").read()].map((v) => +v.toFixed(6)), [
    1.5,
    -2,
    1,
    3.140625,
    0.1,
  ]);
  assert.deepEqual([...await Tensor.fromArray(g, x, [5], "bf16", "bf16").read()], [
    1.5,
    -2,
    1,
    3.140625,
    0.10009765625,
  ]);
  assert.deepEqual([...await Tensor.fromArray(g, x, [5], "f16", "f16").read()], [
    1.5,
    -2,
    1,
    3.140625,
    0.0999755859375,
  ]);
  assert.deepEqual([...await Tensor.fromArray(g, [1, -7, 2 ** 30], [3], "i32", "i32").read()], [
    1,
    -7,
    2 ** 30,
  ]);
  assert.deepEqual([...await Tensor.fromArray(g, [1, 7, 2 ** 31], [3], "u32", "u32").read()], [
    1,
    7,
    2 ** 31,
  ]);
});

Deno.test({ name: "tensor: views, reshape and their checks", ...needsGpu }, async () => {
  const g = gpu!;
  const t = Tensor.fromArray(g, Float32Array.from({ length: 256 }, (_, i) => i), [4, 64], "f32", "t");
  const row2 = t.view(128, [64], "row2");
  assert.equal((await row2.read())[0], 128);
  assert.throws(() => t.view(1, [4]), LimitError);
  assert.throws(() => t.view(250, [64]), ShapeError);
  assert.throws(() => t.reshape([3, 64]), ShapeError);
  assert.deepEqual(t.reshape([256]).shape, [256]);
  assert.throws(() => Tensor.fromArray(g, [1, 2, 3], [2], "f32", "short"), /3 values given for shape \[2\]/);
  t.destroy();
});

Deno.test(
  { name: "elementwise: add, mul (and backward), axpby, scale, fill vs CPU", ...needsGpu },
  async () => {
    const g = gpu!;
    for (const n of [1, 255, 256, 1000, 70_001]) {
      const a = randomArray(n, 1), b = randomArray(n, 2), d = randomArray(n, 3);
      const ta = Tensor.fromArray(g, a, [n], "f32", "a");
      const tb = Tensor.fromArray(g, b, [n], "f32", "b");
      const td = Tensor.fromArray(g, d, [n], "f32", "dout");
      const outs = Array.from({ length: 6 }, (_, i) => Tensor.empty(g, [n], "f32", `out${i}`));
      await runOnce(g, "elementwise", async (p) => {
        await ew.add(p, ta, tb, outs[0]);
        await ew.mul(p, ta, tb, outs[1]);
        await ew.axpby(p, 0.5, ta, -2, tb, outs[2]);
        await ew.scale(p, ta, 3, outs[3]);
        await ew.mulBackward(p, td, ta, tb, outs[4], outs[5]);
      });
      assertClose(await outs[0].read(), ew.axpbyCpu(1, a, 1, b), `add n=${n}`);
      assertClose(await outs[1].read(), ew.mulCpu(a, b), `mul n=${n}`);
      assertClose(await outs[2].read(), ew.axpbyCpu(0.5, a, -2, b), `axpby n=${n}`);
      assertClose(await outs[3].read(), ew.axpbyCpu(3, a, 0, b), `scale n=${n}`);
      const [da, db] = ew.mulBackwardCpu(d, a, b);
      assertClose(await outs[4].read(), da, `mul backward da n=${n}`);
      assertClose(await outs[5].read(), db, `mul backward db n=${n}`);
      const f = Tensor.empty(g, [n], "f32", "fill");
      await runOnce(g, "fill", (p) => ew.fill(p, f, 2.5));
      assert.ok((await f.read()).every((v) => v === 2.5));
      for (const t of [ta, tb, td, f, ...outs]) t.destroy();
    }
  },
);

Deno.test({ name: "program: replays the same dispatches and folds large grids", ...needsGpu }, async () => {
  const g = gpu!;
  assert.deepEqual(foldGrid(g, 10), [10, 1, 1]);
  const [x, y] = foldGrid(g, 200_000);
  assert.ok(x * y >= 200_000 && x <= 65535);
  const acc = Tensor.fromArray(g, new Float32Array(8), [8], "f32", "acc");
  const one = Tensor.fromArray(g, new Float32Array(8).fill(1), [8], "f32", "one");
  const tmp = Tensor.empty(g, [8], "f32", "tmp");
  const p = new Program(g, "increment");
  await ew.add(p, acc, one, tmp);
  await ew.scale(p, tmp, 1, acc);
  for (let i = 0; i < 5; i++) p.run();
  assert.deepEqual([...await acc.read()], new Array(8).fill(5));
  p.destroy();
});

Deno.test({
  name: "errors: shape mismatches are raised before dispatch, WGSL errors name the kernel",
  ...needsGpu,
}, async () => {
  const g = gpu!;
  const a = Tensor.empty(g, [4, 3], "f32", "a");
  const b = Tensor.empty(g, [3, 4], "f32", "b");
  const p = new Program(g, "bad");
  await assert.rejects(() => ew.add(p, a, b, a), /add: a \[4, 3\] and b \[3, 4\] must have the same shape/);
  const i = Tensor.empty(g, [4, 3], "i32", "ids");
  await assert.rejects(() => ew.add(p, a, i, a), /add: b \(ids\) is i32, expected f32/);
  assert.equal(p.dispatches.length, 0);
  await assert.rejects(
    () =>
      p.add(
        {
          name: "broken.kernel",
          code: "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }",
          entryPoint: "main",
        },
        [],
        1,
      ),
    (e: Error) => e instanceof GpuValidationError && /kernel broken\.kernel/.test(e.message),
  );
});

Deno.test({ name: "elementwise: addBias, copyStrided and copyColumns vs CPU", ...needsGpu }, async () => {
  const g = gpu!;
  const rows = 37, w = 13, W = 3 * w + 2;
  const a = randomArray(rows * w, 4), bias = randomArray(w, 5), base = randomArray(rows * W, 6);
  const ta = Tensor.fromArray(g, a, [rows, w], "f32", "a");
  const tb = Tensor.fromArray(g, bias, [w], "f32", "bias");
  const out = Tensor.fromArray(g, a, [rows, w], "f32", "out");
  const dst = Tensor.fromArray(g, base, [rows, W], "f32", "dst");
  // KV-cache style write: src [B=2, Tn=3, 5] into dst [2, Tmax=7, 5] at time offset 4.
  const kv = randomArray(2 * 3 * 5, 7), cache = randomArray(2 * 7 * 5, 8);
  const tkv = Tensor.fromArray(g, kv, [2, 3, 5], "f32", "kv");
  const tcache = Tensor.fromArray(g, cache, [2, 7, 5], "f32", "cache");
  const cacheCopy = {
    count: [2, 3, 5] as [number, number, number],
    srcStrides: [15, 5, 1] as [number, number, number],
    dstStrides: [35, 5, 1] as [number, number, number],
    dstOffset: 20,
  };
  await runOnce(g, "copies", async (p) => {
    await ew.addBias(p, out, tb);
    await ew.copyColumns(p, ta, dst, 2 * w + 1);
    await ew.copyStrided(p, tkv, tcache, cacheCopy);
  });
  assertClose(await out.read(), ew.addBiasCpu(a, bias), "addBias");
  const wantDst = ew.copyStridedCpu(a, base, {
    count: [1, rows, w],
    srcStrides: [0, w, 1],
    dstStrides: [0, W, 1],
    dstOffset: 2 * w + 1,
  });
  assertClose(await dst.read(), wantDst, "copyColumns", { atol: 0, rtol: 0 });
  assertClose(await tcache.read(), ew.copyStridedCpu(kv, cache, cacheCopy), "copyStrided (KV cache)", {
    atol: 0,
    rtol: 0,
  });
  const p = new Program(g, "bad copy");
  await assert.rejects(() => ew.copyColumns(p, ta, dst, 2 * w + 3), /does not fit dst/);
  await assert.rejects(
    () => ew.copyStrided(p, tkv, tcache, { ...cacheCopy, dstOffset: 21 }),
    /copyStrided: block/,
  );
  for (const t of [ta, tb, out, dst, tkv, tcache]) t.destroy();
});

Deno.test(
  { name: "elementwise: copyStrided in vec4 units copies what the scalar kernel does", ...needsGpu },
  async () => {
    const g = gpu!;
    // src [2, 3, 8] into dst [2, 7, 8] from time 4 (every count, stride and offset a multiple of 4: vec4 units),
    // and the same block with an offset of 2 (scalar): each lands where a CPU copy puts it.
    const src = randomArray(2 * 3 * 8, 11), base = randomArray(2 * 7 * 8 + 2, 12);
    const copy: ew.StridedCopy = { count: [2, 3, 8], srcStrides: [24, 8, 1], dstStrides: [56, 8, 1] };
    for (
      const [dstOffset, kernel] of [[32, "elementwise.copyStrided.vec4"], [
        34,
        "elementwise.copyStrided",
      ]] as const
    ) {
      const tsrc = Tensor.fromArray(g, src, [2, 3, 8], "f32", "src");
      const tdst = Tensor.fromArray(g, base, [base.length], "f32", "dst");
      await runOnce(g, "copy", async (p) => {
        await ew.copyStrided(p, tsrc, tdst, { ...copy, dstOffset });
        assert.equal(p.dispatches[0].label, kernel);
      });
      const want = Float32Array.from(base);
      for (let b = 0; b < 2; b++) {
        for (let t = 0; t < 3; t++) {
          for (let c = 0; c < 8; c++) want[dstOffset + b * 56 + t * 8 + c] = src[b * 24 + t * 8 + c];
        }
      }
      assert.deepEqual(await tdst.readFloat(), want, `copy at ${dstOffset}`);
      for (const t of [tsrc, tdst]) t.destroy();
    }
  },
);

Deno.test({ name: "elementwise: accumulate and shiftIds", ...needsGpu }, async () => {
  const g = gpu!;
  // 300 elements run the vec4 kernel, 301 the scalar one: both give each f32 sum exactly.
  for (
    const [n, kernel] of [[300, "elementwise.accumulate.vec4"], [301, "elementwise.accumulate"]] as const
  ) {
    const x = randomArray(n, 9), y = randomArray(n, 10);
    const tx = Tensor.fromArray(g, x, [n], "f32", "x");
    const ty = Tensor.fromArray(g, y, [n], "f32", "y");
    await runOnce(g, "accumulate", async (p) => {
      await ew.accumulate(p, tx, ty);
      assert.equal(p.dispatches[0].label, kernel);
    });
    assert.deepEqual(await tx.read(), x.map((v, i) => Math.fround(v + y[i])), `accumulate of ${n}`);
    for (const t of [tx, ty]) t.destroy();
  }
  const ids = Tensor.fromArray(g, [0, 5, 1000, 7], [4], "i32", "ids");
  const shifted = Tensor.empty(g, [4], "i32", "shifted");
  await runOnce(g, "shiftIds", (p) => ew.shiftIds(p, ids, shifted, -5));
  assert.deepEqual([...await shifted.read()], [-5, 0, 995, 2]);
  for (const t of [ids, shifted]) t.destroy();
});

Deno.test({ name: "profile: per-kernel time, FLOPs, bytes and the whole run", ...needsGpu }, async () => {
  const g = gpu!;
  const [M, N, K] = [32, 64, 48];
  const a = Tensor.fromArray(g, randomArray(M * K, 1), [M, K], "f32", "profile a");
  const b = Tensor.fromArray(g, randomArray(K * N, 2), [K, N], "f32", "profile b");
  const c = Tensor.zeros(g, [M, N], "f32", "profile c");
  const p = new Program(g, "profile test");
  try {
    await matmul(p, a, b, c, { splitK: 1 });
    await ew.fill(p, c, 0);
    const profile = await profileProgram(g, p, 2);
    assert.equal(profile.dispatches.length, p.dispatches.length);
    // A time, not asserted beyond its kind: a run this small can take no longer than an empty submit.
    assert.ok(Number.isFinite(profile.wallMs) && profile.wallMs >= 0, `whole run ${profile.wallMs} ms`);
    const product = profile.rows.find((r) => r.label.startsWith("matmul.NN"));
    assert.ok(product, `no matmul row in ${profile.rows.map((r) => r.label)}`);
    assert.equal(product.flops, 2 * M * N * K);
    // The kernel binds A, B and C (a CPU adapter's packing dispatches bind A or B alone).
    assert.equal(product.bytes, 4 * (M * K + K * N + M * N));
    const fillRow = profile.rows.find((r) => r.label === "elementwise.fill")!;
    assert.equal(fillRow.flops, 0);
    assert.equal(fillRow.bytes, 4 * M * N);
    assert.ok(Math.abs(profile.rows.reduce((s, r) => s + r.share, 0) - 1) < 1e-9);
    assert.match(formatProfile(profile), /GFLOP\/s/);
  } finally {
    p.destroy();
    for (const t of [a, b, c]) t.destroy();
  }
});
