/** The prepare-data and inspect-data tasks end to end: flags, one-line errors, outputs. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseSafetensors } from "../../lib/io/safetensors.ts";
import { fixture, QWEN3_DIR, repoPath, tempDir } from "./fixtures.ts";

async function run(task: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", repoPath(`tasks/${task}.ts`), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("prepare-data: --help lists every flag with its default; bad input is one line and exit 1", async () => {
  const help = await run("prepare_data", ["--help"]);
  assert.equal(help.code, 0);
  for (
    const flag of [
      "--dataset",
      "--input",
      "--output-path",
      "--split-eval",
      "--sample-size",
      "--tokenizer",
      "--chat-template",
      "--max-length",
      "--cache-dir",
      "--draft-vocab-size",
      "--vocab-mapping",
    ]
  ) {
    assert.ok(help.stdout.includes(flag), flag);
  }
  assert.ok(
    help.stdout.includes(
      "--max-length <value>\n      tokens kept per sample (right truncation) (default: 2048)",
    ),
  );
  const dir = await tempDir();
  await Deno.writeTextFile(
    join(dir, "bad.jsonl"),
    '{"id": 1, "conversations": [{"from": "human", "value": "a"}]}\n{"id": 2,\n',
  );
  const bad = await run("prepare_data", [
    "--dataset",
    "sharegpt",
    "--input",
    join(dir, "bad.jsonl"),
    "--output-path",
    dir,
  ]);
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
  assert.match(bad.stderr, /^prepare-data: .*bad\.jsonl:2: malformed JSON/);
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["bad.jsonl"], "nothing half-written");
});

Deno.test("prepare-data end to end: convert, tokenize into the cache, draft vocab; inspect-data --json", async () => {
  const dir = await tempDir();
  const args = [
    "--dataset",
    "sharegpt",
    "--input",
    fixture("sharegpt.jsonl"),
    "--output-path",
    dir,
    "--tokenizer",
    QWEN3_DIR,
    "--chat-template",
    "qwen3-instruct",
    "--cache-dir",
    join(dir, "cache"),
    "--draft-vocab-size",
    "16",
  ];
  const r = await run("prepare_data", args);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /sharegpt_train\.jsonl: 3 samples \(from 5 rows\)/);
  assert.match(r.stdout, /skipped 1 messages/);
  assert.match(r.stdout, /wrote preprocessed cache/);
  const { tensors } = parseSafetensors(await Deno.readFile(join(dir, "vocab_mapping.safetensors")), "vm");
  assert.deepEqual(tensors.get("d2t")!.shape, [16]);
  assert.deepEqual(tensors.get("t2d")!.shape, [151669]);
  const again = await run("prepare_data", args);
  assert.match(again.stdout, /reusing preprocessed cache/);

  const insp = await run("inspect_data", [
    "--input",
    join(dir, "sharegpt_train.jsonl"),
    "--tokenizer",
    QWEN3_DIR,
    "--chat-template",
    "qwen3-instruct",
    "--id",
    "sg-0",
    "--json",
    "--html",
    join(dir, "s.html"),
  ]);
  assert.equal(insp.code, 0, insp.stderr);
  const j = JSON.parse(insp.stdout);
  assert.equal(j.template, "qwen3-instruct");
  assert.equal(j.tokens.length, j.input_ids.length);
  assert.equal(j.tokens.filter((_: string, i: number) => j.loss_mask[i]).join(""), "Hi.<|im_end|>\n");
  const html = await Deno.readTextFile(join(dir, "s.html"));
  assert.ok(html.includes("qwen3-instruct") && html.includes('class="sup'));
  await Deno.writeTextFile(join(dir, "tokens.jsonl"), '{"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}\n');
  const pre = await run("inspect_data", [
    "--input",
    join(dir, "tokens.jsonl"),
    "--tokenizer",
    QWEN3_DIR,
    "--json",
  ]);
  assert.equal(pre.code, 0, pre.stderr);
  assert.equal(JSON.parse(pre.stdout).template, "none (pre-tokenized input_ids)", "no template was applied");
  const missing = await run("inspect_data", [
    "--input",
    join(dir, "sharegpt_train.jsonl"),
    "--tokenizer",
    join(dir, "nope"),
    "--chat-template",
    "qwen",
  ]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^inspect-data: tokenizer path .*nope does not exist\n$/);
});

Deno.test("prepare-data downloads a preset's split through lib/io/hub.ts (local HF_ENDPOINT)", async () => {
  const parquet = await Deno.readFile(fixture("ultrachat.parquet"));
  const requests: string[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    requests.push(path);
    if (path === "/api/datasets/HuggingFaceH4/ultrachat_200k/revision/main") {
      return Response.json({
        siblings: [
          "README.md",
          "data/test_sft-00000-of-00001.parquet",
          "data/train_sft-00000-of-00001.parquet",
        ]
          .map((rfilename) => ({ rfilename })),
      });
    }
    if (
      path === "/datasets/HuggingFaceH4/ultrachat_200k/resolve/main/data/train_sft-00000-of-00001.parquet"
    ) {
      return new Response(parquet, { headers: { etag: '"fixture"' } });
    }
    return new Response("not found", { status: 404 });
  });
  try {
    const dir = await tempDir();
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        repoPath("tasks/prepare_data.ts"),
        "--dataset",
        "ultrachat",
        "--output-path",
        join(dir, "out"),
      ],
      env: { HF_ENDPOINT: `http://127.0.0.1:${server.addr.port}`, EAGLET_CACHE: join(dir, "cache") },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(stdout, /ultrachat_train\.jsonl: 4 samples \(from 4 rows\)/);
    assert.ok(!requests.some((p) => p.includes("test_sft")), "only the train_sft split is fetched");
  } finally {
    await server.shutdown();
  }
});
