import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray } from "../gpu.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { encodeHost, Tensor } from "../../lib/tensor.ts";
import { convert, convertCpu, type FloatDType } from "../../lib/ops/convert.ts";

/** Edge cases: signed zeros, infinities, NaN, f16's limits and subnormals, rounding ties, f32 subnormals. */
const SPECIAL = [
  0,
  -0,
  Infinity,
  -Infinity,
  NaN,
  65504,
  65519.99,
  65520,
  -1e6,
  2 ** -24,
  2 ** -25,
  2 ** -25 * 1.0001,
  3 * 2 ** -26,
  2 ** -14 * 0.99,
  6e-5,
  1 + 2 ** -8,
  1 + 3 * 2 ** -8,
  1 + 2 ** -11,
  1 + 3 * 2 ** -11,
  1e-40,
  -3.4e38,
  1.5,
  -2,
  Math.PI,
];

function testValues(n: number, seed: number): Float32Array<ArrayBuffer> {
  const v = randomArray(n, seed, 100);
  for (let i = 0; i < n; i++) if (i % 5 === 1) v[i] *= 1e-6; // small magnitudes too
  v.set(SPECIAL.slice(0, n));
  return v;
}

/** The tensor's stored elements: f32 bits, or 16-bit patterns. */
async function rawBits(t: Tensor): Promise<Uint32Array | Uint16Array> {
  const bytes = await t.gpu.read(t.buffer, t.byteOffset, t.byteLength);
  return t.dtype === "f32" ? new Uint32Array(bytes, 0, t.size) : new Uint16Array(bytes, 0, t.size);
}

function isNaNBits(bits: number, dtype: FloatDType): boolean {
  if (dtype === "f32") return (bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0;
  if (dtype === "f16") return (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
  return (bits & 0x7f80) === 0x7f80 && (bits & 0x7f) !== 0;
}

function assertSameBits(
  got: Uint32Array | Uint16Array,
  want: Uint32Array | Uint16Array,
  dtype: FloatDType,
  tag: string,
) {
  assert.equal(got.length, want.length, tag);
  for (let i = 0; i < got.length; i++) {
    if (isNaNBits(want[i], dtype)) {
      assert.ok(
        isNaNBits(got[i], dtype),
        `${tag}: element ${i} should be NaN, got bits ${got[i].toString(16)}`,
      );
    } else if (got[i] !== want[i]) {
      assert.fail(`${tag}: element ${i}: bits ${got[i].toString(16)}, expected ${want[i].toString(16)}`);
    }
  }
}

const PAIRS: Array<[FloatDType, FloatDType]> = [
  ["bf16", "f32"],
  ["f16", "f32"],
  ["f32", "f16"],
  ["f32", "bf16"],
  ["f16", "bf16"],
  ["bf16", "f16"],
  ["f32", "f32"],
];

Deno.test(
  { name: "convert: every dtype pair bit-exact vs the host conversions, odd sizes", ...needsGpu },
  async () => {
    const g = gpu!;
    for (const n of [1, 7, 24, 1001, 70_001]) {
      const values = testValues(n, n);
      for (const [from, to] of PAIRS) {
        const srcStored = from === "f32" ? values : encodeHost(values, from) as Uint16Array<ArrayBuffer>;
        const src = Tensor.fromArray(g, srcStored, [n], from, "src");
        const dst = Tensor.empty(g, [n], to, "dst");
        // the spare high half of an odd-sized 16-bit tensor must survive
        const fill = new Uint16Array(2 * Math.ceil(n / 2)).fill(0xbeef);
        g.write(dst.buffer, dst.byteOffset, fill);
        await runOnce(g, "convert", (p) => convert(p, src, dst));
        const want = convertCpu(srcStored, from, to);
        const wantBits = want instanceof Float32Array
          ? new Uint32Array(want.buffer, want.byteOffset, n)
          : want;
        const tag = `${from} -> ${to} n=${n}`;
        assertSameBits(await rawBits(dst), wantBits, to, tag);
        if (to !== "f32" && n % 2 === 1) {
          const words = new Uint16Array(await g.read(dst.buffer, dst.byteOffset, dst.byteLength));
          assert.equal(words[n], 0xbeef, `${tag}: padding half overwritten`);
        }
        src.destroy();
        dst.destroy();
      }
    }
  },
);

Deno.test(
  { name: "convert: rounding to nearest even, overflow, subnormals and NaN", ...needsGpu },
  async () => {
    const g = gpu!;
    const run = async (values: number[], to: FloatDType) => {
      const src = Tensor.fromArray(g, Float32Array.from(values), [values.length], "f32", "src");
      const dst = Tensor.empty(g, [values.length], to, "dst");
      await runOnce(g, "convert cases", (p) => convert(p, src, dst));
      const bits = [...await rawBits(dst)];
      src.destroy();
      dst.destroy();
      return bits;
    };
    // bf16: ties go to the even mantissa; NaN stays a quiet NaN with its sign
    assert.deepEqual(await run([1 + 2 ** -8, 1 + 3 * 2 ** -8, -1 - 2 ** -7, 3e38 * 10], "bf16"), [
      0x3f80,
      0x3f82,
      0xbf81,
      0x7f80,
    ]);
    const [nan, negNaN] = await run([NaN, -NaN], "bf16");
    assert.ok(isNaNBits(nan, "bf16") && isNaNBits(negNaN, "bf16"));
    // f16: largest finite, first value rounding to inf, min subnormal, the tie at half of it, f32 subnormal
    assert.deepEqual(
      await run([65519.99, 65520, 2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -25, 1e-40, -0], "f16"),
      [
        0x7bff,
        0x7c00,
        0x0001,
        0x0000,
        0x0001,
        0x0002,
        0x0000,
        0x8000,
      ],
    );
    assert.ok(isNaNBits((await run([NaN], "f16"))[0], "f16"));
  },
);

Deno.test({ name: "convert: shape and dtype errors come before any dispatch", ...needsGpu }, async () => {
  const g = gpu!;
  const a = Tensor.empty(g, [4, 2], "f32", "a"), b = Tensor.empty(g, [8], "bf16", "b");
  const i = Tensor.empty(g, [4, 2], "i32", "i");
  const p = new Program(g, "bad convert");
  await assert.rejects(
    () => convert(p, a, b),
    /convert: src \[4, 2\] and dst \[8\] must have the same shape/,
  );
  await assert.rejects(() => convert(p, i, a), /src \(i\) is i32, expected f32 or f16 or bf16/);
  await assert.rejects(() => convert(p, a, a), /share a buffer/);
  assert.equal(p.dispatches.length, 0);
  for (const t of [a, b, i]) t.destroy();
});
