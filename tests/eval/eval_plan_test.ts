/**
 * The evaluation's memory plan (lib/eval/eval_plan.ts) against the buffer pool's measured peak of `eval` runs
 * on fresh devices: a random draft and a loaded one, a chain and a tree, with and without the speed runs, and
 * on a 32 KiB binding where the aux features are row blocks. What the tokens decide is planned at its largest
 * (every accept length's draft extension, a tree's compaction), so the plan is never under the peak and meets
 * it to a few of those small programs. `--dry-run` prints it and writes nothing; a device too small (its
 * memory, or a tensor over its binding size) stops the run before any weight is loaded, in one line naming the
 * largest part (or the tensor) and its flags.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { runMain } from "../reliability/run_main.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { evaluateDraft, planEvaluation } from "../../lib/eval/evaluate.ts";
import { evalSettings, type EvalSettingsInput } from "../../lib/eval/settings.ts";
import { loadTargetConfig } from "../../lib/models/config.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";
import { eagle3ParamShapes, initEagle3Weights } from "../../lib/models/eagle3.ts";
import { exportDraft, type NamedWeight } from "../../lib/models/export.ts";
import { main as evalMain } from "../../tasks/eval.ts";

const GOLDEN_LLAMA = new URL("../golden/targets/llama", import.meta.url).pathname;

/** Three prompts (70, 5 and 33 tokens: two cache lengths, the aux buffer of 128 rows). */
async function writePrompts(path: string): Promise<void> {
  const prompts = [70, 5, 33].map((
    n,
    i,
  ) => [1, ...Array.from({ length: n - 1 }, (_, j) => 3 + (j * 37 + i) % 200)]);
  await Deno.writeTextFile(path, prompts.map((p) => JSON.stringify({ input_ids: p })).join("\n") + "\n");
}

/** An Eaglet export of a seeded draft of the golden target with a 40-token draft vocabulary. */
async function writeDraft(dir: string): Promise<void> {
  const target = await loadTargetConfig(`${GOLDEN_LLAMA}/config.json`);
  const config = deriveDraftConfig(target, { draftVocabSize: 40, eagle31: true });
  const shapes = eagle3ParamShapes(config);
  const weights = new Map<string, NamedWeight>();
  for (const [name, values] of initEagle3Weights(config, 5)) {
    weights.set(name, { values, shape: shapes[name] });
  }
  const used = Int32Array.from({ length: 40 }, (_, i) => 5 + 3 * i);
  const d2t = BigInt64Array.from(used, (t, i) => BigInt(t - i));
  const t2d = new Uint8Array(target.vocabSize);
  for (const t of used) t2d[t] = 1;
  await exportDraft(dir, {
    config,
    weights,
    mapping: { draftVocabSize: 40, targetVocabSize: target.vocabSize, d2t, t2d, draftToTarget: used },
  }, { dtype: "bf16", overwrite: true });
}

Deno.test({ name: "eval memory plan: meets the measured peak", ...needsGpu }, async () => {
  const root = await Deno.makeTempDir();
  try {
    const dataPath = join(root, "prompts.jsonl");
    await writePrompts(dataPath);
    await writeDraft(join(root, "draft"));
    const base = { targetModelPath: GOLDEN_LLAMA, dataPath, maxNewTokens: 16 };
    const runs: Array<[string, Partial<EvalSettingsInput>, number]> = [
      ["random draft, chain, speeds", { draftModelPath: "random" }, 0],
      ["loaded EAGLE-3.1 draft, tree, no speeds", {
        draftModelPath: join(root, "draft"),
        topk: 2,
        numDraftTokens: 6,
        noSpeed: true,
      }, 0],
      ["random draft, chain, aux in row blocks (32 KiB binding)", { draftModelPath: "random" }, 32 * 1024],
    ];
    for (const [what, extra, cap] of runs) {
      const device = await Gpu.create(cap ? { capLimits: { maxStorageBufferBindingSize: cap } } : {});
      try {
        const s = evalSettings({
          ...base,
          ...extra,
          draftModelPath: extra.draftModelPath!,
          outputDir: join(root, "out"),
        });
        const ctx = { hub: { cacheDir: join(root, "hub"), offline: true } };
        const { plan } = await planEvaluation(device, s, ctx);
        assert.equal(device.pool.peakBytes, 0, "planning allocates nothing");
        await evaluateDraft(device, s, ctx);
        const peak = device.pool.peakBytes;
        console.log(`${what}: planned ${plan.peakBytes}, measured ${peak}`);
        assert.ok(plan.peakBytes >= peak, `${what}: planned ${plan.peakBytes} under the peak ${peak}`);
        assert.ok(
          plan.peakBytes - peak <= 0.1 * peak,
          `${what}: planned ${plan.peakBytes}, measured ${peak}`,
        );
        const sum = plan.categories.reduce((a, c) => a + c.bytes, 0);
        assert.equal(sum, plan.peakBytes, "the categories make up the peak");
      } finally {
        device.destroy();
        await Deno.remove(join(root, "out"), { recursive: true }).catch(() => {});
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "eval --dry-run prints the plan; a device too small stops before loading", ...needsGpu },
  async () => {
    const root = await Deno.makeTempDir();
    try {
      const dataPath = join(root, "prompts.jsonl"), out = join(root, "out");
      await writePrompts(dataPath);
      const args = [
        "--target-model-path",
        GOLDEN_LLAMA,
        "--draft-model-path",
        "random",
        "--data-path",
        dataPath,
        "--output-dir",
        out,
        "--max-new-tokens",
        "16",
      ];
      const dry = await runMain(evalMain, [...args, "--dry-run"]);
      assert.equal(dry.code, 0, dry.errors.join("\n"));
      const text = dry.output.join("\n");
      for (
        const part of [
          "target weights",
          "KV caches",
          "target aux features",
          "logits",
          "plain decoding",
          "peak",
        ]
      ) {
        assert.ok(text.includes(part), `the plan lists ${part}:\n${text}`);
      }
      assert.ok(text.includes("the evaluation fits"), text);
      assert.equal(await exists(out), false, "--dry-run made no output directory");

      const tight = await runMain(evalMain, [...args, "--device-memory", "1MiB"]);
      assert.equal(tight.code, 1);
      assert.equal(tight.errors.length, 1, tight.errors.join("\n"));
      assert.match(
        tight.errors[0],
        /memory plan: the run needs .* the device has 1\.0 MiB \(--device-memory\); the largest part is .* \(shrink it with --/,
      );
      assert.equal(await exists(join(out, "eval.json")), false, "nothing evaluated");
      // The library refuses it before allocating anything.
      const device = await Gpu.create();
      try {
        const s = evalSettings({
          targetModelPath: GOLDEN_LLAMA,
          draftModelPath: "random",
          dataPath,
          outputDir: out,
          deviceMemory: "1MiB",
        });
        await assert.rejects(
          () => evaluateDraft(device, s, { hub: { cacheDir: join(root, "hub"), offline: true } }),
          /memory plan: the run needs/,
        );
        assert.equal(device.pool.peakBytes, 0, "no weight was loaded");
      } finally {
        device.destroy();
      }
      // A 100-token prompt on a 24 KiB binding: the draft extension's causal mask [100, 100] u32 (39.1 KiB, the
      // largest of the tensors over it, with the MLP rows [100, 72] f32) cannot bind; refused by the plan before
      // loading, where the run would fail binding it after loading.
      const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: 24 * 1024 } });
      try {
        const long = join(root, "long.jsonl");
        await Deno.writeTextFile(
          long,
          JSON.stringify({ input_ids: Array.from({ length: 100 }, (_, j) => 3 + j) }),
        );
        const s = evalSettings({
          targetModelPath: GOLDEN_LLAMA,
          draftModelPath: "random",
          dataPath: long,
          outputDir: out,
        });
        await assert.rejects(
          () => evaluateDraft(small, s, { hub: { cacheDir: join(root, "hub"), offline: true } }),
          /memory plan: tensor mask needs 39\.1 KiB in one binding, over the device's maxStorageBufferBindingSize of 24\.0 KiB \(shrink it with --max-prompt-len/,
        );
        assert.equal(small.pool.peakBytes, 0, "no weight was loaded");
      } finally {
        small.destroy();
      }

      const bad = await runMain(evalMain, [...args, "--device-memory", "lots"]);
      assert.equal(bad.code, 1);
      assert.match(bad.errors[0], /--device-memory/);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
