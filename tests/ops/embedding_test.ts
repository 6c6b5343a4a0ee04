import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { Program, runOnce } from "../../lib/gpu/program.ts";
import { ShapeError } from "../../lib/gpu/errors.ts";
import { decodeHost, type DType, encodeHost, Tensor } from "../../lib/tensor.ts";
import {
  checkEmbeddingIds,
  embeddingBackward,
  embeddingBackwardCpu,
  embeddingBackwardIndex,
  embeddingCpu,
  embeddingForward,
  uploadEmbeddingIndex,
} from "../../lib/ops/embedding.ts";

function randomIds(n: number, vocab: number, seed: number): Int32Array<ArrayBuffer> {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** The values a table of `dtype` holds after rounding. */
function stored(values: Float32Array<ArrayBuffer>, dtype: DType): Float32Array {
  const bytes = encodeHost(values, dtype);
  return decodeHost(
    bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
    dtype,
    values.length,
  ) as Float32Array;
}

Deno.test({
  name: "embedding: forward from f32, f16 and bf16 tables vs CPU, bad ids give zeros",
  ...needsGpu,
}, async () => {
  const g = gpu!;
  // odd widths put rows across u32 words of the 16-bit tables
  for (const [n, vocab, hidden] of [[1, 1, 1], [7, 37, 5], [300, 2048, 128], [65, 11, 33]]) {
    const values = randomArray(vocab * hidden, vocab + hidden, 3);
    const ids = randomIds(n, vocab, n);
    if (n > 3) [ids[0], ids[1], ids[2]] = [-1, vocab, 2 ** 31 - 1];
    const tids = Tensor.fromArray(g, ids, [n], "i32", "ids");
    for (const dtype of ["f32", "f16", "bf16"] as const) {
      const table = Tensor.fromArray(g, values, [vocab, hidden], dtype, `table ${dtype}`);
      const out = Tensor.fromArray(g, new Float32Array(n * hidden).fill(7), [n, hidden], "f32", "out");
      await runOnce(g, "embedding", (p) => embeddingForward(p, tids, table, out));
      const want = embeddingCpu(ids, stored(values, dtype), vocab, hidden);
      assertClose(await out.read(), want, `${dtype} n=${n} V=${vocab} H=${hidden}`, { atol: 0, rtol: 0 });
      table.destroy();
      out.destroy();
    }
    tids.destroy();
  }
});

Deno.test({
  name: "embedding: backward (CSR index, deterministic) vs CPU, with and without accumulate",
  ...needsGpu,
}, async () => {
  const g = gpu!;
  for (const [n, vocab, hidden] of [[1, 3, 1], [9, 5, 7], [300, 2048, 128], [130, 17, 33]]) {
    const ids = randomIds(n, vocab, 7 * n);
    if (n > 3) ids[3] = ids[0]; // a repeated id
    const dout = randomArray(n * hidden, n + hidden);
    const index = uploadEmbeddingIndex(g, embeddingBackwardIndex(ids, vocab));
    const tdout = Tensor.fromArray(g, dout, [n, hidden], "f32", "dout");
    const start = randomArray(vocab * hidden, 99);
    const dtable = Tensor.fromArray(g, start, [vocab, hidden], "f32", "dtable");
    const want = embeddingBackwardCpu(dout, ids, vocab, hidden);
    const tag = `n=${n} V=${vocab} H=${hidden}`;
    await runOnce(g, "embedding backward", (p) => embeddingBackward(p, tdout, index, dtable));
    assertClose(await dtable.read(), want, `dtable ${tag}`, { atol: 1e-6, rtol: 1e-6 });
    dtable.write(start);
    await runOnce(
      g,
      "embedding backward acc",
      (p) => embeddingBackward(p, tdout, index, dtable, { accumulate: true }),
    );
    assertClose(await dtable.read(), want.map((v, i) => v + start[i]), `accumulated dtable ${tag}`, {
      atol: 1e-6,
      rtol: 1e-6,
    });
    for (const t of [index.offsets, index.positions, tdout, dtable]) t.destroy();
  }
});

Deno.test("embedding: CSR index and host id checks", () => {
  const { offsets, positions } = embeddingBackwardIndex([2, 0, 2, 3, 2], 5);
  assert.deepEqual([...offsets], [0, 1, 1, 4, 5, 5]);
  assert.deepEqual([...positions], [1, 0, 2, 4, 3]);
  assert.throws(() => embeddingBackwardIndex([0, 5], 5), /ids\[1\] = 5 is outside the vocabulary \[0, 5\)/);
  assert.throws(() => checkEmbeddingIds([0, -1], 5, "input_ids"), /input_ids\[1\] = -1/);
  checkEmbeddingIds(Int32Array.from([0, 4]), 5);
});

Deno.test("embedding: CPU backward matches central differences of the CPU forward", () => {
  const vocab = 4, hidden = 3, ids = [1, 3, 1, 0];
  const table = Float64Array.from(randomArray(vocab * hidden, 41));
  const dout = Float64Array.from(randomArray(ids.length * hidden, 42));
  const loss = () => embeddingCpu(ids, table, vocab, hidden).reduce((s, v, i) => s + v * dout[i], 0);
  const h = 1e-6;
  const numeric = Array.from(table, (_, i) => {
    const keep = table[i];
    table[i] = keep + h;
    const a = loss();
    table[i] = keep - h;
    const b = loss();
    table[i] = keep;
    return (a - b) / (2 * h);
  });
  assertClose(embeddingBackwardCpu(dout, ids, vocab, hidden), numeric, "dtable vs finite differences", {
    atol: 1e-8,
    rtol: 1e-6,
  });
});

Deno.test({ name: "embedding: shape and dtype errors come before any dispatch", ...needsGpu }, async () => {
  const g = gpu!;
  const ids = Tensor.empty(g, [4], "i32", "ids"), idsF = Tensor.empty(g, [4], "f32", "idsF");
  const table = Tensor.empty(g, [10, 6], "f32", "table"), out = Tensor.empty(g, [4, 5], "f32", "out");
  const p = new Program(g, "bad embedding");
  await assert.rejects(() => embeddingForward(p, idsF, table, out), /ids \(idsF\) is f32, expected i32/);
  await assert.rejects(
    () => embeddingForward(p, ids, table, out),
    /out \(out\) has shape \[4, 5\], expected \[4, 6\]/,
  );
  const index = uploadEmbeddingIndex(g, embeddingBackwardIndex([1, 2, 3], 10));
  const dout = Tensor.empty(g, [4, 6], "f32", "dout");
  await assert.rejects(() => embeddingBackward(p, dout, index, table), ShapeError);
  assert.equal(p.dispatches.length, 0);
  for (const t of [ids, idsF, table, out, index.offsets, index.positions, dout]) t.destroy();
});
