/**
 * prepare-hidden-states end to end on ../shared's tinystories-656K (2 layers, hidden 128, vocab 2048; aux
 * layers [0, 1, 1], stored [0, 1]) over a small pre-tokenized dataset: the files and manifest it writes, resume
 * and sharding, a storage mismatch, and the stored features against the target's own forward (f32 aux and
 * hidden bit for bit; the top-k teacher against the full logits).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { SafetensorsFile, toFloat32 } from "../../lib/io/safetensors.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { ConfigError } from "../../lib/models/config.ts";
import {
  FeatureFileError,
  FEATURES_MANIFEST,
  type FeaturesManifest,
  type FeatureStorage,
  readManifest,
  readSampleFile,
  sampleFilePath,
} from "../../lib/offline/format.ts";
import { dequantizeGroupsHost } from "../../lib/offline/quantize.ts";
import { prepareHiddenStates, type PrepareOptions } from "../../lib/offline/prepare.ts";
import { openFeatureSet } from "../../lib/offline/dataset.ts";

const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;
const haveTinystories = await Deno.stat(`${TINYSTORIES}/model.safetensors`).then(() => true, () => false);
if (!haveTinystories) console.warn(`skipping prepare-hidden-states tests: ${TINYSTORIES} is absent`);
const gpuTest = { ...needsGpu, ignore: needsGpu.ignore || !haveTinystories };

const H = 128, V = 2048, K = 8, GROUP = 32;
/** Files per rows_* folder: small, so that 10 samples span three folders. */
const FILE_GROUP = 4;

/** A pre-tokenized record as the data builder reads it (lib/data/records.ts). */
interface TokensRecord {
  id: string;
  input_ids: number[];
  loss_mask: number[];
}

/** 10 deterministic samples of 20–60 tokens: BOS, then ids in 3..2047; a prompt of 3–10 unsupervised tokens. */
function makeRecords(n = 10): TokensRecord[] {
  const r = rng(2024);
  return Array.from({ length: n }, (_, i) => {
    const len = 20 + Math.floor(r() * 41);
    const prompt = 3 + Math.floor(r() * 8);
    return {
      id: `s${i}`,
      input_ids: [1, ...Array.from({ length: len - 1 }, () => 3 + Math.floor(r() * (V - 3)))],
      loss_mask: Array.from({ length: len }, (_, t) => (t < prompt ? 0 : 1)),
    };
  });
}

const RECORDS = makeRecords();

/** A temporary root holding data.jsonl; `fn` runs with it, and it is removed afterwards. */
async function withData(fn: (root: string, dataPath: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "eaglet-prepare-" });
  try {
    const dataPath = join(root, "data.jsonl");
    await Deno.writeTextFile(dataPath, RECORDS.map((rec) => JSON.stringify(rec)).join("\n") + "\n");
    await fn(root, dataPath);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** Options of a run over `dataPath` into `out`, int8 aux and a top-k teacher unless overridden. */
function options(
  root: string,
  dataPath: string,
  out: string,
  o: Partial<PrepareOptions> = {},
): PrepareOptions {
  return {
    targetModelPath: TINYSTORIES,
    dataPath,
    outputPath: out,
    chatTemplate: "llama3",
    maxLength: 128,
    storage: { auxFormat: "int8", groupSize: GROUP, teacherFormat: "topk", topk: K },
    numSamples: null,
    batchSize: 4,
    shard: { index: 0, count: 1 },
    auxLayers: null,
    draftModelConfig: null,
    cacheDir: null,
    isPreformatted: false,
    fileGroupSize: FILE_GROUP,
    hub: { cacheDir: join(root, "hub"), offline: true },
    log: () => {},
    ...o,
  };
}

/** SHA-256 hex of a file (computed here, independently of prepare.ts). */
async function sha256(path: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The target's own outputs for one sample of S tokens (a forward of batch 1, length S). */
interface Reference {
  /** [S, 3H]: the aux slots [0, 1, 1]. */
  aux: Float32Array;
  /** [S, H]. */
  hidden: Float32Array;
  /** [S, V]. */
  logits: Float32Array;
}

let references: Promise<Reference[]> | null = null;

/** The reference outputs of every record, computed once per test process. */
function referenceOutputs(): Promise<Reference[]> {
  references ??= (async () => {
    const target = await TargetModel.load(gpu!, TINYSTORIES);
    try {
      assert.deepEqual(target.auxLayers, [0, 1, 1]);
      const out: Reference[] = [];
      for (const rec of RECORDS) {
        const S = rec.input_ids.length;
        const f = await target.forward(1, S, { aux: true, finalHidden: true, logits: true });
        try {
          f.run(Int32Array.from(rec.input_ids), [S]);
          out.push({
            aux: await f.aux!.read() as Float32Array,
            hidden: await f.finalHidden!.read() as Float32Array,
            logits: await f.logits!.read() as Float32Array,
          });
        } finally {
          f.destroy();
        }
      }
      return out;
    } finally {
      target.destroy();
    }
  })();
  return references;
}

/** The columns of stored layer u (0 → slot 0, 1 → slot 1) of a reference's [S, 3H] aux, as [S, 2H]. */
function storedColumns(ref: Reference, S: number): Float32Array {
  const out = new Float32Array(S * 2 * H);
  for (let t = 0; t < S; t++) {
    for (const [u, slot] of [[0, 0], [1, 1]]) {
      out.set(ref.aux.subarray(t * 3 * H + slot * H, t * 3 * H + (slot + 1) * H), (t * 2 + u) * H);
    }
  }
  return out;
}

/** Whether two float arrays hold the same bits. */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length),
    y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.every((v, i) => v === y[i]);
}

/** Asserts that `p` rejects with a FeatureFileError whose message contains every one of `parts`. */
async function rejectsFeatureError(p: Promise<unknown>, ...parts: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof FeatureFileError, `expected a FeatureFileError, got ${e}`);
    for (const part of parts) assert.ok(e.message.includes(part), `"${e.message}" does not name ${part}`);
    return true;
  });
}

Deno.test({ name: "prepareHiddenStates: int8 + top-k files, manifest and tokens", ...gpuTest }, async () => {
  await withData(async (root, dataPath) => {
    const out = join(root, "features");
    const logs: string[] = [];
    const r = await prepareHiddenStates(gpu!, options(root, dataPath, out, { log: (l) => logs.push(l) }));
    const lengths = RECORDS.map((rec) => rec.input_ids.length);
    assert.equal(r.shardRows, 10);
    assert.equal(r.skipped, 0);
    assert.equal(r.written, 10);
    assert.deepEqual(r.nonFinite, []);
    assert.equal(r.tokens, lengths.reduce((a, b) => a + b, 0));
    assert.ok(logs.some((l) => l.includes("too few for the default aux layers")), "the [0, 1, 1] notice");

    // The manifest on disk is the one returned, with the target's and the data's facts.
    const m = await readManifest(out);
    assert.deepEqual(m, r.manifest);
    const expected: FeaturesManifest = {
      format: "eaglet-features",
      version: 1,
      storage: { auxFormat: "int8", groupSize: GROUP, teacherFormat: "topk", topk: K },
      target: {
        path: TINYSTORIES,
        hiddenSize: H,
        vocabSize: V,
        numLayers: 2,
        configSha256: await sha256(join(TINYSTORIES, "config.json")),
      },
      auxLayers: [0, 1, 1],
      storedLayers: [0, 1],
      data: { path: dataPath, chatTemplate: "llama3", maxLength: 128, numSamples: 10 },
      fileGroupSize: FILE_GROUP,
    };
    assert.deepEqual(m, expected);

    // One file per sample in rows_0-4, rows_4-8, rows_8-12, with exactly the format's tensors.
    assert.deepEqual(
      [...Deno.readDirSync(out)].map((e) => e.name).sort(),
      [FEATURES_MANIFEST, "rows_0-4", "rows_4-8", "rows_8-12"],
    );
    let bytes = 0;
    for (let i = 0; i < 10; i++) {
      const path = sampleFilePath(out, i, FILE_GROUP);
      assert.equal(path, join(out, `rows_${i - i % 4}-${i - i % 4 + 4}`, `data_${i}.safetensors`));
      bytes += (await Deno.stat(path)).size;
      const S = lengths[i];
      const f = await SafetensorsFile.open(path);
      try {
        const shapes = Object.fromEntries(f.names.map((n) => [n, `${f.info(n).dtype} [${f.info(n).shape}]`]));
        assert.deepEqual(shapes, {
          input_ids: `U16 [${S}]`,
          loss_mask: `U8 [${S}]`,
          aux: `I8 [${S},${2 * H}]`,
          aux_scale: `BF16 [${S},${2 * H / GROUP}]`,
          topk_ids: `U16 [${S},${K}]`,
          topk_logprobs: `F16 [${S},${K}]`,
        }, `sample ${i}`);
        assert.deepEqual(f.metadata, { format: "eaglet-features/1", sample_id: `s${i}` });
      } finally {
        f.close();
      }
    }
    assert.equal(r.bytes, bytes);

    // The training side reads back exactly the data's tokens and masks.
    const set = await openFeatureSet(out);
    assert.equal(set.missing, 0);
    assert.equal(set.dataset.length, 10);
    for (let i = 0; i < 10; i++) {
      const s = set.dataset.sample(i);
      assert.deepEqual([...s.inputIds], RECORDS[i].input_ids, `input_ids of sample ${i}`);
      assert.deepEqual([...s.lossMask], RECORDS[i].loss_mask, `loss_mask of sample ${i}`);
    }

    // The int8 aux is the target's aux within half a quantization step.
    const refs = await referenceOutputs();
    for (const i of [0, 5, 9]) {
      const s = await readSampleFile(m, sampleFilePath(out, i, FILE_GROUP));
      const S = lengths[i];
      const scaleBits = new Uint16Array(
        s.auxScale!.bytes.buffer,
        s.auxScale!.bytes.byteOffset,
        S * 2 * H / GROUP,
      );
      const xh = dequantizeGroupsHost({ codes: s.aux.bytes, scaleBits }, S, 2 * H, {
        bits: 8,
        groupSize: GROUP,
      });
      const want = storedColumns(refs[i], S), scales = toFloat32(s.auxScale!);
      for (let j = 0; j < xh.length; j++) {
        const half = scales[Math.floor(j / GROUP)] / 2;
        assert.ok(
          Math.abs(xh[j] - want[j]) <= half * (1 + 1e-6),
          `sample ${i} aux[${j}]: ${xh[j]} vs ${want[j]}`,
        );
      }
    }
  });
});

Deno.test(
  { name: "prepareHiddenStates: shard 0/2, then 0/1 resumes, then nothing to do", ...gpuTest },
  async () => {
    await withData(async (root, dataPath) => {
      const out = join(root, "features");
      const run = (index: number, count: number) =>
        prepareHiddenStates(gpu!, options(root, dataPath, out, { numSamples: 10, shard: { index, count } }));
      const first = await run(0, 2);
      assert.deepEqual([first.shardRows, first.skipped, first.written], [5, 0, 5]);
      const stats = new Map<number, Deno.FileInfo>();
      for (let i = 0; i < 10; i++) {
        const path = sampleFilePath(out, i, FILE_GROUP);
        if (i % 2 === 0) stats.set(i, await Deno.stat(path));
        else await assert.rejects(Deno.stat(path), Deno.errors.NotFound, `row ${i} belongs to shard 1/2`);
      }

      const second = await run(0, 1);
      assert.deepEqual([second.shardRows, second.skipped, second.written], [10, first.written, 5]);
      const rest = RECORDS.filter((_, i) => i % 2 === 1).reduce((a, rec) => a + rec.input_ids.length, 0);
      assert.equal(second.tokens, rest, "only the odd rows' tokens are new");
      for (const [i, before] of stats) {
        const after = await Deno.stat(sampleFilePath(out, i, FILE_GROUP));
        assert.equal(after.ino, before.ino, `row ${i} was not rewritten (inode)`);
        assert.equal(after.mtime?.getTime(), before.mtime?.getTime(), `row ${i} was not rewritten (mtime)`);
      }
      const set = await openFeatureSet(out);
      assert.equal(set.dataset.length, 10);
      assert.equal(set.missing, 0);

      const third = await run(0, 1);
      assert.deepEqual([third.shardRows, third.skipped, third.written, third.tokens], [10, 10, 0, 0]);
      // No temporary files are left behind.
      for (const folder of ["rows_0-4", "rows_4-8", "rows_8-12"]) {
        const names = [...Deno.readDirSync(join(out, folder))].map((e) => e.name);
        assert.ok(names.every((n) => /^data_\d+\.safetensors$/.test(n)), `${folder}: ${names}`);
      }
    });
  },
);

Deno.test(
  { name: "prepareHiddenStates: other storage flags into the same directory fail", ...gpuTest },
  async () => {
    await withData(async (root, dataPath) => {
      const out = join(root, "features");
      const base: FeatureStorage = { auxFormat: "int8", groupSize: GROUP, teacherFormat: "topk", topk: K };
      await prepareHiddenStates(gpu!, options(root, dataPath, out, { numSamples: 2 }));
      const manifestPath = join(out, FEATURES_MANIFEST);
      const before = await Deno.readTextFile(manifestPath);
      const cases: Array<[Partial<PrepareOptions>, string]> = [
        [{ numSamples: 2, storage: { ...base, auxFormat: "int4" } }, 'storage.auxFormat = "int8"'],
        [{ numSamples: 2, storage: { ...base, topk: 4 } }, "storage.topk = 8"],
        [{ numSamples: 2, storage: { ...base, groupSize: 64 } }, "storage.groupSize"],
        [{ numSamples: 2, storage: { ...base, teacherFormat: "hidden-bf16" } }, "storage.teacherFormat"],
        [{ numSamples: 3 }, "data.numSamples = 2"],
        [{ numSamples: 2, maxLength: 64 }, "data.maxLength"],
        [{ numSamples: 2, auxLayers: [0, 0, 1] }, "auxLayers"],
      ];
      for (const [o, key] of cases) {
        await rejectsFeatureError(
          prepareHiddenStates(gpu!, options(root, dataPath, out, o)),
          manifestPath,
          key,
        );
      }
      assert.equal(await Deno.readTextFile(manifestPath), before, "the manifest is left alone");
      // The same run again is fine (and has nothing to do).
      const again = await prepareHiddenStates(gpu!, options(root, dataPath, out, { numSamples: 2 }));
      assert.equal(again.written, 0);
      await assert.rejects(
        prepareHiddenStates(
          gpu!,
          options(root, dataPath, join(root, "other"), { shard: { index: 2, count: 2 } }),
        ),
        ConfigError,
      );
    });
  },
);

Deno.test({
  name: "prepareHiddenStates: f32 aux and hidden-f32 equal the target's forward bit for bit",
  ...gpuTest,
}, async () => {
  await withData(async (root, dataPath) => {
    const out = join(root, "features");
    // Batches of 4 samples of different lengths, padded to a common T: the files must not depend on it.
    const storage: FeatureStorage = {
      auxFormat: "f32",
      groupSize: GROUP,
      teacherFormat: "hidden-f32",
      topk: K,
    };
    const r = await prepareHiddenStates(gpu!, options(root, dataPath, out, { storage }));
    assert.equal(r.written, 10);
    const refs = await referenceOutputs();
    for (let i = 0; i < 10; i++) {
      const S = RECORDS[i].input_ids.length;
      const s = await readSampleFile(r.manifest, sampleFilePath(out, i, FILE_GROUP));
      assert.deepEqual([...s.inputIds], RECORDS[i].input_ids);
      const aux = new Float32Array(s.aux.bytes.buffer, s.aux.bytes.byteOffset, S * 2 * H);
      const hidden = new Float32Array(s.hidden!.bytes.buffer, s.hidden!.bytes.byteOffset, S * H);
      // The reference's slots 1 and 2 are the same layer: the file stores it once.
      for (let t = 0; t < S; t++) {
        const row = refs[i].aux.subarray(t * 3 * H, (t + 1) * 3 * H);
        assert.ok(
          sameBits(row.subarray(H, 2 * H), row.subarray(2 * H)),
          `sample ${i} token ${t}: slots 1, 2`,
        );
      }
      assert.ok(sameBits(aux, storedColumns(refs[i], S)), `sample ${i}: aux bit for bit`);
      assert.ok(sameBits(hidden, refs[i].hidden), `sample ${i}: hidden bit for bit`);
    }
  });
});

Deno.test({
  name: "prepareHiddenStates: the top-k teacher is the target's top-k with log-softmax",
  ...gpuTest,
}, async () => {
  await withData(async (root, dataPath) => {
    const out = join(root, "features");
    const r = await prepareHiddenStates(gpu!, options(root, dataPath, out, { numSamples: 6, batchSize: 3 }));
    assert.equal(r.written, 6);
    const refs = await referenceOutputs();
    for (let i = 0; i < 6; i++) {
      const S = RECORDS[i].input_ids.length;
      const s = await readSampleFile(r.manifest, sampleFilePath(out, i, FILE_GROUP));
      for (let t = 0; t < S; t++) {
        const logits = refs[i].logits.subarray(t * V, (t + 1) * V);
        const ids = s.topkIds!.subarray(t * K, (t + 1) * K),
          lp = s.topkLogprobs!.subarray(t * K, (t + 1) * K);
        const at = `sample ${i} token ${t}`;
        let best = 0;
        for (let v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        assert.equal(ids[0], best, `${at}: topk_ids[t, 0] is the argmax`);
        assert.equal(new Set(ids).size, K, `${at}: distinct ids`);
        for (let j = 1; j < K; j++) {
          assert.ok(logits[ids[j - 1]] >= logits[ids[j]], `${at}: ids ${ids} not sorted by logit`);
        }
        const kept = new Set(ids), last = logits[ids[K - 1]];
        for (let v = 0; v < V; v++) {
          assert.ok(kept.has(v) || logits[v] <= last, `${at}: id ${v} (logit ${logits[v]}) beats the k-th`);
        }
        // log p = logit − log Σ_v exp(logit_v), in f64; stored as f16 (relative error ≤ 2^-11).
        let max = -Infinity, sum = 0;
        for (let v = 0; v < V; v++) max = Math.max(max, logits[v]);
        for (let v = 0; v < V; v++) sum += Math.exp(logits[v] - max);
        const lse = max + Math.log(sum);
        for (let j = 0; j < K; j++) {
          const want = logits[ids[j]] - lse;
          assert.ok(
            Math.abs(lp[j] - want) <= Math.abs(want) * 2 ** -11 + 1e-5,
            `${at}: logprob ${lp[j]} vs ${want}`,
          );
        }
      }
    }
  });
});
