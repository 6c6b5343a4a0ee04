/** Dataset files, record validation (bad input names file and line) and the prepare-data conversions (SpecForge `scripts/prepare_data.py`). */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  convertDataset,
  type DatasetDownloader,
  datasetPreset,
  selectSplitFiles,
} from "../../lib/data/datasets.ts";
import { DataError } from "../../lib/data/errors.ts";
import { parseRecord, readRecords } from "../../lib/data/records.ts";
import { fixture, tempDir } from "./fixtures.ts";

async function collect(path: string) {
  const out = [];
  for await (const r of readRecords(path)) out.push(r);
  return out;
}

async function readJsonl(path: string): Promise<Record<string, unknown>[]> {
  return (await Deno.readTextFile(path)).trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

async function errorOf(f: () => Promise<unknown> | unknown): Promise<string> {
  try {
    await f();
  } catch (e) {
    assert.ok(e instanceof DataError, `expected a DataError, got ${e}`);
    assert.ok(!e.message.includes("\n"), "one-line message");
    return e.message;
  }
  throw new Error("expected an error");
}

Deno.test("readers: jsonl with line sources, json arrays, json lines in .json, parquet row groups", async () => {
  const jsonl = await collect(fixture("sharegpt.jsonl"));
  assert.equal(jsonl.length, 5);
  assert.ok(jsonl[2].source.endsWith("sharegpt.jsonl:3"));
  const dir = await tempDir();
  await Deno.writeTextFile(join(dir, "a.json"), JSON.stringify([{ text: "x" }, { text: "y" }]));
  const arr = await collect(join(dir, "a.json"));
  assert.deepEqual(arr.map((r) => r.value), [{ text: "x" }, { text: "y" }]);
  assert.ok(arr[1].source.endsWith("a.json record 2"));
  await Deno.writeTextFile(join(dir, "b.json"), '{"text": "x"}\n\n{"text": "y"}\n');
  assert.equal((await collect(join(dir, "b.json"))).length, 2);
  const pq = await collect(fixture("ultrachat.parquet"));
  assert.equal(pq.length, 4);
  assert.equal((pq[3].value as { prompt_id: string }).prompt_id, "p3");
  assert.ok(pq[3].source.endsWith("ultrachat.parquet row 3"));
  // int64 lists come back as BigInt and are accepted as token ids.
  const toks = (await collect(fixture("pretokenized.parquet"))).map((r) => parseRecord(r));
  assert.deepEqual(toks[0], { kind: "tokens", id: "t0", inputIds: [1, 2, 3, 4], lossMask: [0, 0, 1, 1] });
});

Deno.test("bad input: malformed lines, unknown roles, empty and assistant-only conversations, token records", async () => {
  const dir = await tempDir();
  const bad = join(dir, "bad.jsonl");
  await Deno.writeTextFile(bad, '{"conversations": []}\n\n{"conversations": [oops\n');
  let msg = await errorOf(() => collect(bad));
  assert.match(msg, /bad\.jsonl:3: malformed JSON/);
  const parse = (value: unknown) => () => parseRecord({ value, source: "d.jsonl:9", index: 8 });
  msg = await errorOf(
    parse({ conversations: [{ role: "user", content: "a" }, { role: "bot", content: "b" }] }),
  );
  assert.equal(msg, "d.jsonl:9: message 1 has unknown role 'bot' (expected system, user, assistant, tool)");
  assert.match(await errorOf(parse({ conversations: [] })), /^d\.jsonl:9: empty conversation$/);
  assert.match(
    await errorOf(parse({ conversations: [{ role: "assistant", content: "x" }] })),
    /d\.jsonl:9: conversation has no user message \(only assistant\)/,
  );
  assert.match(
    await errorOf(parse({ conversations: [{ role: "user" }] })),
    /message 0 \(user\) has no string content/,
  );
  assert.match(
    await errorOf(parse({ input_ids: [1, 2] })),
    /needs both input_ids and loss_mask; loss_mask is missing/,
  );
  assert.match(
    await errorOf(parse({ input_ids: [1, 2], loss_mask: [1] })),
    /input_ids has 2 tokens but loss_mask has 1/,
  );
  assert.match(
    await errorOf(parse({ input_ids: [1, 2], loss_mask: [1, 2] })),
    /loss_mask\[1\] must be 0 or 1, got 2/,
  );
  assert.match(
    await errorOf(parse({ input_ids: [1, "a"], loss_mask: [1, 1] })),
    /input_ids\[1\] must be an integer/,
  );
  assert.match(await errorOf(parse({ input_ids: [], loss_mask: [] })), /empty token sequence/);
  assert.match(
    await errorOf(parse({ foo: 1 })),
    /no "conversations", "text" or "input_ids"\+"loss_mask" field \(keys: foo\)/,
  );
  assert.match(await errorOf(parse([1])), /expected a JSON object, got an array/);
  assert.match(
    await errorOf(() => collect(join(dir, "missing.jsonl"))),
    /data file not found: .*missing\.jsonl/,
  );
  assert.match(await errorOf(() => collect(join(dir, "x.csv"))), /data file not found/);
  await Deno.writeTextFile(join(dir, "x.csv"), "a,b");
  assert.match(await errorOf(() => collect(join(dir, "x.csv"))), /unsupported data file extension '\.csv'/);
  // Accepted forms: ShareGPT keys, [[...]] token batches of one, tools as a JSON string.
  const ok = parseRecord({
    value: { conversations: [{ from: "human", value: "a" }], tools: "[]" },
    source: "s",
    index: 4,
  });
  assert.deepEqual(ok, {
    kind: "conversation",
    id: "4",
    conversations: [{ role: "user", content: "a" }],
    tools: [],
  });
  assert.deepEqual(parseRecord({ value: { input_ids: [[7]], loss_mask: [[true]] }, source: "s", index: 0 }), {
    kind: "tokens",
    id: "0",
    inputIds: [7],
    lossMask: [1],
  });
});

Deno.test("sharegpt: role mapping, unmapped speakers dropped and counted, ids as strings, empty rows dropped", async () => {
  const out = await tempDir();
  const logs: string[] = [];
  const r = await convertDataset({
    dataset: "sharegpt",
    inputs: [fixture("sharegpt.jsonl")],
    outputDir: out,
    log: (l) => logs.push(l),
  });
  assert.equal(r.rows, 5);
  assert.equal(r.train, 3);
  assert.equal(r.skippedMessages, 1, "the system message");
  assert.deepEqual(r.dropped, { "empty conversation": 1, "no user message": 1 });
  const rows = await readJsonl(join(out, "sharegpt_train.jsonl"));
  assert.deepEqual(rows[0], {
    id: "sg-0",
    conversations: [{ role: "user", content: "Hello" }, { role: "assistant", content: "Hi." }],
  });
  assert.deepEqual(rows[1].conversations, [
    { role: "user", content: "Capital of France?" },
    { role: "assistant", content: "Paris." },
    { role: "user", content: "And Italy?" },
    { role: "assistant", content: "Rome." },
  ]);
  assert.equal(rows[2].id, "7");
  assert.ok(logs.some((l) => l.includes("skipped 1 messages")));
  // A second run skips (SpecForge's behaviour) unless told to overwrite.
  const again = await convertDataset({
    dataset: "sharegpt",
    inputs: [fixture("sharegpt.jsonl")],
    outputDir: out,
  });
  assert.equal(again.skippedExisting, true);
  const entries = [...Deno.readDirSync(out)].map((e) => e.name);
  assert.deepEqual(entries, ["sharegpt_train.jsonl"], "no temporary files left");
});

Deno.test("ultrachat from parquet; --sample-size; --split-eval is a seeded 5 % split", async () => {
  const out = await tempDir();
  const r = await convertDataset({
    dataset: "ultrachat",
    inputs: [fixture("ultrachat.parquet")],
    outputDir: out,
    sampleSize: 3,
  });
  assert.equal(r.train, 3);
  const rows = await readJsonl(r.trainPath);
  assert.deepEqual(rows.map((x) => x.id), ["p0", "p1", "p2"]);
  assert.equal((rows[1].conversations as unknown[]).length, 4);

  const dir = await tempDir();
  const src = join(dir, "many.jsonl");
  const lines = Array.from(
    { length: 100 },
    (_, i) =>
      JSON.stringify({
        id: `r${i}`,
        conversations: [{ from: "human", value: `q${i}` }, { from: "gpt", value: `a${i}` }],
      }),
  );
  await Deno.writeTextFile(src, lines.join("\n") + "\n");
  const split = async (o: string) => {
    await convertDataset({ dataset: "sharegpt", inputs: [src], outputDir: o, splitEval: true });
    return [
      await readJsonl(join(o, "sharegpt_train.jsonl")),
      await readJsonl(join(o, "sharegpt_test.jsonl")),
    ];
  };
  const [train, test] = await split(await tempDir());
  assert.equal(test.length, 5);
  assert.equal(train.length, 95);
  const ids = new Set([...train, ...test].map((x) => x.id));
  assert.equal(ids.size, 100, "disjoint and complete");
  const [, test2] = await split(await tempDir());
  assert.deepEqual(test2.map((x) => x.id), test.map((x) => x.id), "same seed, same split");
});

Deno.test("custom: conversations validated, text and pre-tokenized records passed through", async () => {
  const out = await tempDir();
  const r = await convertDataset({ dataset: "custom", inputs: [fixture("custom.jsonl")], outputDir: out });
  assert.deepEqual(r.kinds, { conversation: 3, text: 1, tokens: 1 });
  const rows = await readJsonl(r.trainPath);
  assert.deepEqual(rows[3], {
    id: "c3",
    input_ids: [151644, 872, 198, 5050, 151645],
    loss_mask: [0, 0, 0, 1, 1],
  });
  const dir = await tempDir();
  await Deno.writeTextFile(
    join(dir, "c.jsonl"),
    '{"conversations": [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}]}\n',
  );
  const msg = await errorOf(() =>
    convertDataset({ dataset: "custom", inputs: [join(dir, "c.jsonl")], outputDir: out, overwrite: true })
  );
  assert.match(msg, /c\.jsonl:1: message 1 has unknown role 'narrator'/);
});

Deno.test("presets: converters of the instruction datasets and unknown/VLM names", async () => {
  const gsm = datasetPreset("gsm8k").convert({ question: "1+1?", answer: "2" }, 0, "s");
  assert.deepEqual(gsm.record && "conversations" in gsm.record ? gsm.record.conversations : null, [
    { role: "user", content: "1+1?" },
    { role: "assistant", content: "2" },
  ]);
  // id = md5(question + answer), as SpecForge.
  const { createHash } = await import("node:crypto");
  assert.equal(gsm.record?.id, createHash("md5").update("1+1?2").digest("hex"));
  const mq = datasetPreset("math_qa").convert({ Problem: "P", options: "a) 1", Rationale: "R" }, 0, "s");
  assert.equal(
    mq.record && "conversations" in mq.record ? mq.record.conversations[0].content : "",
    "P\na) 1",
  );
  assert.equal(
    datasetPreset("perfectblend").convert(
      { conversations: [{ from: "human", value: "a" }, { from: "gpt", value: "b" }] },
      12,
      "s",
    ).record?.id,
    "12",
  );
  assert.equal(datasetPreset("opc", { opcSubset: "all" }).hub.length, 3);
  const sciq = datasetPreset("sciq").convert(
    {
      question: "Q",
      correct_answer: "c",
      distractor1: "d1",
      distractor2: "d2",
      distractor3: "d3",
      support: "S",
    },
    0,
    "s",
  );
  const conv = sciq.record && "conversations" in sciq.record ? sciq.record.conversations : [];
  const label = conv[0].content.split("\n").find((l) => l.endsWith(") c"))![0];
  assert.equal(conv[1].content, `S\nanswer: ${label}) c`);
  assert.match(
    await errorOf(() =>
      datasetPreset("ultrachat").convert(
        { prompt_id: "x", messages: [{ role: "system", content: "s" }] },
        0,
        "f:1",
      )
    ),
    /f:1: message 0 has role 'system'/,
  );
  assert.match(
    await errorOf(() => datasetPreset("nope")),
    /unknown dataset 'nope'; known: ultrachat, sharegpt/,
  );
  assert.match(await errorOf(() => datasetPreset("allava4v")), /vision-language/);
});

Deno.test("hub inputs go through the injected downloader; without one the error says what to do", async () => {
  const out = await tempDir();
  const msg = await errorOf(() => convertDataset({ dataset: "ultrachat", outputDir: out }));
  assert.match(
    msg,
    /HuggingFaceH4\/ultrachat_200k' must be downloaded from the Hugging Face hub, but no hub downloader/,
  );
  const requested: string[] = [];
  const local: DatasetDownloader = {
    listFiles: (repo) => {
      assert.equal(repo, "HuggingFaceH4/ultrachat_200k");
      return Promise.resolve([
        "README.md",
        "data/test_sft-00000-of-00001.parquet",
        "data/train_sft-00000-of-00001.parquet",
      ]);
    },
    download: (_repo, path) => {
      requested.push(path);
      return Promise.resolve(fixture("ultrachat.parquet"));
    },
  };
  const r = await convertDataset({ dataset: "ultrachat", outputDir: out, downloader: local });
  assert.deepEqual(requested, ["data/train_sft-00000-of-00001.parquet"]);
  assert.equal(r.train, 4);
});

Deno.test("split file selection follows the hub's layouts", () => {
  const files = [
    "main/train-00000-of-00001.parquet",
    "main/test-00000-of-00001.parquet",
    "socratic/train-0.parquet",
  ];
  assert.deepEqual(selectSplitFiles(files, { repo: "openai/gsm8k", config: "main", split: "train" }), [
    files[0],
  ]);
  assert.deepEqual(selectSplitFiles(["train.jsonl", "test.jsonl"], { repo: "r", split: "train" }), [
    "train.jsonl",
  ]);
  assert.deepEqual(
    selectSplitFiles(["data/train/part-1.parquet", "data/train/part-0.parquet"], {
      repo: "r",
      split: "train",
    }),
    [
      "data/train/part-0.parquet",
      "data/train/part-1.parquet",
    ],
  );
  assert.throws(
    () => selectSplitFiles(["README.md"], { repo: "r", split: "train" }),
    /r: no files for split 'train'/,
  );
});
