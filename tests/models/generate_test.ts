import assert from "node:assert/strict";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { argmax, generate, Generator, groupByLength, selectToken } from "../../lib/models/generate.ts";
import { convertLlama2c } from "../../lib/models/llama2c.ts";

const SHARED = new URL("../../../shared/models/", import.meta.url).pathname;
const TINYSTORIES = `${SHARED}tinystories-656K`;
const STORIES260K = `${SHARED}stories260K`;
const GOLDEN_LLAMA = new URL("../golden/targets/llama", import.meta.url).pathname;

/** The greedy ids a SOURCE.md lists after "Generated ids" / "shows the 64 generated ids" (its first code block of ids). */
async function sourceIds(dir: string): Promise<number[]> {
  const text = await Deno.readTextFile(`${dir}/SOURCE.md`);
  const block = [...text.matchAll(/```\n([\d\s]+)```/g)].map((m) => m[1]).find((b) => b.trim().length > 0);
  assert.ok(block, `${dir}/SOURCE.md: no block of ids`);
  return block.trim().split(/\s+/).map(Number);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

const haveTinystories = await exists(`${TINYSTORIES}/model.safetensors`);
const haveStories260K = await exists(`${STORIES260K}/stories260K.bin`);
if (!haveTinystories) console.warn(`skipping tinystories generation tests: ${TINYSTORIES} is absent`);
if (!haveStories260K) console.warn(`skipping stories260K generation test: ${STORIES260K} is absent`);

Deno.test("selectToken: greedy is the lowest index of the max", () => {
  assert.equal(argmax([1, 3, 3, -1]), 1);
  assert.equal(selectToken([0.5, 2, 2], { temperature: 0, topP: 0.1 }, () => 0.99), 1);
});

Deno.test("selectToken: temperature scales the logits before the draw", () => {
  // p = softmax([0, ln 3] / t): t = 1 → [0.25, 0.75]; t = 2 → [1, √3] / (1 + √3) ≈ [0.366, 0.634].
  const logits = [0, Math.log(3)];
  assert.equal(selectToken(logits, { temperature: 1, topP: 1 }, () => 0.3), 1);
  assert.equal(selectToken(logits, { temperature: 2, topP: 1 }, () => 0.3), 0);
  assert.equal(selectToken(logits, { temperature: 2, topP: 1 }, () => 0.37), 1);
});

Deno.test("selectToken: top-p keeps the smallest nucleus reaching the mass, renormalised", () => {
  // Tokens by probability: 2 (0.5), 0 (0.3), 3 (0.15), 1 (0.05). top_p 0.75 keeps {2, 0} (mass 0.8), as
  // TopPLogitsWarper does (ascending cumulative 0.05, 0.2 ≤ 0.25 are dropped).
  const logits = [0.3, 0.05, 0.5, 0.15].map(Math.log);
  const opts = { temperature: 1, topP: 0.75 };
  // u = r · 0.8 over the kept tokens in order 2 (0.5), 0 (0.3).
  assert.equal(selectToken(logits, opts, () => 0.6), 2); // 0.48 < 0.5
  assert.equal(selectToken(logits, opts, () => 0.7), 0); // 0.56 ≥ 0.5
  assert.equal(selectToken(logits, opts, () => 0.9999), 0); // never 3 or 1
  // Without filtering the tail is reachable: order 0, 1, 2, 3 (index order), cumulative 0.3, 0.35, 0.85, 1.
  assert.equal(selectToken(logits, { temperature: 1, topP: 1 }, () => 0.32), 1);
  assert.equal(selectToken(logits, { temperature: 1, topP: 1 }, () => 0.9), 3);
  // A tiny nucleus is the single most probable token, whatever the draw.
  assert.equal(selectToken(logits, { temperature: 1, topP: 1e-9 }, () => 0.9999), 2);
});

Deno.test("groupByLength: equal-length prompts share a group, in order of first appearance", () => {
  assert.deepEqual(groupByLength([[1, 2], [3], [4, 5], [6]]), [[0, 2], [1, 3]]);
});

Deno.test({
  name: "generate: tinystories-656K greedy from BOS gives SOURCE.md's ids (first 59), with and without cache",
  ...needsGpu,
  ignore: needsGpu.ignore || !haveTinystories,
}, async () => {
  const want = (await sourceIds(TINYSTORIES)).slice(0, 59); // SOURCE.md: the top-2 gap is 0.0014 at 59
  const model = await TargetModel.load(gpu!, TINYSTORIES, { onMessage: () => {} });
  try {
    const streamed: number[] = [];
    const [cached] = await generate(model, [[1]], {
      maxNewTokens: 59,
      onToken: (i, t) => {
        assert.equal(i, 0);
        streamed.push(t);
      },
    });
    assert.deepEqual(cached, want);
    assert.deepEqual(streamed, want);
    const [uncached] = await generate(model, [[1]], { maxNewTokens: 59, useCache: false });
    assert.deepEqual(uncached, want);

    // Mixed prompt lengths in one call: the cached path runs one batch per length, the uncached one a
    // right-padded batch; both continue each prompt as it would be continued alone.
    const prompts = [[1, 80, 147, 201, 282, 57], [1, 147, 201], [1, 147, 201, 282, 215, 286]];
    const batchCached = await generate(model, prompts, { maxNewTokens: 12 });
    assert.deepEqual(await generate(model, prompts, { maxNewTokens: 12, useCache: false }), batchCached);
    assert.deepEqual(batchCached[2], want.slice(5, 17));
  } finally {
    model.destroy();
  }
});

Deno.test({
  name: "generate: converted stories260K greedy from BOS gives SOURCE.md's 64 ids",
  ...needsGpu,
  ignore: needsGpu.ignore || !haveStories260K,
}, async () => {
  const want = await sourceIds(STORIES260K);
  assert.equal(want.length, 64);
  const tmp = await Deno.makeTempDir({ prefix: "eaglet-generate-" });
  try {
    const outputDir = `${tmp}/stories260K`;
    await convertLlama2c({
      checkpoint: `${STORIES260K}/stories260K.bin`,
      tokenizer: `${STORIES260K}/tok512.bin`,
      outputDir,
    });
    const model = await TargetModel.load(gpu!, outputDir, { onMessage: () => {} });
    try {
      // BOS = 1 is the prompt (run.c's), and its 64 ids hold no EOS.
      assert.deepEqual((await generate(model, [[1]], { maxNewTokens: 64 }))[0], want);
    } finally {
      model.destroy();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/** Two prompts of length 6 and one of length 4 over the golden llama's 256-token vocabulary. */
function goldenPrompts(): number[][] {
  const r = rng(11);
  const prompt = (n: number) => Array.from({ length: n }, () => 3 + Math.floor(r() * 250));
  return [prompt(6), prompt(4), prompt(6)];
}

Deno.test({
  name:
    "generate: KV cache equals full recomputation (golden llama, mixed prompt lengths, greedy and sampled)",
  ...needsGpu,
}, async () => {
  const model = await TargetModel.load(gpu!, GOLDEN_LLAMA, { auxLayers: [1, 3, 4] });
  const g = new Generator(model);
  try {
    const prompts = goldenPrompts();
    const base = { maxNewTokens: 8, eosTokenIds: [] };
    const cached = await g.generate(prompts, base);
    const uncached = await g.generate(prompts, { ...base, useCache: false });
    assert.deepEqual(cached, uncached);
    assert.ok(cached.every((s) => s.length === 8));
    // Each prompt alone gives what it gives in the batch.
    for (let i = 0; i < prompts.length; i++) {
      assert.deepEqual((await g.generate([prompts[i]], base))[0], cached[i], `prompt ${i} alone`);
    }
    const sampled = { ...base, temperature: 1.5, topP: 0.95, seed: 3 };
    assert.deepEqual(
      await g.generate(prompts, sampled),
      await g.generate(prompts, { ...sampled, useCache: false }),
    );
  } finally {
    g.destroy();
    model.destroy();
  }
});

Deno.test({
  name: "generate: seeded sampling is reproducible, top-p 1e-9 is greedy, EOS stops and is kept",
  ...needsGpu,
}, async () => {
  const model = await TargetModel.load(gpu!, GOLDEN_LLAMA, { auxLayers: [1, 3, 4] });
  const g = new Generator(model);
  try {
    const prompts = goldenPrompts();
    const base = { maxNewTokens: 8, eosTokenIds: [] };
    const sampled = { ...base, temperature: 1, seed: 7 };
    const a = await g.generate(prompts, sampled);
    assert.deepEqual(await g.generate(prompts, sampled), a);
    assert.notDeepEqual(await g.generate(prompts, { ...sampled, seed: 8 }), a);
    const greedy = await g.generate(prompts, base);
    assert.notDeepEqual(a, greedy);
    assert.deepEqual(await g.generate(prompts, { ...sampled, topP: 1e-9 }), greedy);

    // Declare the EOS a token that first appears after step 0 of some greedy continuation: that sequence
    // stops right after it (EOS kept), the others at their first occurrence of it, if any.
    const found = greedy.flatMap((seq, i) =>
      seq.map((t, k) => ({ i, k, t })).filter(({ k, t }) =>
        k >= 1 && !seq.slice(0, k).includes(t)
      )
    )[0];
    assert.ok(found, "every greedy continuation repeats one token");
    const stopped = await g.generate(prompts, { ...base, eosTokenIds: [found.t] });
    stopped.forEach((s, i) => {
      const at = greedy[i].indexOf(found.t);
      assert.deepEqual(s, at < 0 ? greedy[i] : greedy[i].slice(0, at + 1), `prompt ${i}`);
    });
    assert.equal(stopped[found.i].length, found.k + 1);
    assert.deepEqual(await g.generate(prompts, { ...base, maxNewTokens: 0 }), [[], [], []]);
    await assert.rejects(() => g.generate([[]], base), /prompt 0 is empty/);
    await assert.rejects(() => g.generate([[300]], base), /outside the vocabulary/);
    await assert.rejects(() => g.generate([[1]], { ...base, temperature: 1, topP: 0 }), /topP/);
  } finally {
    g.destroy();
    model.destroy();
  }
});

Deno.test({
  name: "generate task: --prompt-ids and --prompt end to end on tinystories-656K, one-line errors",
  ...needsGpu,
  ignore: needsGpu.ignore || !haveTinystories,
}, async () => {
  const task = new URL("../../tasks/generate.ts", import.meta.url).pathname;
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", task, ...args],
      env: { NODEVICE_SELECT: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  const want = await sourceIds(TINYSTORIES);
  const ids = await run("--model-path", TINYSTORIES, "--prompt-ids", "1", "--max-new-tokens", "12", "--json");
  assert.equal(ids.code, 0, ids.stderr);
  const j = JSON.parse(ids.stdout);
  assert.deepEqual(j.prompt_ids, [1]);
  assert.deepEqual(j.generated_ids, want.slice(0, 12));
  assert.match(j.text, /^Once upon a time, there was a little girl named Lily/);

  // The tokenizer's post-processor prepends BOS (SOURCE.md gives this encoding).
  const text = await run(
    "--model-path",
    TINYSTORIES,
    "--prompt",
    "Once upon a time",
    "--max-new-tokens",
    "4",
  );
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^Once upon a time/);
  const json = await run(
    "--model-path",
    TINYSTORIES,
    "--prompt",
    "Once upon a time",
    "--max-new-tokens",
    "4",
    "--json",
  );
  assert.deepEqual(JSON.parse(json.stdout).prompt_ids, [1, 80, 147, 201, 282, 57]);
  assert.equal(JSON.parse(json.stdout).generated_ids.length, 4);

  const bad = await run("--model-path", TINYSTORIES, "--prompt-ids", "1,99999");
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^generate: .*99999.*\n$/);
  const missing = await run("--model-path", "/no/such/dir", "--prompt-ids", "1");
  assert.equal(missing.code, 1);
  assert.equal(missing.stderr.trim().split("\n").length, 1);
});
