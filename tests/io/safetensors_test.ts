import assert from "node:assert/strict";
import { join } from "node:path";
import {
  fromFloat32,
  fromFloat32As,
  fromNumbers,
  parseSafetensors,
  type RawTensor,
  SAFETENSORS_INDEX,
  SafetensorsCheckpoint,
  SafetensorsError,
  SafetensorsFile,
  serializeSafetensors,
  toFloat32,
  toNumbers,
  writeSafetensors,
  writeShardedSafetensors,
} from "../../lib/io/safetensors.ts";

const FIXTURE = new URL("../fixtures/io/reference.safetensors", import.meta.url).pathname;
const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;

/** A scratch directory removed after `fn`. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-st-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function ramp(n: number, scale = 0.25): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => (i - n / 2) * scale);
}

/** Hand-made safetensors bytes: `header` is written as given (so it can be wrong), then `dataBytes` zeros. */
function rawFile(header: unknown, dataBytes: number, headerLenOverride?: number): Uint8Array<ArrayBuffer> {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLenOverride ?? json.byteLength), true);
  out.set(json, 8);
  return out;
}

Deno.test("safetensors: files written by the reference Python package read back exactly", async () => {
  const f = await SafetensorsFile.open(FIXTURE);
  try {
    assert.deepEqual(f.metadata, { format: "pt", note: "eaglet fixture" });
    assert.deepEqual(f.names.sort(), [
      "bf16",
      "bool",
      "empty",
      "f16",
      "f32",
      "f64",
      "i32",
      "i64",
      "scalar",
      "u8",
    ]);
    const f32 = [1, -2.5, 3.25, 0.10000000149011612, 65504, -0.0010000000474974513];
    assert.deepEqual([...await f.readFloat32("f32")], f32);
    assert.deepEqual([...await f.readFloat32("f64")], f32);
    assert.deepEqual([...await f.readFloat32("f16")], [
      1,
      -2.5,
      3.25,
      0.0999755859375,
      65504,
      -0.0010004043579101562,
    ]);
    assert.deepEqual([...await f.readFloat32("bf16")], [
      1,
      -2.5,
      3.25,
      0.10009765625,
      65536,
      -0.00099945068359375,
    ]);
    // Our own rounding agrees bit for bit with torch's.
    assert.deepEqual(fromFloat32As(f32, [2, 3], "BF16").bytes, (await f.read("bf16")).bytes);
    assert.deepEqual(fromFloat32As(f32, [2, 3], "F16").bytes, (await f.read("f16")).bytes);
    assert.deepEqual(toNumbers(await f.read("i64")), [-(2 ** 40), -1, 0, 7]);
    assert.deepEqual(toNumbers(await f.read("i32")), [-5, 6, 2 ** 30, -(2 ** 31)]);
    assert.deepEqual(toNumbers(await f.read("u8")), [0, 1, 255]);
    assert.deepEqual(toNumbers(await f.read("bool")), [1, 0, 1]);
    assert.deepEqual(f.info("i32").shape, [2, 2]);
    assert.deepEqual(f.info("scalar").shape, []);
    assert.deepEqual([...await f.readFloat32("scalar")], [4.5]);
    assert.deepEqual((await f.read("empty")).shape, [0, 3]);
    assert.deepEqual([...await f.readFloat32("f32")], [...toFloat32(await f.readRows("f32", 0, 2))]);
    assert.deepEqual([...toFloat32(await f.readRows("f32", 1, 2))], f32.slice(3));
    assert.throws(() => f.readRows("f32", 1, 3), /rows \[1, 3\)/);
    // The in-memory parser sees the same tensors.
    const whole = parseSafetensors(Deno.readFileSync(FIXTURE), FIXTURE);
    assert.deepEqual(whole.tensors.get("i64"), await f.read("i64"));
  } finally {
    f.close();
  }
});

Deno.test("safetensors: write then read every dtype, single tensors and row ranges", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "all.safetensors");
    const tensors: Array<[string, RawTensor]> = [
      ["w.f32", fromFloat32(ramp(35), [5, 7])],
      ["w.f16", fromFloat32As(ramp(12), [3, 4], "F16")],
      ["w.bf16", fromFloat32As(ramp(9, 1.5), [9], "BF16")],
      ["ids.i64", fromNumbers([3, -1, 2 ** 50], [3], "I64")],
      ["ids.i32", fromNumbers([7, -8], [2], "I32")],
      ["mask", fromNumbers([1, 0, 0, 1, 1], [5], "BOOL")],
      ["bytes", fromNumbers([0, 128, 255], [3], "U8")],
    ];
    await writeSafetensors(path, tensors, { format: "pt" });
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["all.safetensors"]);
    // Same bytes as the in-memory serializer; header padded so the data starts 8-byte aligned.
    const bytes = Deno.readFileSync(path);
    assert.deepEqual(bytes, serializeSafetensors(tensors, { format: "pt" }));
    const f = await SafetensorsFile.open(path);
    try {
      assert.equal(f.dataOffset % 8, 0);
      assert.deepEqual(f.names, tensors.map(([n]) => n));
      for (const [name, t] of tensors) assert.deepEqual(await f.read(name), t, name);
      // Concurrent reads do not interleave their seeks.
      const all = await Promise.all(tensors.map(([n]) => f.read(n)));
      assert.deepEqual(all, tensors.map(([, t]) => t));
      assert.deepEqual([...await f.readFloat32("w.f32")], [...ramp(35)]);
      assert.deepEqual([...await f.readFloat32("w.f16")], [...ramp(12)]);
      assert.deepEqual([...await f.readFloat32("w.bf16")], [...ramp(9, 1.5)]);
      const rows = await f.readRows("w.f32", 2, 4);
      assert.deepEqual(rows.shape, [2, 7]);
      assert.deepEqual([...toFloat32(rows)], [...ramp(35).slice(14, 28)]);
      assert.deepEqual(toNumbers(await f.read("ids.i64")), [3, -1, 2 ** 50]);
      await assert.rejects(() => f.readFloat32("ids.i32"), /tensor ids\.i32: I32 is not a float dtype/);
      assert.throws(() => f.info("nope"), /all\.safetensors: no tensor nope/);
    } finally {
      f.close();
    }
  });
});

Deno.test("safetensors: writing a tensor whose bytes do not match its shape fails and leaves nothing", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "bad.safetensors");
    const bad: RawTensor = { dtype: "F32", shape: [2, 3], bytes: new Uint8Array(20) };
    await assert.rejects(
      () => writeSafetensors(path, [["ok", fromFloat32(ramp(2), [2])], ["bad", bad]]),
      (e) =>
        e instanceof SafetensorsError &&
        /bad\.safetensors: tensor bad has 20 bytes but F32 \[2,3\] needs 24/.test(e.message),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("safetensors: every kind of corruption names the file and the tensor", async () => {
  await withTempDir(async (dir) => {
    const cases: Array<[string, Uint8Array<ArrayBuffer>, RegExp]> = [
      ["short", new Uint8Array(5), /short\.safetensors: 5 bytes, too short for a header/],
      [
        "header-past-end",
        rawFile({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, 4, 1000),
        /header-past-end\.safetensors: header length 1000 runs past the end of the file/,
      ],
      ["not-json", rawFile("{not json", 0), /not-json\.safetensors: header is not valid JSON/],
      [
        "unknown-dtype",
        rawFile({ w: { dtype: "F8_E4M3", shape: [4], data_offsets: [0, 4] } }, 4),
        /unknown-dtype\.safetensors: tensor w has unknown dtype "F8_E4M3"/,
      ],
      [
        "size-mismatch",
        rawFile({ w: { dtype: "F32", shape: [2, 3], data_offsets: [0, 16] } }, 16),
        /size-mismatch\.safetensors: tensor w holds 16 bytes but F32 \[2,3\] needs 24/,
      ],
      [
        "out-of-range",
        rawFile({ w: { dtype: "F32", shape: [4], data_offsets: [8, 24] } }, 16),
        /out-of-range\.safetensors: tensor w offsets \[8, 24\] lie outside the 16 data bytes/,
      ],
      [
        "truncated",
        rawFile({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "I64", shape: [2], data_offsets: [8, 24] },
        }, 20),
        /truncated\.safetensors: tensor b offsets \[8, 24\] lie outside the 20 data bytes/,
      ],
      [
        "overlap",
        rawFile({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
        }, 12),
        /overlap\.safetensors: tensors a and b overlap/,
      ],
      [
        "bad-shape",
        rawFile({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4),
        /bad-shape\.safetensors: tensor w has a malformed shape \[-1\]/,
      ],
      [
        "bad-offsets",
        rawFile({ w: { dtype: "F32", shape: [1], data_offsets: [0] } }, 4),
        /bad-offsets\.safetensors: tensor w has malformed data_offsets \[0\]/,
      ],
      ["array-header", rawFile([1, 2], 0), /array-header\.safetensors: header is not a JSON object/],
    ];
    for (const [name, bytes, message] of cases) {
      const path = join(dir, `${name}.safetensors`);
      Deno.writeFileSync(path, bytes);
      const isIt = (e: unknown) => e instanceof SafetensorsError && message.test(e.message);
      await assert.rejects(() => SafetensorsFile.open(path), isIt, `open ${name}`);
      assert.throws(() => parseSafetensors(bytes, path), isIt, `parse ${name}`);
    }
    // A file truncated after it was opened: the read names the tensor.
    const path = join(dir, "shrinks.safetensors");
    await writeSafetensors(path, [["w", fromFloat32(ramp(64), [64])]]);
    const f = await SafetensorsFile.open(path);
    try {
      Deno.truncateSync(path, 100);
      await assert.rejects(
        () => f.read("w"),
        /shrinks\.safetensors: tensor w: file ends after \d+ of 256 bytes/,
      );
    } finally {
      f.close();
    }
    await assert.rejects(
      () => SafetensorsFile.open(join(dir, "absent.safetensors")),
      /absent\.safetensors: no such file/,
    );
  });
});

Deno.test("safetensors: sharded checkpoints through model.safetensors.index.json", async () => {
  await withTempDir(async (dir) => {
    const tensors: Array<[string, RawTensor]> = [];
    for (let l = 0; l < 3; l++) {
      tensors.push([`model.layers.${l}.a.weight`, fromFloat32(ramp(24, l + 1), [4, 6])]);
      tensors.push([`model.layers.${l}.b.weight`, fromFloat32As(ramp(10, l + 1), [10], "BF16")]);
    }
    const written = await writeShardedSafetensors(dir, tensors, {
      maxShardBytes: 120,
      metadata: { format: "pt" },
    });
    assert.deepEqual(written, [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      SAFETENSORS_INDEX,
    ]);
    const index = JSON.parse(Deno.readTextFileSync(join(dir, SAFETENSORS_INDEX)));
    assert.equal(index.metadata.total_size, 3 * (96 + 20));
    assert.equal(index.weight_map["model.layers.2.b.weight"], "model-00003-of-00003.safetensors");
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      assert.equal(ckpt.files.length, 3);
      assert.deepEqual(ckpt.names, tensors.map(([n]) => n));
      for (const [name, t] of tensors) assert.deepEqual(await ckpt.read(name), t);
      assert.equal(ckpt.info("model.layers.1.a.weight").file, join(dir, "model-00002-of-00003.safetensors"));
      assert.deepEqual([...await ckpt.readFloat32("model.layers.0.a.weight")], [...ramp(24, 1)]);
      assert.deepEqual((await ckpt.readRows("model.layers.2.a.weight", 3, 4)).shape, [1, 6]);
      assert.throws(() => ckpt.info("lm_head.weight"), /checkpoint has no tensor lm_head\.weight/);
    } finally {
      ckpt.close();
    }

    // An index entry pointing at a missing tensor, then at a missing shard.
    index.weight_map["lm_head.weight"] = "model-00001-of-00003.safetensors";
    Deno.writeTextFileSync(join(dir, SAFETENSORS_INDEX), JSON.stringify(index));
    await assert.rejects(
      () => SafetensorsCheckpoint.open(dir),
      /model\.safetensors\.index\.json: tensor lm_head\.weight is said to be in model-00001-of-00003\.safetensors, but that file has no such tensor/,
    );
    delete index.weight_map["lm_head.weight"];
    Deno.writeTextFileSync(join(dir, SAFETENSORS_INDEX), JSON.stringify(index));
    Deno.removeSync(join(dir, "model-00002-of-00003.safetensors"));
    await assert.rejects(
      () => SafetensorsCheckpoint.open(dir),
      /index\.json: tensor model\.layers\.1\.a\.weight is in shard model-00002-of-00003\.safetensors, which does not exist/,
    );
    index.weight_map["x"] = "../elsewhere.safetensors";
    Deno.writeTextFileSync(join(dir, SAFETENSORS_INDEX), JSON.stringify(index));
    await assert.rejects(
      () => SafetensorsCheckpoint.open(dir),
      /tensor x maps to "\.\.\/elsewhere\.safetensors"/,
    );
    Deno.writeTextFileSync(join(dir, SAFETENSORS_INDEX), "{");
    await assert.rejects(() => SafetensorsCheckpoint.open(dir), /index\.json: not valid JSON/);
    Deno.removeSync(join(dir, SAFETENSORS_INDEX));
    await assert.rejects(
      () => SafetensorsCheckpoint.open(dir),
      /neither model\.safetensors\.index\.json nor model\.safetensors found/,
    );
  });
});

Deno.test("safetensors: one shard is written as model.safetensors without an index", async () => {
  await withTempDir(async (dir) => {
    const tensors: Array<[string, RawTensor]> = [["a", fromFloat32(ramp(4), [4])], [
      "b",
      fromFloat32(ramp(3), [3]),
    ]];
    assert.deepEqual(await writeShardedSafetensors(dir, tensors, { maxShardBytes: 1 << 20 }), [
      "model.safetensors",
    ]);
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      assert.deepEqual(ckpt.names, ["a", "b"]);
      assert.deepEqual(await ckpt.read("b"), tensors[1][1]);
    } finally {
      ckpt.close();
    }
  });
});

Deno.test({
  name: "safetensors: tinystories-656K stores only lm_head.weight, with metadata saying so",
  ignore: !existsSync(TINYSTORIES),
}, async () => {
  const ckpt = await SafetensorsCheckpoint.open(TINYSTORIES);
  try {
    assert.equal(ckpt.names.length, 2 * 9 + 2);
    assert.ok(ckpt.has("lm_head.weight") && !ckpt.has("model.embed_tokens.weight"));
    assert.deepEqual(ckpt.info("lm_head.weight").shape, [2048, 128]);
    assert.equal(ckpt.files[0].metadata["model.embed_tokens.weight"], "lm_head.weight");
    const rows = toFloat32(await ckpt.readRows("lm_head.weight", 1, 2));
    const all = await ckpt.readFloat32("lm_head.weight");
    assert.deepEqual([...rows], [...all.subarray(128, 256)]);
  } finally {
    ckpt.close();
  }
});

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    console.log(`skipping: ${path} not found`);
    return false;
  }
}
