/** Tokenized-dataset build and its cache: key inputs, reuse, stale and corrupt entries, atomic writes. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { buildKeyInputs, type BuildOptions, buildTokenizedDataset } from "../../lib/data/build.ts";
import { cacheKey, type CacheKeyInputs, canonicalJson, readCache } from "../../lib/data/cache.ts";
import { DataError } from "../../lib/data/errors.ts";
import { templates } from "../../lib/data/templates.ts";
import { loadTokenizer } from "../../lib/data/tokenizer.ts";
import {
  fixture,
  hasTinyStories,
  masked,
  QWEN3_DIR,
  tempDir,
  TINYSTORIES_DIR,
  tokenizer,
} from "./fixtures.ts";

async function options(cacheDir: string | null, dataPath = fixture("custom.jsonl")): Promise<BuildOptions> {
  return {
    dataPath,
    tokenizer: await tokenizer(QWEN3_DIR),
    templateName: "qwen3-instruct",
    template: templates.get("qwen3-instruct"),
    maxLength: 2048,
    cacheDir,
  };
}

Deno.test("build: every record kind, unsupervised samples dropped and counted", async () => {
  const r = await buildTokenizedDataset(await options(null));
  assert.equal(r.stats.records, 5);
  assert.equal(r.stats.droppedUnsupervised, 1, "c4 has no assistant turn");
  assert.deepEqual(r.dataset.ids, ["c0", "c1", "c2", "c3"]);
  assert.deepEqual(masked(r.dataset.sample(0).inputIds, r.dataset.sample(0).lossMask), [
    5050,
    829,
    374,
    1207,
    16948,
    17,
    13,
    151645,
    198,
  ]);
  assert.deepEqual([...r.dataset.sample(3).lossMask], [0, 0, 0, 1, 1]);
  assert.equal(r.stats.conversations, 3);
  assert.equal(r.stats.texts, 1);
  assert.equal(r.stats.pretokenized, 1);
  assert.equal(r.stats.systemFromData, 1);
  assert.equal(r.stats.supervisedTokens, r.dataset.supervisedTokens());
  assert.equal(r.cache.status, "built");
});

Deno.test("build: a single-token sample is dropped and counted (no next token to predict)", async () => {
  const dir = await tempDir();
  const data = join(dir, "short.jsonl");
  const rows = [
    { id: "one", input_ids: [5], loss_mask: [1] },
    { id: "two", input_ids: [5, 6], loss_mask: [1, 1] },
  ];
  await Deno.writeTextFile(data, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  const r = await buildTokenizedDataset(await options(null, data));
  assert.deepEqual(r.dataset.ids, ["two"]);
  assert.equal(r.stats.droppedUnsupervised, 1);
});

Deno.test("build: preformatted flag and token ids are checked", async () => {
  const o = await options(null);
  await assert.rejects(
    () => buildTokenizedDataset({ ...o, isPreformatted: true }),
    (e: Error) =>
      e instanceof DataError &&
      /custom\.jsonl:1: --is-preformatted expects \{"text": \.\.\.\} records/.test(e.message),
  );
  const dir = await tempDir();
  await Deno.writeTextFile(join(dir, "t.jsonl"), '{"input_ids": [1, 999999], "loss_mask": [1, 1]}\n');
  await assert.rejects(
    () => buildTokenizedDataset({ ...o, dataPath: join(dir, "t.jsonl") }),
    /t\.jsonl:1: input_ids\[1\] = 999999 is outside the tokenizer's vocabulary/,
  );
});

Deno.test("cache: written atomically, reused with a message, identical content", async () => {
  const dir = await tempDir();
  const logs: string[] = [];
  const o = { ...(await options(dir)), log: (l: string) => logs.push(l) };
  const first = await buildTokenizedDataset(o);
  assert.equal(first.cache.status, "built");
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [first.cache.path!.split("/").pop()]);
  const second = await buildTokenizedDataset(o);
  assert.equal(second.cache.status, "hit");
  assert.ok(logs.some((l) => l.startsWith("reusing preprocessed cache")));
  assert.deepEqual(second.dataset.ids, first.dataset.ids);
  assert.deepEqual(second.dataset.inputIds, first.dataset.inputIds);
  assert.deepEqual(second.dataset.lossMask, first.dataset.lossMask);
  assert.deepEqual(second.dataset.offsets, first.dataset.offsets);
  assert.deepEqual(second.stats, first.stats);
});

Deno.test("cache key changes with each input that changes the result", async () => {
  const dir = await tempDir();
  const data = join(dir, "d.jsonl");
  await Deno.copyFile(fixture("custom.jsonl"), data);
  const base = await buildKeyInputs(await options(null, data));
  const variants: Array<[string, CacheKeyInputs]> = [
    ["maxLength", { ...base, maxLength: 1024 }],
    ["isPreformatted", { ...base, isPreformatted: true }],
    ["trainOnlyLastTurn", { ...base, trainOnlyLastTurn: true }],
    ["minLossTokens", { ...base, minLossTokens: 2 }],
    ["template name", { ...base, template: { ...base.template, name: "qwen" } }],
    ["template definition", {
      ...base,
      template: { ...base.template, definition: { ...base.template.definition, ignoreTokens: [] } },
    }],
    ["tokenizer.json", { ...base, tokenizer: { ...base.tokenizer, tokenizerJson: "0".repeat(64) } }],
    ["tokenizer_config.json", { ...base, tokenizer: { ...base.tokenizer, tokenizerConfig: null } }],
    ["pipeline version", { ...base, pipelineVersion: base.pipelineVersion + 1 }],
  ];
  // The data file's content (not its path) is part of the key.
  await Deno.writeTextFile(data, "\n", { append: true });
  variants.push(["data content", await buildKeyInputs(await options(null, data))]);
  // A different chat template text (override) changes the tokenizer fingerprint.
  const qwenOverride = await loadTokenizer(QWEN3_DIR, { chatTemplate: "{{ messages[0].content }}" });
  variants.push(["chat template text", { ...base, tokenizer: qwenOverride.fingerprint }]);
  if (hasTinyStories()) {
    variants.push(["another model's tokenizer", {
      ...base,
      tokenizer: (await loadTokenizer(TINYSTORIES_DIR)).fingerprint,
    }]);
  } else {
    console.log(`cache key test: skipping the tinystories tokenizer variant (${TINYSTORIES_DIR} absent)`);
  }
  const keys = new Set([cacheKey(base)]);
  for (const [what, v] of variants) {
    const k = cacheKey(v);
    assert.ok(!keys.has(k), `key did not change with ${what}`);
    keys.add(k);
  }
  // Same content elsewhere: same key.
  const copy = join(dir, "copy.jsonl");
  await Deno.copyFile(fixture("custom.jsonl"), copy);
  assert.equal(cacheKey(await buildKeyInputs(await options(null, copy))), cacheKey(base));
  assert.equal(canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] }), '{"a":[{"c":3,"d":2}],"b":1}');
});

Deno.test("cache: corrupt entries (flipped byte, truncation, garbage) are detected and rebuilt", async () => {
  const dir = await tempDir();
  const logs: string[] = [];
  const o = { ...(await options(dir)), log: (l: string) => logs.push(l) };
  const built = await buildTokenizedDataset(o);
  const path = built.cache.path!;
  const good = await Deno.readFile(path);
  const inputs = await buildKeyInputs(o);
  const corruptions: Array<[string, Uint8Array, RegExp]> = [
    [
      "flipped body byte",
      (() => {
        const b = good.slice();
        b[b.length - 3] ^= 1;
        return b;
      })(),
      /checksum mismatch/,
    ],
    ["truncated", good.slice(0, good.length - 10), /truncated or padded/],
    ["garbage", new TextEncoder().encode("not a cache"), /bad magic/],
  ];
  for (const [what, bytes, reason] of corruptions) {
    await Deno.writeFile(path, bytes);
    const found = await readCache(dir, inputs);
    assert.equal(found.status, "corrupt", what);
    assert.match((found as { reason: string }).reason, reason, what);
    logs.length = 0;
    const again = await buildTokenizedDataset(o);
    assert.equal(again.cache.status, "built", what);
    assert.ok(logs.some((l) => l.startsWith(`rebuilding ${path}: cache entry corrupt`)), what);
    assert.deepEqual(await Deno.readFile(path), good, `${what}: rebuilt entry is identical`);
  }
});

Deno.test("cache: a named entry built from other inputs is stale, never reused", async () => {
  const dir = await tempDir();
  const logs: string[] = [];
  const o = { ...(await options(dir)), cacheName: "my-run", log: (l: string) => logs.push(l) };
  const first = await buildTokenizedDataset(o);
  assert.ok(first.cache.path!.endsWith("my-run.eaglet-tok"));
  // Same name, another model's template and max_length: SpecForge's cache_key would reuse the old entry.
  const other = await buildTokenizedDataset({
    ...o,
    templateName: "qwen",
    template: templates.get("qwen"),
    maxLength: 16,
  });
  assert.equal(other.cache.status, "built");
  assert.ok(
    logs.some((l) => /cache entry stale: entry was built with a different template, maxLength/.test(l)),
    logs.join("\n"),
  );
  assert.ok(other.dataset.sampleLength(0) <= 16);
  const inputs = await buildKeyInputs(o);
  await assert.rejects(() => readCache(dir, inputs, "../x"), DataError);
});
