/** train-online settings: flags, YAML (flat and sectioned), precedence, unknown keys, --help. */
import assert from "node:assert/strict";
import {
  checkMlpSavedDtype,
  parseTrainArgs,
  readYamlSettings,
  settingsToJson,
  TRAIN_OPTIONS,
  trainSettings,
  trainUsage,
} from "../../lib/train/config.ts";

const REQUIRED = ["--target-model-path", "t", "--train-data-path", "d.jsonl", "--output-dir", "out"];

function files(map: Record<string, string>) {
  return (path: string) => {
    if (!(path in map)) return Promise.reject(new Deno.errors.NotFound(path));
    return Promise.resolve(map[path]);
  };
}

Deno.test("config: defaults are SpecForge's (scripts/train_eagle3_online.py argparse)", async () => {
  const r = await parseTrainArgs(REQUIRED);
  assert.ok(!r.help);
  const s = r.settings;
  assert.equal(s.numEpochs, 10);
  assert.equal(s.batchSize, 1);
  assert.equal(s.learningRate, 1e-4);
  assert.equal(s.maxLength, 2048);
  assert.equal(s.warmupRatio, 0.015);
  assert.equal(s.maxGradNorm, 0.5);
  assert.equal(s.tttLength, 7);
  assert.equal(s.draftAccumulationSteps, 1);
  assert.equal(s.chatTemplate, "llama3");
  assert.equal(s.cacheDir, "./cache");
  assert.equal(s.logInterval, 50);
  assert.equal(s.evalInterval, 5000);
  assert.equal(s.saveInterval, 5000);
  assert.equal(s.seed, 0);
  assert.equal(s.embeddingKey, "model.embed_tokens.weight");
  assert.equal(s.exportDtype, "bf16");
  assert.equal(s.draftModelConfig, null);
  assert.equal(s.resume, false);
});

Deno.test("config: --draft-preset eagle3.1-lk by default, SpecForge's EAGLE-3 one setting away", async () => {
  const settings = async (...argv: string[]) => {
    const r = await parseTrainArgs([...REQUIRED, ...argv], files({ "run.yaml": "draft_preset: eagle3\n" }));
    assert.ok(!r.help);
    const { draftPreset, initHeadFromTarget, lkLossType } = r.settings;
    return { draftPreset, initHeadFromTarget, lkLossType };
  };
  const best = { draftPreset: "eagle3.1-lk", initHeadFromTarget: true, lkLossType: "lambda" };
  const plain = { draftPreset: "eagle3", initHeadFromTarget: false, lkLossType: "none" };
  assert.deepEqual(await settings(), best);
  assert.deepEqual(await settings("--draft-preset", "eagle3"), plain);
  assert.deepEqual(await settings("--config", "run.yaml"), plain);
  // What is set beside the preset wins over it, on either side.
  assert.deepEqual(await settings("--draft-preset", "eagle3", "--lk-loss-type", "alpha"), {
    ...plain,
    lkLossType: "alpha",
  });
  assert.deepEqual(await settings("--config", "run.yaml", "--init-head-from-target"), {
    ...plain,
    initHeadFromTarget: true,
  });
  assert.deepEqual(await settings("--no-init-head-from-target"), { ...best, initHeadFromTarget: false });
  const fromObject = trainSettings({
    targetModelPath: "t",
    trainDataPath: "d",
    outputDir: "o",
    draftPreset: "eagle3",
  });
  assert.deepEqual([fromObject.initHeadFromTarget, fromObject.lkLossType], [false, "none"]);
  const mixed = trainSettings({
    targetModelPath: "t",
    trainDataPath: "d",
    outputDir: "o",
    draftPreset: "eagle3",
    lkLossType: "lambda",
  });
  assert.deepEqual([mixed.initHeadFromTarget, mixed.lkLossType], [false, "lambda"]);
  await assert.rejects(
    () => settings("--draft-preset", "eagle4"),
    /--draft-preset must be one of eagle3\.1-lk, eagle3/,
  );
  assert.throws(
    () =>
      trainSettings({
        targetModelPath: "t",
        trainDataPath: "d",
        outputDir: "o",
        draftPreset: "x" as "eagle3",
      }),
    /draftPreset must be one of/,
  );
  assert.ok(
    trainUsage().replace(/\s+/g, " ").includes("(default: true; --no-init-head-from-target turns it off)"),
  );
});

Deno.test("config: YAML (sectioned, SpecForge names) with flags overriding it", async () => {
  const yaml = `
model:
  target_model_path: ../models/tiny
  aux_hidden_state_layer_ids: [0, 1, 1]
data:
  prompts_path: train.jsonl
  max_length: 128
training:
  num_epochs: 3
  batch_size: 4
  learning_rate: 0.001
  accumulation_steps: 2
  ttt_length: 7
output_dir: runs/a
`;
  const r = await parseTrainArgs(
    ["--config", "run.yaml", "--batch-size", "8", "--output-dir", "runs/b"],
    files({ "run.yaml": yaml }),
  );
  assert.ok(!r.help);
  const s = r.settings;
  assert.equal(s.targetModelPath, "../models/tiny");
  assert.deepEqual(s.auxLayers, [0, 1, 1]);
  assert.equal(s.trainDataPath, "train.jsonl");
  assert.equal(s.maxLength, 128);
  assert.equal(s.numEpochs, 3);
  assert.equal(s.batchSize, 8, "the flag wins over the file");
  assert.equal(s.learningRate, 1e-3);
  assert.equal(s.draftAccumulationSteps, 2);
  assert.equal(s.outputDir, "runs/b");
  assert.equal(r.configFile, "run.yaml");
});

Deno.test("config: flat YAML keys with underscores or dashes", () => {
  const m = readYamlSettings("target-model-path: a\nnum_epochs: 2\nis_preformatted: true\n", "f.yaml");
  assert.equal(m.get("target-model-path"), "a");
  assert.equal(m.get("num-epochs"), 2);
  assert.equal(m.get("is-preformatted"), true);
});

Deno.test("config: unknown keys, misplaced keys, bad values and missing settings are named", async () => {
  assert.throws(
    () => readYamlSettings("training:\n  num_epoch: 3\n", "run.yaml"),
    /run\.yaml: unknown setting 'training\.num_epoch'/,
  );
  assert.throws(() => readYamlSettings("lerning_rate: 1\n", "run.yaml"), /unknown setting 'lerning_rate'/);
  assert.throws(
    () => readYamlSettings("data:\n  num_epochs: 3\n", "run.yaml"),
    /'data\.num_epochs' belongs in section 'training'/,
  );
  assert.throws(
    () => readYamlSettings("training:\n  batch_size: four\n", "run.yaml"),
    /training\.batch_size must be a non-negative integer/,
  );
  assert.throws(() => readYamlSettings("a: [\n", "run.yaml"), /run\.yaml: not valid YAML/);
  await assert.rejects(
    () => parseTrainArgs(["--output-dir", "o", "--train-data-path", "d"]),
    /--target-model-path is required/,
  );
  await assert.rejects(
    () => parseTrainArgs([...REQUIRED, "--batch-size", "0"]),
    /--batch-size must be at least 1/,
  );
  await assert.rejects(
    () => parseTrainArgs([...REQUIRED, "--learning-rate", "fast"]),
    /--learning-rate must be a number/,
  );
  await assert.rejects(() => parseTrainArgs([...REQUIRED, "--no-such-flag"]), /no-such-flag/);
  await assert.rejects(() => parseTrainArgs([...REQUIRED, "--export-dtype", "fp8"]), /one of bf16, f16, f32/);
  await assert.rejects(() => parseTrainArgs([...REQUIRED, "--mlp-saved-dtype", "bf16"]), /one of f32, f16/);
  await assert.rejects(
    () => parseTrainArgs(["--config", "missing.yaml"], files({})),
    /config file not found: missing\.yaml/,
  );
});

Deno.test("config: --mlp-saved-dtype f16 needs an even intermediate_size", async () => {
  const cmd = await parseTrainArgs([...REQUIRED, "--mlp-saved-dtype", "f16"]);
  assert.ok(!cmd.help);
  assert.equal(cmd.settings.mlpSavedDtype, "f16");
  checkMlpSavedDtype(cmd.settings, 14336);
  assert.throws(
    () => checkMlpSavedDtype(cmd.settings, 1001),
    /--mlp-saved-dtype f16 needs an even intermediate_size \(f16 pairs\), the draft's is 1001/,
  );
  const f32 = await parseTrainArgs(REQUIRED);
  assert.ok(!f32.help);
  assert.equal(f32.settings.mlpSavedDtype, "f32");
  checkMlpSavedDtype(f32.settings, 1001);
});

Deno.test("config: --help lists every flag with its default", async () => {
  const r = await parseTrainArgs(["--help"]);
  assert.ok(r.help);
  const text = trainUsage();
  for (const flag of Object.keys(TRAIN_OPTIONS)) assert.ok(text.includes(`--${flag}`), flag);
  assert.ok(text.includes("(default: 0.015)"));
  assert.ok(text.includes("--config <file>"));
});

Deno.test("config: shipped draft configs and run configs parse", async () => {
  const { parseDraftConfig } = await import("../../lib/models/draft_config.ts");
  const dir = new URL("../../configs/", import.meta.url).pathname;
  const seen: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const text = await Deno.readTextFile(dir + e.name);
    if (e.name.endsWith(".json")) parseDraftConfig(JSON.parse(text), e.name);
    else if (e.name.endsWith(".yaml")) readYamlSettings(text, e.name);
    seen.push(e.name);
  }
  assert.ok(seen.includes("llama3-8B-eagle3.json") && seen.includes("tinystories-656K-eagle3.yaml"));
  const qwen25 = parseDraftConfig(JSON.parse(await Deno.readTextFile(dir + "qwen2.5-7b-eagle3.json")));
  assert.equal(qwen25.draftVocabSize, 16000);
  assert.equal(qwen25.headDim, 128);
  const llama70 = parseDraftConfig(JSON.parse(await Deno.readTextFile(dir + "llama3-70B-eagle3.json")));
  assert.equal(llama70.ropeScaling.type, "llama3");
  assert.equal(llama70.ropeTheta, 500000);
});

Deno.test("config: trainSettings takes a typed object, checked and filled like the command line", async () => {
  const fromObject = trainSettings({ targetModelPath: "t", trainDataPath: "d.jsonl", outputDir: "out" });
  const r = await parseTrainArgs(REQUIRED);
  assert.ok(!r.help);
  assert.deepEqual(fromObject, r.settings);
  assert.deepEqual(settingsToJson(fromObject), settingsToJson(r.settings));
  assert.equal(settingsToJson(fromObject).max_length, 2048);
  assert.throws(
    () => trainSettings({ targetModelPath: "t", trainDataPath: "d", outputDir: "o", batchSize: 0 }),
    /batchSize must be at least 1, got 0/,
  );
  assert.throws(
    () => trainSettings({ targetModelPath: "t", outputDir: "o" }),
    /--train-data-path is required/,
  );
  assert.throws(
    () => readYamlSettings("training:\n  warmup_ratio: 1.5\n", "run.yaml"),
    /run\.yaml: training\.warmup_ratio must be within \[0, 1\)/,
  );
});
