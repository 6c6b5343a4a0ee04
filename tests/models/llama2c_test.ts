import assert from "node:assert/strict";
import { join } from "node:path";
import { Tokenizer } from "../../lib/npm.ts";
import {
  convertLlama2c,
  decodeLlama2c,
  encodeLlama2c,
  halfRotationToInterleaved,
  interleavedToHalfRotation,
  type Llama2cConfig,
  Llama2cError,
  llama2cTokenizerJson,
  type Llama2cWeights,
  readLlama2cCheckpoint,
  readLlama2cTokenizer,
} from "../../lib/models/llama2c.ts";
import { SafetensorsCheckpoint } from "../../lib/io/safetensors.ts";
import { loadTargetConfig } from "../../lib/models/config.ts";

const STORIES = new URL("../../../shared/models/stories260K", import.meta.url).pathname;
const haveStories = (() => {
  try {
    Deno.statSync(join(STORIES, "stories260K.bin"));
    return true;
  } catch {
    console.log(`skipping stories260K tests: ${STORIES} not found`);
    return false;
  }
})();

// From ../shared/models/stories260K/SOURCE.md: run.c's greedy ids from BOS and their text.
const GREEDY_IDS = (
  "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 282 " +
  "295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 266 267 337 335 312 432 398 312 286 267 " +
  "414 270 333 415 426 13 438 310"
).split(" ").map(Number);
const GREEDY_TEXT =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One " +
  "day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-l2c-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Deterministic pseudo-random floats. */
function randoms(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

/** Writes weights in llama2.c's legacy (v0) or version-1 layout. */
function llama2cBytes(c: Llama2cConfig, w: Llama2cWeights, version: 0 | 1): Uint8Array {
  const hd = c.dim / c.numHeads;
  const freq = new Float32Array(c.seqLen * hd);
  const arrays = version === 0
    ? [w.tokenEmbedding, w.rmsAtt, w.wq, w.wk, w.wv, w.wo, w.rmsFfn, w.w1, w.w2, w.w3, w.rmsFinal, freq]
    : [w.rmsAtt, w.rmsFfn, w.rmsFinal, w.tokenEmbedding, w.wq, w.wk, w.wv, w.wo, w.w1, w.w2, w.w3];
  if (!c.sharedClassifier) arrays.push(w.classifier);
  const head = new Uint8Array(version === 0 ? 28 : 256);
  const dv = new DataView(head.buffer);
  const ints = [c.dim, c.hiddenDim, c.numLayers, c.numHeads, c.numKvHeads, c.vocabSize, c.seqLen];
  if (version === 0 && !c.sharedClassifier) ints[5] = -ints[5];
  const at = version === 0 ? 0 : 8;
  if (version === 1) {
    dv.setUint32(0, 0x616b3432, true);
    dv.setInt32(4, 1, true);
    dv.setUint8(36, c.sharedClassifier ? 1 : 0);
  }
  ints.forEach((v, i) => dv.setInt32(at + 4 * i, v, true));
  const body = arrays.reduce((s, a) => s + a.byteLength, 0);
  const out = new Uint8Array(head.byteLength + body);
  out.set(head);
  let o = head.byteLength;
  for (const a of arrays) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), o);
    o += a.byteLength;
  }
  return out;
}

function tinyModel(shared: boolean): { config: Llama2cConfig; weights: Llama2cWeights } {
  const config: Llama2cConfig = {
    dim: 16,
    hiddenDim: 24,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    vocabSize: 11,
    seqLen: 8,
    sharedClassifier: shared,
    version: 0,
  };
  const { dim: D, hiddenDim: F, numLayers: L, vocabSize: V } = config;
  const kv = 2 * 4;
  const tokenEmbedding = randoms(V * D, 1);
  const weights: Llama2cWeights = {
    tokenEmbedding,
    rmsAtt: randoms(L * D, 2),
    wq: randoms(L * D * D, 3),
    wk: randoms(L * kv * D, 4),
    wv: randoms(L * kv * D, 5),
    wo: randoms(L * D * D, 6),
    rmsFfn: randoms(L * D, 7),
    w1: randoms(L * F * D, 8),
    w2: randoms(L * D * F, 9),
    w3: randoms(L * F * D, 10),
    rmsFinal: randoms(D, 11),
    classifier: shared ? tokenEmbedding : randoms(V * D, 12),
  };
  return { config, weights };
}

/** A tokenizer.bin with the given pieces (ids 0-2 special, 3-258 bytes, then `extra` with scores). */
function tokenizerBytes(extra: Array<[string, number]>): Uint8Array {
  const pieces: Array<[string, number]> = [["<unk>", 0], ["\n<s>\n", 0], ["\n</s>\n", 0]];
  for (let b = 0; b < 256; b++) pieces.push([`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, 0]);
  pieces.push(...extra);
  const enc = new TextEncoder();
  const parts = pieces.map(([p]) => enc.encode(p));
  const out = new Uint8Array(4 + parts.reduce((s, p) => s + 8 + p.byteLength, 0));
  const dv = new DataView(out.buffer);
  dv.setInt32(0, Math.max(...parts.map((p) => p.byteLength)), true);
  let o = 4;
  pieces.forEach(([, score], i) => {
    dv.setFloat32(o, score, true);
    dv.setInt32(o + 4, parts[i].byteLength, true);
    out.set(parts[i], o + 8);
    o += 8 + parts[i].byteLength;
  });
  return out;
}

/** llama2.c's RoPE on interleaved pairs of each head. */
function ropeInterleaved(x: Float32Array, hd: number, pos: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < x.length / hd; h++) {
    for (let i = 0; i < hd / 2; i++) {
      const a = pos / 10000 ** ((2 * i) / hd);
      const [x0, x1] = [x[h * hd + 2 * i], x[h * hd + 2 * i + 1]];
      out[h * hd + 2 * i] = x0 * Math.cos(a) - x1 * Math.sin(a);
      out[h * hd + 2 * i + 1] = x0 * Math.sin(a) + x1 * Math.cos(a);
    }
  }
  return out;
}

/** HF's rotate_half RoPE on the two halves of each head. */
function ropeHalf(x: Float32Array, hd: number, pos: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < x.length / hd; h++) {
    for (let i = 0; i < hd / 2; i++) {
      const a = pos / 10000 ** ((2 * i) / hd);
      const [x0, x1] = [x[h * hd + i], x[h * hd + i + hd / 2]];
      out[h * hd + i] = x0 * Math.cos(a) - x1 * Math.sin(a);
      out[h * hd + i + hd / 2] = x0 * Math.sin(a) + x1 * Math.cos(a);
    }
  }
  return out;
}

function matvec(w: Float32Array, x: Float32Array): Float32Array {
  const rows = w.length / x.length;
  return Float32Array.from(
    { length: rows },
    (_, r) => x.reduce((s, xi, c) => s + w[r * x.length + c] * xi, 0),
  );
}

Deno.test("llama2c: the wq/wk permutation turns interleaved RoPE into half rotation", () => {
  // 2 heads of 4 rows, one column: rows [0..7] → [0,2,1,3, 4,6,5,7].
  const w = Float32Array.from({ length: 8 }, (_, i) => i);
  assert.deepEqual([...interleavedToHalfRotation(w, 2, 1)], [0, 2, 1, 3, 4, 6, 5, 7]);
  assert.deepEqual([...halfRotationToInterleaved(interleavedToHalfRotation(w, 2, 1), 2, 1)], [...w]);
  // Scores q·k after RoPE agree between the two conventions once q/k rows are permuted.
  const hd = 8;
  const wq = randoms(2 * hd * 6, 20);
  const wk = randoms(2 * hd * 6, 21);
  const x = randoms(6, 22);
  const y = randoms(6, 23);
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i], 0);
  const q1 = ropeInterleaved(matvec(wq, x), hd, 5);
  const k1 = ropeInterleaved(matvec(wk, y), hd, 2);
  const q2 = ropeHalf(matvec(interleavedToHalfRotation(wq, 2, 6), x), hd, 5);
  const k2 = ropeHalf(matvec(interleavedToHalfRotation(wk, 2, 6), y), hd, 2);
  for (let h = 0; h < 2; h++) {
    const s1 = dot(q1.subarray(h * hd, (h + 1) * hd), k1.subarray(h * hd, (h + 1) * hd));
    const s2 = dot(q2.subarray(h * hd, (h + 1) * hd), k2.subarray(h * hd, (h + 1) * hd));
    assert.ok(Math.abs(s1 - s2) < 1e-9, `head ${h}: ${s1} vs ${s2}`);
  }
  // Without the permutation they do not.
  const q3 = ropeHalf(matvec(wq, x), hd, 5);
  const k3 = ropeHalf(matvec(wk, y), hd, 2);
  assert.ok(
    Math.abs(dot(q1.subarray(0, hd), k1.subarray(0, hd)) - dot(q3.subarray(0, hd), k3.subarray(0, hd))) >
      1e-6,
  );
});

Deno.test({
  name: "llama2c: stories260K converts to an HF directory whose weights undo to the originals",
  ignore: !haveStories,
}, async () => {
  await withTempDir(async (tmp) => {
    const out = join(tmp, "stories260K-hf");
    const r = await convertLlama2c({
      checkpoint: join(STORIES, "stories260K.bin"),
      tokenizer: join(STORIES, "tok512.bin"),
      outputDir: out,
    });
    assert.equal(r.parameters, 260032);
    assert.deepEqual([...Deno.readDirSync(tmp)].map((e) => e.name), ["stories260K-hf"]);
    const cfg = await loadTargetConfig(join(out, "config.json"));
    assert.deepEqual(
      [
        cfg.hiddenSize,
        cfg.intermediateSize,
        cfg.numLayers,
        cfg.numHeads,
        cfg.numKvHeads,
        cfg.headDim,
        cfg.vocabSize,
      ],
      [64, 172, 5, 8, 4, 8, 512],
    );
    assert.deepEqual([cfg.rmsNormEps, cfg.ropeTheta, cfg.maxPositionEmbeddings, cfg.tieWordEmbeddings], [
      1e-5,
      10000,
      512,
      true,
    ]);
    assert.deepEqual([cfg.bosTokenId, cfg.eosTokenIds], [1, [2]]);

    const orig = readLlama2cCheckpoint(
      Deno.readFileSync(join(STORIES, "stories260K.bin")),
      "stories260K.bin",
    );
    const w = orig.weights;
    const ckpt = await SafetensorsCheckpoint.open(out);
    try {
      assert.equal(ckpt.names.length, 1 + 5 * 9 + 1);
      assert.ok(!ckpt.has("lm_head.weight"));
      const get = (n: string) => ckpt.readFloat32(n);
      assert.deepEqual(await get("model.embed_tokens.weight"), w.tokenEmbedding);
      assert.deepEqual(await get("model.norm.weight"), w.rmsFinal);
      const D = 64;
      const F = 172;
      const kv = 32;
      for (let l = 0; l < 5; l++) {
        const p = `model.layers.${l}`;
        const q = await get(`${p}.self_attn.q_proj.weight`);
        const k = await get(`${p}.self_attn.k_proj.weight`);
        assert.deepEqual(halfRotationToInterleaved(q, 8, D), w.wq.subarray(l * D * D, (l + 1) * D * D));
        assert.deepEqual(halfRotationToInterleaved(k, 4, D), w.wk.subarray(l * kv * D, (l + 1) * kv * D));
        assert.notDeepEqual(q, w.wq.subarray(l * D * D, (l + 1) * D * D));
        assert.deepEqual(
          await get(`${p}.self_attn.v_proj.weight`),
          w.wv.subarray(l * kv * D, (l + 1) * kv * D),
        );
        assert.deepEqual(
          await get(`${p}.self_attn.o_proj.weight`),
          w.wo.subarray(l * D * D, (l + 1) * D * D),
        );
        assert.deepEqual(await get(`${p}.mlp.gate_proj.weight`), w.w1.subarray(l * F * D, (l + 1) * F * D));
        assert.deepEqual(await get(`${p}.mlp.down_proj.weight`), w.w2.subarray(l * D * F, (l + 1) * D * F));
        assert.deepEqual(await get(`${p}.mlp.up_proj.weight`), w.w3.subarray(l * F * D, (l + 1) * F * D));
        assert.deepEqual(await get(`${p}.input_layernorm.weight`), w.rmsAtt.subarray(l * D, (l + 1) * D));
        assert.deepEqual(
          await get(`${p}.post_attention_layernorm.weight`),
          w.rmsFfn.subarray(l * D, (l + 1) * D),
        );
        assert.deepEqual(ckpt.info(`${p}.mlp.down_proj.weight`).shape, [64, 172]);
        assert.deepEqual(ckpt.info(`${p}.self_attn.k_proj.weight`).shape, [32, 64]);
      }
    } finally {
      ckpt.close();
    }

    // The tokenizer: HF tokenizers.js reproduces run.c's text and llama2.c's encoder.
    const tok = readLlama2cTokenizer(Deno.readFileSync(join(STORIES, "tok512.bin")), 512, "tok512.bin");
    const hf = new Tokenizer(
      JSON.parse(Deno.readTextFileSync(join(out, "tokenizer.json"))),
      JSON.parse(Deno.readTextFileSync(join(out, "tokenizer_config.json"))),
    );
    assert.equal(hf.decode(GREEDY_IDS), GREEDY_TEXT);
    assert.equal(decodeLlama2c(tok, GREEDY_IDS), GREEDY_TEXT);
    // The greedy text re-encodes to the greedy ids, with both encoders.
    const ref = encodeLlama2c(tok, GREEDY_TEXT);
    assert.deepEqual(ref, GREEDY_IDS);
    assert.deepEqual(hf.encode(GREEDY_TEXT).ids, [1, ...ref]);
    for (
      const text of [
        "Tim and Lily went to the big park. They saw a dog!",
        "  two  spaces, a tab\tand unicode: héllo wörld 🙂 “quotes” naïve",
        "a",
        'Timmy\'s mom said, "No!"\n\nThe end.',
      ]
    ) {
      const ids = encodeLlama2c(tok, text);
      assert.deepEqual(hf.encode(text).ids, [1, ...ids], text);
      assert.equal(hf.decode(ids), text, text);
      assert.equal(decodeLlama2c(tok, ids), text, text);
    }
    assert.deepEqual(hf.encode("").ids, [1]);
    assert.deepEqual(encodeLlama2c(tok, ""), []);
    // 🙂 is not in the vocabulary: byte fallback gives its four UTF-8 bytes as tokens byte + 3.
    assert.deepEqual(encodeLlama2c(tok, "🙂").slice(1), [0xf0 + 3, 0x9f + 3, 0x99 + 3, 0x82 + 3]);
  });
});

Deno.test("llama2c: legacy and version-1 files, shared or separate classifier, give the same HF weights", async () => {
  await withTempDir(async (tmp) => {
    // A tokenizer of the model's 11 tokens (too few for llama2.c's byte tokens; only its size is checked).
    const small = join(tmp, "small.bin");
    Deno.writeFileSync(small, smallTokenizer(11));
    for (const shared of [true, false]) {
      const m = tinyModel(shared);
      const results: Array<Record<string, Float32Array>> = [];
      for (const version of [0, 1] as const) {
        const bin = join(tmp, `m${version}${shared}.bin`);
        Deno.writeFileSync(bin, llama2cBytes(m.config, m.weights, version));
        const parsed = readLlama2cCheckpoint(Deno.readFileSync(bin), bin);
        assert.deepEqual(parsed.config, { ...m.config, version });
        assert.deepEqual(parsed.weights.w2, m.weights.w2);
        assert.deepEqual(parsed.weights.classifier, m.weights.classifier);
        const out = join(tmp, `out${version}${shared}`);
        await convertLlama2c({ checkpoint: bin, tokenizer: small, outputDir: out });
        const cfg = JSON.parse(Deno.readTextFileSync(join(out, "config.json")));
        assert.equal(cfg.tie_word_embeddings, shared);
        const ckpt = await SafetensorsCheckpoint.open(out);
        const all: Record<string, Float32Array> = {};
        for (const n of ckpt.names) all[n] = await ckpt.readFloat32(n);
        ckpt.close();
        assert.equal("lm_head.weight" in all, !shared);
        if (!shared) assert.deepEqual(all["lm_head.weight"], m.weights.classifier);
        assert.deepEqual(
          halfRotationToInterleaved(all["model.layers.1.self_attn.k_proj.weight"], 2, 16),
          m.weights.wk.subarray(8 * 16, 2 * 8 * 16),
        );
        results.push(all);
      }
      assert.deepEqual(results[0], results[1]);
    }
  });
});

/** A tokenizer.bin of `n` tokens that are not llama2.c's layout (just for vocab-size checks). */
function smallTokenizer(n: number): Uint8Array {
  const enc = new TextEncoder();
  const pieces = Array.from(
    { length: n },
    (_, i) => enc.encode(i < 3 ? ["<unk>", "\n<s>\n", "\n</s>\n"][i] : `t${i}`),
  );
  const out = new Uint8Array(4 + pieces.reduce((s, p) => s + 8 + p.byteLength, 0));
  const dv = new DataView(out.buffer);
  dv.setInt32(0, 8, true);
  let o = 4;
  for (const p of pieces) {
    dv.setFloat32(o, 0, true);
    dv.setInt32(o + 4, p.byteLength, true);
    out.set(p, o + 8);
    o += 8 + p.byteLength;
  }
  return out;
}

Deno.test("llama2c: merges follow scores the way llama2.c's encoder does", () => {
  // " ab" (score 0) beats "ab" (-1); both splits of " ab" into pieces are merges.
  const tok = readLlama2cTokenizer(
    tokenizerBytes([[" ", -10], ["a", -11], ["b", -12], ["ab", -1], [" ab", 0], [" a", -5]]),
    265,
    "t.bin",
  );
  const json = llama2cTokenizerJson(tok) as { model: { merges: string[][]; vocab: Record<string, number> } };
  assert.deepEqual(json.model.merges, [["▁", "ab"], ["▁a", "b"], ["a", "b"], ["▁", "a"]]);
  assert.equal(json.model.vocab["▁ab"], 263);
  assert.equal(json.model.vocab["<0x41>"], 3 + 0x41);
  const hf = new Tokenizer(json, {});
  for (const text of ["ab", "abab a", "b a b", "ba"]) {
    assert.deepEqual(hf.encode(text).ids, [1, ...encodeLlama2c(tok, text)], text);
  }
  assert.deepEqual(encodeLlama2c(tok, "ab ab"), [263, 263]);
});

Deno.test("llama2c: malformed inputs give one-line errors naming the file; nothing is left behind", async () => {
  const m = tinyModel(true);
  const good = llama2cBytes(m.config, m.weights, 0);
  assert.throws(
    () => readLlama2cCheckpoint(good.subarray(0, good.byteLength - 4), "cut.bin"),
    (e) =>
      e instanceof Llama2cError &&
      /^cut\.bin: \d+ bytes, but the header \(dim=16 .*\) implies \d+$/.test(e.message),
  );
  const zero = good.slice();
  new DataView(zero.buffer).setInt32(12, 0, true);
  assert.throws(
    () => readLlama2cCheckpoint(zero, "z.bin"),
    /z\.bin: header n_heads = 0 is not a positive size/,
  );
  assert.throws(() => readLlama2cCheckpoint(new Uint8Array(10), "s.bin"), /s\.bin: 10 bytes, too short/);
  const tok = smallTokenizer(11);
  assert.throws(() => readLlama2cTokenizer(tok, 12, "tok.bin"), /tok\.bin: ends inside token 11/);
  assert.throws(() => readLlama2cTokenizer(tok, 10, "tok.bin"), /tok\.bin: \d+ bytes left after 10 tokens/);
  await withTempDir(async (tmp) => {
    const bin = join(tmp, "m.bin");
    Deno.writeFileSync(bin, good);
    Deno.writeFileSync(join(tmp, "bad-tok.bin"), tok.subarray(0, 30));
    await assert.rejects(
      () =>
        convertLlama2c({ checkpoint: bin, tokenizer: join(tmp, "bad-tok.bin"), outputDir: join(tmp, "out") }),
      /bad-tok\.bin: ends inside token/,
    );
    await assert.rejects(
      () =>
        convertLlama2c({
          checkpoint: join(tmp, "none.bin"),
          tokenizer: join(tmp, "bad-tok.bin"),
          outputDir: join(tmp, "out"),
        }),
      /none\.bin: no such file/,
    );
    assert.deepEqual([...Deno.readDirSync(tmp)].map((e) => e.name).sort(), ["bad-tok.bin", "m.bin"]);
    Deno.writeFileSync(join(tmp, "tok.bin"), tok);
    const opts = { checkpoint: bin, tokenizer: join(tmp, "tok.bin"), outputDir: join(tmp, "out") };
    await convertLlama2c(opts);
    await assert.rejects(() => convertLlama2c(opts), /out already exists \(pass --overwrite to replace it\)/);
    await convertLlama2c({ ...opts, overwrite: true });
    assert.deepEqual([...Deno.readDirSync(tmp)].map((e) => e.name).sort(), [
      "bad-tok.bin",
      "m.bin",
      "out",
      "tok.bin",
    ]);
  });
});

Deno.test({ name: "llama2c: the CLI prints help and one-line errors", ignore: !haveStories }, async () => {
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../tasks/convert_llama2c.ts", import.meta.url).pathname, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
  };
  const help = await run("--help");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--checkpoint <file>/);
  const bad = await run("--checkpoint", "/nonexistent.bin", "--tokenizer", "t", "--output-dir", "/tmp/x");
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr, "convert-llama2c: /nonexistent.bin: no such file\n");
  const missing = await run("--tokenizer", "t");
  assert.equal(missing.stderr, "convert-llama2c: missing --checkpoint, --output-dir (see --help)\n");
});
