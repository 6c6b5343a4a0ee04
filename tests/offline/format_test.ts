/**
 * The offline feature format on the CPU: grouped int8/int4 quantization (lib/offline/quantize.ts), sample
 * files encoded and parsed back for every storage option (lib/offline/format.ts), the per-token size, and the
 * errors a damaged file or manifest gives (each a FeatureFileError naming the file and the tensor).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { rng } from "../gpu.ts";
import { encodeHost } from "../../lib/tensor.ts";
import {
  fromFloat32As,
  fromNumbers,
  type RawTensor,
  serializeSafetensors,
  toFloat32,
  writeSafetensors,
} from "../../lib/io/safetensors.ts";
import {
  bf16BitsToFloat,
  checkQuantShape,
  dequantizeGroupsHost,
  type QuantBits,
  quantizeGroups,
  quantMax,
} from "../../lib/offline/quantize.ts";
import {
  AUX_FORMATS,
  type AuxFormat,
  bytesPerToken,
  type CapturedSample,
  checkStorage,
  encodeSample,
  expectedTensors,
  FeatureFileError,
  FEATURES_FORMAT,
  FEATURES_MANIFEST,
  FEATURES_VERSION,
  type FeaturesManifest,
  type FeatureStorage,
  parseSampleFile,
  readManifest,
  readSampleFile,
  sampleFilePath,
  specForgeBytesPerToken,
  TEACHER_FORMATS,
  type TeacherFormat,
} from "../../lib/offline/format.ts";
import { openFeatureSet, readFeatures } from "../../lib/offline/dataset.ts";

// ---------------------------------------------------------------------------------------------------------
// Quantization

/** Row-major [rows, cols] values in (−1, 1) with outliers (×40) and whole groups of zeros sprinkled in. */
function awkwardMatrix(rows: number, cols: number, groupSize: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = Float32Array.from({ length: rows * cols }, () => 2 * r() - 1);
  for (let i = 0; i < x.length; i += 37) x[i] *= 40; // outliers that set their group's scale
  for (let g = 1; g < x.length / groupSize; g += 5) x.fill(0, g * groupSize, (g + 1) * groupSize);
  x[3] = 1e-30; // a tiny value in a group with a large scale: code 0
  return x;
}

/** Checks every property of the module comment on one quantized matrix. */
function checkQuantized(x: Float32Array, rows: number, cols: number, bits: QuantBits, groupSize: number) {
  const o = { bits, groupSize };
  const q = quantizeGroups(x, rows, cols, o);
  const label = `int${bits} group ${groupSize}`;
  assert.equal(q.codes.byteLength, rows * cols * bits / 8, `${label}: code bytes`);
  assert.equal(q.scaleBits.length, rows * cols / groupSize, `${label}: scales`);
  const xh = dequantizeGroupsHost(q, rows, cols, o);
  const qmax = quantMax(bits);
  for (let g = 0; g < q.scaleBits.length; g++) {
    const s = bf16BitsToFloat(q.scaleBits[g]);
    let absMax = 0;
    for (let i = 0; i < groupSize; i++) absMax = Math.max(absMax, Math.abs(x[g * groupSize + i]));
    if (absMax === 0) {
      assert.equal(q.scaleBits[g], 0, `${label}: group ${g} of zeros has scale bits 0`);
      for (let i = 0; i < groupSize; i++) assert.equal(xh[g * groupSize + i], 0);
      continue;
    }
    // The scale is the smallest bf16 value ≥ absMax / qmax: the bf16 value just below it is too small.
    assert.ok(s >= absMax / qmax, `${label}: group ${g} scale ${s} < ${absMax}/${qmax}`);
    assert.ok(
      bf16BitsToFloat(q.scaleBits[g] - 1) < absMax / qmax,
      `${label}: group ${g} scale not the least`,
    );
    let largestCode = 0;
    for (let i = 0; i < groupSize; i++) {
      const at = g * groupSize + i;
      const code = xh[at] / s;
      assert.ok(Number.isInteger(code) && Math.abs(code) <= qmax, `${label}: code ${code} at ${at}`);
      // No clipping: the code is x / s rounded to nearest, so the error stays within half a step.
      const err = Math.abs(x[at] - xh[at]);
      assert.ok(err <= s / 2 * (1 + 1e-6), `${label}: |x − x̂| = ${err} > s/2 = ${s / 2} at ${at}`);
      largestCode = Math.max(largestCode, Math.abs(code));
    }
    // The group's largest value uses (nearly) the full code range: qmax, or qmax − 1 when bf16's 2^-8
    // relative step moved the scale up.
    assert.ok(largestCode >= (bits === 8 ? qmax - 1 : qmax), `${label}: group ${g} max code ${largestCode}`);
  }
}

Deno.test("quantizeGroups: int8 and int4 round trips stay within half a step, with outliers and zero groups", () => {
  for (const [bits, groupSize] of [[8, 4], [8, 32], [8, 128], [4, 8], [4, 32], [4, 128]] as const) {
    checkQuantized(awkwardMatrix(5, 256, groupSize, 10 + groupSize + bits), 5, 256, bits, groupSize);
  }
  // Magnitudes far from 1 (scale near the bottom and the top of bf16's range).
  for (const scale of [1e-20, 3e-5, 7e4, 1e30]) {
    const x = awkwardMatrix(3, 64, 32, 7).map((v) => v * scale);
    checkQuantized(x, 3, 64, 8, 32);
    checkQuantized(x, 3, 64, 4, 32);
  }
});

Deno.test("quantizeGroups: packing layout, checked by hand", () => {
  // int8, groups of 4: [127, −1.4, 0.6, −127] has scale 127/127 = 1 (bf16 0x3f80) and codes 127, −1, 1, −127
  // as two's-complement bytes; a group of zeros has scale 0 and codes 0.
  const q8 = quantizeGroups(new Float32Array([127, -1.4, 0.6, -127, 0, 0, 0, 0]), 1, 8, {
    bits: 8,
    groupSize: 4,
  });
  assert.deepEqual([...q8.codes], [0x7f, 0xff, 0x01, 0x81, 0, 0, 0, 0]);
  assert.deepEqual([...q8.scaleBits], [0x3f80, 0]);
  // int4, one group of 8 with max |x| = 1: 1/7 = 0.142857 (f32 0x3e124925) rounds UP to bf16 0x3e13 =
  // 0.1435546875. Codes round(x / s) = 7, −7, 3, −3, 0, 2, −5, 1 → stored +8 = 15, 1, 11, 5, 8, 10, 3, 9;
  // value 2b in the low nibble of byte b, 2b+1 in the high one.
  const x4 = new Float32Array([1, -1, 0.5, -0.5, 0, 0.25, -0.75, 0.1]);
  const q4 = quantizeGroups(x4, 1, 8, { bits: 4, groupSize: 8 });
  assert.deepEqual([...q4.scaleBits], [0x3e13]);
  assert.equal(bf16BitsToFloat(0x3e13), 0.1435546875);
  assert.deepEqual([...q4.codes], [0x1f, 0x5b, 0xa8, 0x93]);
  const s = 0.1435546875;
  assert.deepEqual(
    [...dequantizeGroupsHost(q4, 1, 8, { bits: 4, groupSize: 8 })],
    [7, -7, 3, -3, 0, 2, -5, 1].map((c) => Math.fround(c * s)),
  );
  // Two rows of one group each: groups never straddle rows, so row 1 gets its own scale.
  const two = quantizeGroups(new Float32Array([...x4, ...x4.map((v) => v * 7)]), 2, 8, {
    bits: 4,
    groupSize: 8,
  });
  assert.deepEqual([...two.scaleBits], [0x3e13, 0x3f80]);
});

Deno.test("checkQuantShape and quantizeGroups: shape errors", () => {
  assert.throws(
    () => checkQuantShape(64, { bits: 8, groupSize: 2 }),
    /group size 2 must be a positive multiple of 4/,
  );
  assert.throws(
    () => checkQuantShape(64, { bits: 4, groupSize: 4 }),
    /group size 4 must be a positive multiple of 8/,
  );
  assert.throws(() => checkQuantShape(64, { bits: 8, groupSize: 0 }), RangeError);
  assert.throws(() => checkQuantShape(64, { bits: 8, groupSize: -4 }), RangeError);
  assert.throws(() => checkQuantShape(64, { bits: 8, groupSize: 4.5 }), RangeError);
  assert.throws(
    () => checkQuantShape(100, { bits: 8, groupSize: 32 }, "aux"),
    /^RangeError: aux: row length 100 is not a multiple of the group size 32$/,
  );
  checkQuantShape(96, { bits: 8, groupSize: 32 });
  checkQuantShape(96, { bits: 4, groupSize: 8 });
  assert.throws(() => quantizeGroups(new Float32Array(63), 1, 64, { bits: 8, groupSize: 32 }), /63 values/);
  assert.throws(() => quantizeGroups(new Float32Array(64), 1, 64, { bits: 4, groupSize: 12 }), RangeError);
});

// ---------------------------------------------------------------------------------------------------------
// Sample files

const HIDDEN = 64;

/** A manifest for a 2-layer target of hidden size 64 (aux layers [0, 1, 1], stored [0, 1]). */
function makeManifest(storage: Partial<FeatureStorage> = {}, vocabSize = 2048): FeaturesManifest {
  return {
    format: FEATURES_FORMAT,
    version: FEATURES_VERSION,
    storage: { auxFormat: "int8", groupSize: 32, teacherFormat: "topk", topk: 4, ...storage },
    target: { path: "tiny", hiddenSize: HIDDEN, vocabSize, numLayers: 2, configSha256: "0".repeat(64) },
    auxLayers: [0, 1, 1],
    storedLayers: [0, 1],
    data: { path: "tiny.jsonl", chatTemplate: "llama3", maxLength: 64, numSamples: 3 },
    fileGroupSize: 2,
  };
}

/** A captured sample with typed-array tokens. */
type TestSample = CapturedSample & { inputIds: Int32Array; lossMask: Uint8Array };

/** A deterministic captured sample of S tokens for manifest `m` (every field filled). */
function captured(m: FeaturesManifest, S: number, seed: number): TestSample {
  const r = rng(seed);
  const V = m.target.vocabSize, k = m.storage.topk;
  const cols = m.storedLayers.length * HIDDEN;
  const topkIds = new Int32Array(S * k), topkLogprobs = new Float32Array(S * k);
  for (let t = 0; t < S; t++) {
    const first = Math.floor(r() * (V - k));
    let lp = -1e-3 * (1 + r());
    for (let j = 0; j < k; j++) {
      topkIds[t * k + j] = (first + 7 * j) % V;
      topkLogprobs[t * k + j] = lp;
      lp -= 0.3 + 5 * r();
    }
  }
  const aux = awkwardMatrix(S, cols, 32, seed + 1).map((v) => 3 * v);
  return {
    inputIds: Int32Array.from({ length: S }, (_, i) => i === 0 ? V - 1 : Math.floor(r() * V)),
    lossMask: Uint8Array.from({ length: S }, (_, i) => i > 1 && r() < 0.7 ? 1 : 0),
    aux,
    hidden: Float32Array.from({ length: S * HIDDEN }, () => 8 * r() - 4),
    topkIds,
    topkLogprobs,
  };
}

function floatsOf(t: RawTensor): Float32Array {
  return new Float32Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength / 4);
}

function u16Of(t: RawTensor): Uint16Array<ArrayBuffer> {
  return new Uint16Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength / 2);
}

Deno.test("encodeSample → safetensors → parseSampleFile gives the sample back, for every storage format", () => {
  for (const vocab of [2048, 70000]) {
    for (const auxFormat of AUX_FORMATS) {
      for (const teacherFormat of TEACHER_FORMATS) {
        const m = makeManifest({ auxFormat, teacherFormat }, vocab);
        const label = `${auxFormat}/${teacherFormat} vocab ${vocab}`;
        checkStorage(m.storage, HIDDEN, vocab);
        const S = 7, cols = 2 * HIDDEN;
        const c = captured(m, S, 3);
        const tensors = encodeSample(m, c);
        const bytes = serializeSafetensors(tensors);
        const got = parseSampleFile(m, bytes, "mem/data_0.safetensors");
        assert.equal(got.path, "mem/data_0.safetensors");
        assert.deepEqual([...got.inputIds], [...c.inputIds], `${label}: input_ids`);
        assert.deepEqual([...got.lossMask], [...c.lossMask], `${label}: loss_mask`);
        assert.equal(tensors.get("input_ids")!.dtype, vocab <= 65536 ? "U16" : "I32", label);

        const want = expectedTensors(m, S);
        assert.deepEqual([...tensors.keys()].sort(), [...want.keys()].sort(), `${label}: tensor names`);
        for (const [name, [dtype, shape]] of want) {
          assert.equal(tensors.get(name)!.dtype, dtype, `${label}: ${name} dtype`);
          assert.deepEqual(tensors.get(name)!.shape, shape, `${label}: ${name} shape`);
        }

        if (auxFormat === "f32") {
          assert.deepEqual(floatsOf(got.aux), c.aux, `${label}: f32 aux is lossless`);
        } else if (auxFormat === "bf16") {
          assert.deepEqual(
            u16Of(got.aux),
            encodeHost(Float32Array.from(c.aux), "bf16"),
            `${label}: bf16 aux bits`,
          );
        } else {
          const o = { bits: (auxFormat === "int8" ? 8 : 4) as QuantBits, groupSize: 32 };
          const q = quantizeGroups(c.aux, S, cols, o);
          assert.deepEqual(got.aux.bytes, q.codes, `${label}: codes`);
          assert.deepEqual(u16Of(got.auxScale!), q.scaleBits, `${label}: scale bits`);
          const scales = toFloat32(got.auxScale!);
          const xh = dequantizeGroupsHost(
            { codes: got.aux.bytes, scaleBits: u16Of(got.auxScale!) },
            S,
            cols,
            o,
          );
          for (let i = 0; i < xh.length; i++) {
            const half = scales[Math.floor(i / 32)] / 2;
            assert.ok(Math.abs(xh[i] - c.aux[i]) <= half * (1 + 1e-6), `${label}: aux[${i}] off by > s/2`);
          }
        }
        if (auxFormat === "f32" || auxFormat === "bf16") assert.equal(got.auxScale, null, label);

        if (teacherFormat === "topk") {
          assert.equal(got.hidden, null, label);
          assert.deepEqual([...got.topkIds!], [...c.topkIds!], `${label}: topk_ids`);
          // f16: 11 significant bits, so a relative error of at most 2^-11 (all values here are normal f16).
          const lp = got.topkLogprobs!;
          for (let i = 0; i < lp.length; i++) {
            const e = c.topkLogprobs![i];
            assert.ok(
              Math.abs(lp[i] - e) <= Math.abs(e) * 2 ** -11,
              `${label}: logprob ${i}: ${lp[i]} vs ${e}`,
            );
          }
        } else {
          assert.equal(got.topkIds, null, label);
          assert.equal(got.topkLogprobs, null, label);
          if (teacherFormat === "none") {
            assert.equal(got.hidden, null, `${label}: no teacher stored`);
          } else if (teacherFormat === "hidden-f32") {
            assert.deepEqual(floatsOf(got.hidden!), c.hidden, `${label}: f32 hidden is lossless`);
          } else {
            assert.deepEqual(
              u16Of(got.hidden!),
              encodeHost(Float32Array.from(c.hidden!), "bf16"),
              `${label}: bf16 hidden bits`,
            );
          }
        }

        // bytesPerToken = the tensor bytes of the file (everything after the header) per token.
        let tensorBytes = 0;
        for (const t of tensors.values()) tensorBytes += t.bytes.byteLength;
        const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
        assert.equal(bytes.byteLength - 8 - headerLen, tensorBytes, label);
        assert.equal(bytesPerToken(m), tensorBytes / S, `${label}: bytes per token`);
      }
    }
  }
});

Deno.test("bytesPerToken: figures by hand (hidden 64, 2 stored layers, U16 ids), and SpecForge's", () => {
  // ids 2 + mask 1 + aux (128 values) + teacher.
  const bpt = (auxFormat: AuxFormat, teacherFormat: TeacherFormat) =>
    bytesPerToken(makeManifest({ auxFormat, teacherFormat, groupSize: 32, topk: 4 }));
  assert.equal(bpt("f32", "hidden-f32"), 3 + 128 * 4 + 64 * 4);
  assert.equal(bpt("bf16", "hidden-bf16"), 3 + 128 * 2 + 64 * 2);
  assert.equal(bpt("int8", "topk"), 3 + 128 + 4 * 2 + 4 * (2 + 2));
  assert.equal(bpt("int4", "topk"), 3 + 64 + 4 * 2 + 4 * (2 + 2));
  // SpecForge: bf16 aux of 3 layers and bf16 hidden, int64 input_ids and loss_mask.
  assert.equal(specForgeBytesPerToken(64), 3 * 64 * 2 + 64 * 2 + 8 + 8);
});

// ---------------------------------------------------------------------------------------------------------
// Errors

/** A scratch directory removed after `fn`. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-features-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Asserts that `e` is a FeatureFileError whose message contains every one of `parts`. */
function isFeatureError(...parts: string[]): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof FeatureFileError, `expected a FeatureFileError, got ${e}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" does not name ${p}`);
    return true;
  };
}

/** The bytes of a valid sample file for `m` after `edit` changed its tensors. */
function fileWith(
  m: FeaturesManifest,
  edit: (t: Map<string, RawTensor>) => void = () => {},
  S = 6,
): Uint8Array<ArrayBuffer> {
  const t = encodeSample(m, captured(m, S, 11));
  edit(t);
  return serializeSafetensors(t);
}

Deno.test("parseSampleFile: tensors that do not match the manifest name the file and the tensor", () => {
  const path = "/features/rows_0-2/data_1.safetensors";
  const S = 6;
  const m = makeManifest({ auxFormat: "f32", teacherFormat: "topk" });
  const hm = makeManifest({ auxFormat: "int4", teacherFormat: "hidden-bf16" });
  const cases: Array<[string, FeaturesManifest, (t: Map<string, RawTensor>) => void, string[]]> = [
    [
      "aux of the wrong dtype",
      m,
      (t) => t.set("aux", fromFloat32As(new Float32Array(S * 128), [S, 128], "BF16")),
      ["tensor aux is BF16 [6,128], the manifest says F32 [6,128]"],
    ],
    [
      "aux with one row too many",
      m,
      (t) => t.set("aux", fromFloat32As(new Float32Array((S + 1) * 128), [S + 1, 128], "F32")),
      ["tensor aux is F32 [7,128]"],
    ],
    [
      "topk_ids with the wrong k",
      m,
      (t) => t.set("topk_ids", fromNumbers(new Int32Array(S * 5), [S, 5], "U16")),
      ["tensor topk_ids is U16 [6,5], the manifest says U16 [6,4]"],
    ],
    [
      "hidden of a hidden-f32 file in a hidden-bf16 set",
      hm,
      (t) => t.set("hidden", fromFloat32As(new Float32Array(S * HIDDEN), [S, HIDDEN], "F32")),
      ["tensor hidden is F32"],
    ],
    ["a missing loss_mask", m, (t) => t.delete("loss_mask"), ["tensor loss_mask is missing"]],
    ["a missing aux_scale", hm, (t) => t.delete("aux_scale"), ["tensor aux_scale is missing"]],
    ["a missing input_ids", m, (t) => t.delete("input_ids"), ["input_ids"]],
    [
      "an extra tensor",
      m,
      (t) => t.set("hidden", fromFloat32As(new Float32Array(S * HIDDEN), [S, HIDDEN], "F32")),
      ["unexpected tensor hidden"],
    ],
    [
      "a token id equal to the vocabulary size",
      m,
      (t) => t.set("input_ids", fromNumbers([1, 2, 2048, 3, 4, 5], [S], "U16")),
      ["tensor input_ids", "2048"],
    ],
    [
      "a top-k id outside the vocabulary",
      m,
      (t) => t.set("topk_ids", fromNumbers(new Array(S * 4).fill(65535), [S, 4], "U16")),
      ["tensor topk_ids", "65535"],
    ],
    [
      "a loss mask value of 2",
      m,
      (t) => t.set("loss_mask", fromNumbers([0, 1, 2, 1, 0, 0], [S], "U8")),
      ["tensor loss_mask"],
    ],
  ];
  for (const [what, manifest, edit, parts] of cases) {
    assert.throws(
      () => parseSampleFile(manifest, fileWith(manifest, edit, S), path),
      isFeatureError(path, ...parts),
      what,
    );
  }
  // The unedited files parse (the cases above fail for the stated reason only).
  parseSampleFile(m, fileWith(m), path);
  parseSampleFile(hm, fileWith(hm), path);
});

Deno.test("readSampleFile: truncated, corrupt and missing files name the file", async () => {
  await withTempDir(async (dir) => {
    const m = makeManifest({ auxFormat: "f32", teacherFormat: "hidden-f32" });
    const good = fileWith(m);
    const path = sampleFilePath(dir, 1, m.fileGroupSize);
    assert.equal(path, join(dir, "rows_0-2", "data_1.safetensors"));
    await writeSafetensors(path, encodeSample(m, captured(m, 6, 11)));
    assert.deepEqual(
      await Deno.readFile(path),
      good,
      "writeSafetensors writes what serializeSafetensors gives",
    );
    const sample = await readSampleFile(m, path);
    assert.equal(sample.inputIds.length, 6);

    // Cut in half: the header survives, the data does not; the error names the first tensor past the end.
    const half = good.slice(0, Math.floor(good.byteLength / 2));
    await Deno.writeFile(path, half);
    const headerLen = Number(new DataView(good.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(good.subarray(8, 8 + headerLen)));
    const dataLeft = half.byteLength - 8 - headerLen;
    const firstCut = Object.keys(header).find((n) => header[n].data_offsets?.[1] > dataLeft)!;
    assert.equal(firstCut, "aux");
    await assert.rejects(readSampleFile(m, path), isFeatureError(path, `tensor ${firstCut}`));

    // Cut inside the header.
    await Deno.writeFile(path, good.slice(0, 20));
    await assert.rejects(readSampleFile(m, path), isFeatureError(path, "header"));

    // Garbage: a random length prefix runs past the end; a plausible one is followed by non-JSON.
    const r = rng(5);
    const garbage = Uint8Array.from({ length: 300 }, () => Math.floor(256 * r()));
    await Deno.writeFile(path, garbage);
    await assert.rejects(readSampleFile(m, path), isFeatureError(path, "header"));
    new DataView(garbage.buffer).setBigUint64(0, 100n, true);
    await Deno.writeFile(path, garbage);
    await assert.rejects(readSampleFile(m, path), isFeatureError(path, "not valid JSON"));
    await Deno.writeFile(path, new Uint8Array(5));
    await assert.rejects(readSampleFile(m, path), isFeatureError(path, "too short"));

    const missing = sampleFilePath(dir, 2, m.fileGroupSize);
    await assert.rejects(readSampleFile(m, missing), isFeatureError(missing, "missing"));
  });
});

Deno.test("readManifest: missing, invalid and mismatched manifests name the file", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      readManifest(dir),
      isFeatureError(dir, FEATURES_MANIFEST, "not a features directory"),
    );
    const path = join(dir, FEATURES_MANIFEST);
    const m = makeManifest();
    await Deno.writeTextFile(path, JSON.stringify(m));
    assert.deepEqual(await readManifest(dir), m);

    await Deno.writeTextFile(path, JSON.stringify({ ...m, version: FEATURES_VERSION + 1 }));
    await assert.rejects(readManifest(dir), isFeatureError(path, `version ${FEATURES_VERSION + 1}`));
    await Deno.writeTextFile(path, JSON.stringify(m).slice(0, -3));
    await assert.rejects(readManifest(dir), isFeatureError(path, "not JSON"));
    await Deno.writeTextFile(path, "null");
    await assert.rejects(readManifest(dir), isFeatureError(path, "format"));
    await Deno.writeTextFile(path, JSON.stringify({ ...m, format: "specforge" }));
    await assert.rejects(readManifest(dir), isFeatureError(path, "format is specforge"));
    await Deno.writeTextFile(path, JSON.stringify({ ...m, storage: { ...m.storage, groupSize: 6 } }));
    await assert.rejects(readManifest(dir), isFeatureError(path, "group size 6"));
    await Deno.writeTextFile(path, JSON.stringify({ ...m, storage: { ...m.storage, auxFormat: "fp8" } }));
    await assert.rejects(readManifest(dir), isFeatureError(path, "unknown aux format fp8"));
    await Deno.writeTextFile(path, JSON.stringify({ ...m, storage: { ...m.storage, topk: 65 } }));
    await assert.rejects(readManifest(dir), isFeatureError(path, "k must be 1..64"));
  });
});

Deno.test("openFeatureSet / readFeatures: a hand-written directory, a missing file, a damaged one", async () => {
  await withTempDir(async (dir) => {
    const m = makeManifest({ auxFormat: "int4", teacherFormat: "topk" }); // 3 samples, 2 files per folder
    await Deno.writeTextFile(join(dir, FEATURES_MANIFEST), JSON.stringify(m));
    const samples = [captured(m, 5, 1), captured(m, 9, 2), captured(m, 3, 3)];
    for (const i of [0, 2]) await writeSafetensors(sampleFilePath(dir, i, 2), encodeSample(m, samples[i]));
    assert.ok(sampleFilePath(dir, 2, 2).includes("rows_2-4"));

    const set = await openFeatureSet(dir, { maxLength: 4 });
    assert.equal(set.missing, 1);
    assert.deepEqual(set.paths, [sampleFilePath(dir, 0, 2), sampleFilePath(dir, 2, 2)]);
    assert.equal(set.dataset.length, 2);
    assert.deepEqual(
      [...set.dataset.sample(0).inputIds],
      [...samples[0].inputIds].slice(0, 4),
      "cut to maxLength",
    );
    assert.deepEqual([...set.dataset.sample(1).inputIds], [...samples[2].inputIds]);
    assert.deepEqual([...set.dataset.sample(1).lossMask], [...samples[2].lossMask]);
    const [f0, f1] = await readFeatures(set, [0, 1]);
    assert.equal(f0.inputIds.length, 5, "readFeatures gives the whole file");
    assert.deepEqual([...f1.topkIds!], [...samples[2].topkIds!]);

    // A file with a wrong tensor fails at open, naming it.
    const bad = sampleFilePath(dir, 2, 2);
    await Deno.writeFile(bad, fileWith(m, (t) => t.delete("aux_scale")));
    await assert.rejects(openFeatureSet(dir), isFeatureError(bad, "tensor aux_scale is missing"));
    await Deno.writeFile(bad, (await Deno.readFile(sampleFilePath(dir, 0, 2))).slice(0, 100));
    await assert.rejects(openFeatureSet(dir), isFeatureError(bad));
    await Deno.remove(bad);
    await Deno.remove(sampleFilePath(dir, 0, 2));
    await assert.rejects(openFeatureSet(dir), isFeatureError(dir, "none of the 3 feature files exist"));
  });
});
