import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { Tensor } from "../../lib/tensor.ts";
import type { Gpu } from "../../lib/gpu/device.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import type { KernelSpec } from "../../lib/gpu/kernel.ts";
import { type Binding, Program, runOnce } from "../../lib/gpu/program.ts";
import {
  dequantizeGroups,
  dequantizeGroupsCpu,
  type QuantGroups,
  scatterTopkTeacher,
  scatterTopkTeacherCpu,
  TOPK_EMPTY_VALUE,
  topkCpu,
  topkMerge,
} from "../../lib/ops/features.ts";

/**
 * A program that folds every plain workgroup count into a 2-D grid at most 7 wide, so that small tensors run
 * the kernels' `linear_workgroup` indexing and out-of-range returns the way grids over 65535 workgroups do.
 */
class NarrowGridProgram extends Program {
  override add(
    kernel: KernelSpec,
    bindings: Array<Binding | null>,
    workgroups: number | [number, number, number],
    label?: string,
  ): Promise<void> {
    if (typeof workgroups === "number") {
      const x = Math.min(workgroups, 7);
      workgroups = [x, Math.ceil(workgroups / x), 1];
    }
    return super.add(kernel, bindings, workgroups, label);
  }
}

/** Runs `build` once, in a program whose grids are folded 7 wide when `narrow`. */
async function run(g: Gpu, narrow: boolean, build: (p: Program) => Promise<void>): Promise<void> {
  if (!narrow) return runOnce(g, "features test", build);
  const p = new NarrowGridProgram(g, "features test (narrow grid)");
  try {
    await build(p);
    await p.runChecked();
  } finally {
    p.destroy();
  }
}

function randomWords(n: number, seed: number): Uint32Array<ArrayBuffer> {
  const r = rng(seed);
  return Uint32Array.from({ length: n }, () => Math.floor(r() * 2 ** 32) >>> 0);
}

async function dequantizeOnGpu(
  g: Gpu,
  codes: Uint32Array<ArrayBuffer>,
  scales: Float32Array<ArrayBuffer>,
  rows: number,
  cols: number,
  o: QuantGroups,
  narrow = false,
): Promise<Float32Array> {
  const c = Tensor.fromArray(g, codes, [codes.length], "u32", "codes");
  const s = Tensor.fromArray(g, scales, [rows, cols / o.groupSize], "f32", "scales");
  const out = Tensor.empty(g, [rows, cols], "f32", "out");
  try {
    await run(g, narrow, (p) => dequantizeGroups(p, c, s, out, o));
    return await out.readFloat();
  } finally {
    for (const t of [c, s, out]) t.destroy();
  }
}

Deno.test({ name: "dequantizeGroups: extreme codes decode to known values", ...needsGpu }, async () => {
  const g = gpu!;
  // Bytes from low to high: 0x80 = -128, 0xff = -1, 0x00 = 0, 0x7f = 127; second word 0x01 0x7e 0x81 0xfe.
  const int8 = await dequantizeOnGpu(
    g,
    new Uint32Array([0x7f00ff80, 0xfe817e01]),
    new Float32Array([0.5, -2]),
    1,
    8,
    {
      bits: 8,
      groupSize: 4,
    },
  );
  assert.deepEqual([...int8], [-64, -0.5, 0, 63.5, -2, -252, 254, 4]);
  // Nibbles from low to high: 5 6 7 8 1 a 0 f, minus 8.
  const int4 = await dequantizeOnGpu(g, new Uint32Array([0xf0a18765]), new Float32Array([0.25]), 1, 8, {
    bits: 4,
    groupSize: 8,
  });
  assert.deepEqual([...int4], [-0.75, -0.5, -0.25, 0, -1.75, 0.5, -2, 1.75]);
  for (const bits of [8, 4] as const) {
    const cpu = dequantizeGroupsCpu(new Uint32Array([0x7f00ff80]), new Float32Array([1]), 1, 32 / bits, {
      bits,
      groupSize: 32 / bits,
    });
    assert.deepEqual([...cpu], bits === 8 ? [-128, -1, 0, 127] : [-8, 0, 7, 7, -8, -8, 7, -1]);
  }
});

Deno.test({ name: "dequantizeGroups: int8 and int4 equal the CPU reference", ...needsGpu }, async () => {
  const g = gpu!;
  const cases: Array<[number, number, QuantGroups, boolean?]> = [
    [1, 8, { bits: 8, groupSize: 4 }],
    [3, 24, { bits: 8, groupSize: 8 }],
    [7, 96, { bits: 8, groupSize: 96 }],
    [5, 64, { bits: 4, groupSize: 16 }],
    [9, 40, { bits: 4, groupSize: 8 }],
    [13, 128, { bits: 4, groupSize: 32 }, true],
    [11, 36, { bits: 8, groupSize: 12 }, true],
    // 70000 words each: 274 workgroups.
    [1750, 160, { bits: 8, groupSize: 32 }],
    [875, 640, { bits: 4, groupSize: 64 }, true],
  ];
  for (const [i, [rows, cols, o, narrow]] of cases.entries()) {
    const codes = randomWords(rows * cols * o.bits / 32, 100 + i);
    const scales = randomArray(rows * cols / o.groupSize, 200 + i, 0.1);
    const got = await dequantizeOnGpu(g, codes, scales, rows, cols, o, narrow);
    const want = dequantizeGroupsCpu(codes, scales, rows, cols, o);
    const bad = got.findIndex((x, j) => x !== want[j]);
    assert.equal(
      bad,
      -1,
      `[${rows}, ${cols}] int${o.bits}/${o.groupSize}: element ${bad}: ${got[bad]} vs ${want[bad]}`,
    );
  }
});

Deno.test({ name: "dequantizeGroups: layout and shape errors", ...needsGpu }, async () => {
  const g = gpu!;
  const p = new Program(g, "dequantize errors");
  const tensors: Tensor[] = [];
  const t = (shape: number[], dtype: "f32" | "u32" | "i32") => {
    const x = Tensor.empty(g, shape, dtype, `t${tensors.length}`);
    tensors.push(x);
    return x;
  };
  const rejects = (
    codes: Tensor,
    scales: Tensor,
    out: Tensor,
    o: QuantGroups,
    pattern: RegExp,
  ) =>
    assert.rejects(
      () => dequantizeGroups(p, codes, scales, out, o),
      (e) => e instanceof ShapeError && /dequantizeGroups/.test(e.message) && pattern.test(e.message),
    );
  try {
    // int4 with cols 12: not a multiple of 8 codes per word.
    await rejects(t([6], "u32"), t([4, 3], "f32"), t([4, 12], "f32"), { bits: 4, groupSize: 4 }, /\[4, 12\]/);
    // cols 16 not a multiple of groupSize 12.
    await rejects(
      t([16], "u32"),
      t([4, 1], "f32"),
      t([4, 16], "f32"),
      { bits: 8, groupSize: 12 },
      /groupSize/,
    );
    // groupSize 4 is not a multiple of 8 codes per int4 word.
    await rejects(t([4], "u32"), t([2, 4], "f32"), t([2, 16], "f32"), { bits: 4, groupSize: 4 }, /groupSize/);
    // Wrong number of code words, wrong scales shape, wrong dtypes.
    await rejects(t([9], "u32"), t([4, 2], "f32"), t([4, 8], "f32"), { bits: 8, groupSize: 4 }, /\[9\]/);
    await rejects(t([8], "u32"), t([4, 1], "f32"), t([4, 8], "f32"), { bits: 8, groupSize: 4 }, /\[4, 1\]/);
    await rejects(t([8], "i32"), t([4, 2], "f32"), t([4, 8], "f32"), { bits: 8, groupSize: 4 }, /i32/);
    await rejects(t([8], "u32"), t([4, 2], "f32"), t([32], "f32"), { bits: 8, groupSize: 4 }, /\[32\]/);
    assert.throws(
      () => dequantizeGroupsCpu(new Uint32Array(3), new Float32Array(2), 1, 12, { bits: 8, groupSize: 6 }),
      ShapeError,
    );
    assert.equal(p.dispatches.length, 0);
  } finally {
    p.destroy();
    for (const x of tensors) x.destroy();
  }
});

/** The top-k of `logits` [rows, cols] merged on the GPU from chunks of the given widths (cycled). */
async function topkOnGpu(
  g: Gpu,
  logits: Float32Array<ArrayBuffer>,
  rows: number,
  cols: number,
  k: number,
  widths: number[],
  narrow = false,
): Promise<{ ids: Int32Array; values: Float32Array }> {
  // Garbage in the state: the first chunk must ignore it.
  const ids = Tensor.fromArray(
    g,
    Int32Array.from({ length: rows * k }, (_, i) => i % 3),
    [rows, k],
    "i32",
    "ids",
  );
  const values = Tensor.fromArray(g, randomArray(rows * k, 7, 1e6), [rows, k], "f32", "values");
  const chunks: Tensor[] = [];
  try {
    await run(g, narrow, async (p) => {
      for (let c0 = 0, w = 0; c0 < cols; c0 += widths[w++ % widths.length]) {
        const n = Math.min(widths[w % widths.length], cols - c0);
        const block = new Float32Array(rows * n);
        for (let r = 0; r < rows; r++) block.set(logits.subarray(r * cols + c0, r * cols + c0 + n), r * n);
        const chunk = Tensor.fromArray(g, block, [rows, n], "f32", `chunk ${c0}`);
        chunks.push(chunk);
        await topkMerge(p, chunk, ids, values, { colOffset: c0, first: c0 === 0 });
      }
    });
    return { ids: await ids.read() as Int32Array, values: await values.readFloat() };
  } finally {
    for (const t of [ids, values, ...chunks]) t.destroy();
  }
}

Deno.test(
  { name: "topkMerge: every chunking equals the CPU top-k, ties to the lowest id", ...needsGpu },
  async () => {
    const g = gpu!;
    const r = rng(11);
    const cases: Array<{ rows: number; cols: number; k: number; ties?: boolean; narrow?: boolean }> = [
      { rows: 5, cols: 300, k: 8 },
      { rows: 3, cols: 5, k: 8 }, // fewer columns than k: unfilled slots
      { rows: 67, cols: 200, k: 16, ties: true }, // more than one workgroup of rows
      { rows: 9, cols: 150, k: 64, ties: true, narrow: true },
      { rows: 4, cols: 97, k: 1, ties: true },
      { rows: 2, cols: 70, k: 64 },
    ];
    for (const { rows, cols, k, ties, narrow } of cases) {
      const logits = ties
        ? Float32Array.from({ length: rows * cols }, () => Math.floor(3 * r()))
        : randomArray(rows * cols, rows * cols, 5);
      if (!ties) {
        logits[0] = NaN; // never enters
        logits[1] = -Infinity; // enters only while the list is not full
        logits[cols - 1] = logits[2]; // an exact tie across the whole row
      }
      const want = topkCpu(logits, rows, cols, k);
      for (const widths of [[cols], [1, 7, 3, 100, 2], [Math.max(1, k - 3)], [5]]) {
        const got = await topkOnGpu(g, logits, rows, cols, k, widths, narrow);
        const label = `rows ${rows} cols ${cols} k ${k} chunks [${widths}]`;
        assert.deepEqual([...got.ids], [...want.ids], `${label}: ids`);
        assert.deepEqual([...got.values], [...want.values], `${label}: values`);
      }
    }
  },
);

Deno.test("topkCpu: order, ties, NaN and unfilled slots", () => {
  const logits = new Float32Array([1, NaN, 2, 1, -Infinity, 2]);
  const { ids, values } = topkCpu(logits, 1, 6, 7);
  assert.deepEqual([...ids], [2, 5, 0, 3, 4, -1, -1]);
  assert.deepEqual([...values], [2, 2, 1, 1, -Infinity, TOPK_EMPTY_VALUE, TOPK_EMPTY_VALUE]);
  assert.equal(TOPK_EMPTY_VALUE, Math.fround(-3.4e38));
});

Deno.test({ name: "topkMerge: shape errors", ...needsGpu }, async () => {
  const g = gpu!;
  const p = new Program(g, "topk errors");
  const chunk = Tensor.empty(g, [3, 10], "f32", "chunk");
  const made: Tensor[] = [chunk];
  const state = (k: number, rows = 3): [Tensor, Tensor] => {
    const ids = Tensor.empty(g, [rows, k], "i32", "ids");
    const values = Tensor.empty(g, [rows, k], "f32", "values");
    made.push(ids, values);
    return [ids, values];
  };
  const rejects = (ids: Tensor, values: Tensor, pattern: RegExp, colOffset = 0) =>
    assert.rejects(
      () => topkMerge(p, chunk, ids, values, { colOffset, first: true }),
      (e) => e instanceof ShapeError && /topkMerge/.test(e.message) && pattern.test(e.message),
    );
  try {
    await rejects(...state(65), /k = 65/);
    await rejects(...state(0), /k = 0/);
    await rejects(...state(4, 2), /\[2, 4\]/);
    const [ids, values] = state(4);
    await rejects(ids, made[0], /\[3, 10\]/);
    await rejects(values, values, /f32/);
    await rejects(ids, values, /colOffset/, 2 ** 31 - 5);
    assert.equal(p.dispatches.length, 0);
  } finally {
    p.destroy();
    for (const t of made) t.destroy();
  }
});

Deno.test({ name: "scatterTopkTeacher: equals the CPU reference", ...needsGpu }, async () => {
  const g = gpu!;
  const r = rng(5);
  for (
    const [rows, k, vocab, draftVocab, narrow] of [[1, 4, 10, 6, false], [7, 5, 50, 20, true], [
      130,
      16,
      300,
      97,
      false,
    ]] as const
  ) {
    // A draft vocabulary of every third target token, the rest unmapped.
    const toDraft = Int32Array.from(
      { length: vocab },
      (_, i) => i % 3 === 0 && i / 3 < draftVocab ? i / 3 : -1,
    );
    const ids = Int32Array.from({ length: rows * k }, () => Math.floor(r() * vocab));
    ids[0] = -1; // empty slot
    ids[1] = vocab + 3; // out of range: skipped
    toDraft[vocab - 1] = draftVocab + 5; // a corrupt draft index: skipped
    ids[2] = vocab - 1;
    if (k > 4) ids[3] = ids[4] = 0; // the same token twice: the later slot wins
    const logprobs = randomArray(rows * k, rows, 10);
    const tail = randomArray(rows, rows + 1, 10);
    const want = scatterTopkTeacherCpu(ids, logprobs, tail, toDraft, rows, k, draftVocab);
    const t = {
      ids: Tensor.fromArray(g, ids, [rows, k], "i32", "ids"),
      logprobs: Tensor.fromArray(g, logprobs, [rows, k], "f32", "logprobs"),
      tail: Tensor.fromArray(g, tail, [rows], "f32", "tail"),
      toDraft: Tensor.fromArray(g, toDraft, [vocab], "i32", "toDraft"),
      out: Tensor.fromArray(g, randomArray(rows * draftVocab, 3), [rows, draftVocab], "f32", "out"),
    };
    try {
      await run(g, narrow, (p) => scatterTopkTeacher(p, t));
      assert.deepEqual(
        [...await t.out.readFloat()],
        [...want],
        `rows ${rows} k ${k} V ${vocab} Vd ${draftVocab}`,
      );
    } finally {
      for (const x of Object.values(t)) x.destroy();
    }
  }
  // By hand: one row, Vd 3; slot 0 empty, slot 1 target 4 → draft 2, slot 2 target 1 (not in draft).
  const cpu = scatterTopkTeacherCpu(
    new Int32Array([-1, 4, 1]),
    new Float32Array([-1, -2, -3]),
    new Float32Array([-9]),
    new Int32Array([0, -1, -1, 1, 2]),
    1,
    3,
    3,
  );
  assert.deepEqual([...cpu], [-9, -9, -2]);
});

Deno.test({ name: "scatterTopkTeacher: shape errors", ...needsGpu }, async () => {
  const g = gpu!;
  const p = new Program(g, "scatter errors");
  const base = {
    ids: Tensor.empty(g, [4, 3], "i32", "ids"),
    logprobs: Tensor.empty(g, [4, 3], "f32", "logprobs"),
    tail: Tensor.empty(g, [4], "f32", "tail"),
    toDraft: Tensor.empty(g, [20], "i32", "toDraft"),
    out: Tensor.empty(g, [4, 8], "f32", "out"),
  };
  const wrong = {
    ids: Tensor.empty(g, [3, 3], "i32", "ids3"),
    logprobs: Tensor.empty(g, [4, 2], "f32", "logprobs2"),
    tail: Tensor.empty(g, [4, 1], "f32", "tail2d"),
    toDraft: Tensor.empty(g, [20], "f32", "toDraftF32"),
    out: Tensor.empty(g, [32], "f32", "out1d"),
  };
  try {
    for (const key of Object.keys(base) as Array<keyof typeof base>) {
      await assert.rejects(
        () => scatterTopkTeacher(p, { ...base, [key]: wrong[key] }),
        (e) => e instanceof ShapeError && /scatterTopkTeacher/.test(e.message) && e.message.includes(key),
        key,
      );
    }
    assert.equal(p.dispatches.length, 0);
  } finally {
    p.destroy();
    for (const x of [...Object.values(base), ...Object.values(wrong)]) x.destroy();
  }
});
