/**
 * Online training end to end on a tiny random Llama target (tests/golden/targets/llama: 8 layers, hidden 32,
 * vocab 256): checkpoints and resume identity, metrics and plot, the SGLang export of each save, NaN stop,
 * bad input.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { parseTrainArgs, type TrainSettings } from "../../lib/train/config.ts";
import { TrainingDivergedError, trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { checkDraftExport } from "../../lib/io/export.ts";
import { findLatestCheckpoint, loadCheckpoint } from "../../lib/train/checkpoint.ts";

const TARGET = new URL("../golden/targets/llama/", import.meta.url).pathname;
const quiet = () => new ProgressPrinter(() => {}, false);

/** A temp dir with the target (config + weights), a word-level tokenizer.json and pre-tokenized data. */
async function fixture(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "eaglet-train-" });
  const target = join(root, "target");
  await Deno.mkdir(target);
  for (const f of ["config.json", "model.safetensors"]) await Deno.copyFile(join(TARGET, f), join(target, f));
  const vocab: Record<string, number> = {};
  for (let i = 0; i < 256; i++) vocab[`t${i}`] = i;
  await Deno.writeTextFile(
    join(target, "tokenizer.json"),
    JSON.stringify({
      version: "1.0",
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: { type: "Whitespace" },
      post_processor: null,
      decoder: null,
      model: { type: "WordLevel", vocab, unk_token: "t0" },
    }),
  );
  const r = rng(5);
  const rows = (n: number, offset: number) =>
    Array.from({ length: n }, (_, i) => {
      const len = (i + offset) % 3 === 0 ? 12 : 16; // two padded lengths: batches mix them
      const ids = Array.from({ length: len }, () => 3 + Math.floor(r() * 60));
      const mask = ids.map((_, t) => (t >= 4 && t !== 9 ? 1 : 0)); // a prompt, then a partial loss mask
      return JSON.stringify({ id: `s${offset + i}`, input_ids: ids, loss_mask: mask });
    }).join("\n") + "\n";
  await Deno.writeTextFile(join(root, "train.jsonl"), rows(8, 0));
  await Deno.writeTextFile(join(root, "eval.jsonl"), rows(3, 100));
  return root;
}

async function settings(root: string, out: string, extra: string[] = []): Promise<TrainSettings> {
  const r = await parseTrainArgs([
    "--target-model-path",
    join(root, "target"),
    "--train-data-path",
    join(root, "train.jsonl"),
    "--eval-data-path",
    join(root, "eval.jsonl"),
    "--output-dir",
    join(root, out),
    "--cache-dir",
    join(root, "cache"),
    "--chat-template",
    "llama3",
    "--batch-size",
    "2",
    "--num-epochs",
    "2",
    "--ttt-length",
    "3",
    "--learning-rate",
    "1e-2",
    "--log-interval",
    "1",
    "--eval-interval",
    "4",
    "--save-interval",
    "4",
    "--seed",
    "3",
    ...extra,
  ]);
  assert.ok(!r.help);
  return r.settings;
}

Deno.test(
  { name: "trainer: N updates straight == N/2, stop, resume (bit for bit)", ...needsGpu },
  async () => {
    const root = await fixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      // The full vocabulary: a random target's argmax rarely falls in a small draft vocab (no loss rows then).
      const a = await trainOnline(gpu!, {
        settings: await settings(root, "straight"),
        hub,
        progress: quiet(),
      });
      assert.equal(a.globalStep, 8);
      const first = await trainOnline(gpu!, {
        settings: await settings(root, "resumed", ["--max-num-steps", "4"]),
        hub,
        progress: quiet(),
      });
      assert.equal(first.globalStep, 4);
      const b = await trainOnline(gpu!, {
        settings: await settings(root, "resumed", ["--resume"]),
        hub,
        progress: quiet(),
      });
      assert.equal(b.globalStep, 8);
      assert.equal(a.checkpoint, join(root, "straight", "epoch_1_step_8"));
      assert.equal(b.checkpoint, join(root, "resumed", "epoch_1_step_8"));
      for (const f of ["training_weights.safetensors", "optimizer.safetensors", "model.safetensors"]) {
        const x = await Deno.readFile(join(a.checkpoint!, f));
        const y = await Deno.readFile(join(b.checkpoint!, f));
        assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${f} identical`);
      }
      const state = (await loadCheckpoint(b.checkpoint!)).state;
      assert.deepEqual(state.position, { epoch: 2, step: 0 });
      assert.equal(state.microSteps, 8);
      assert.equal(state.totalSteps, 8);
      // Each save is an SGLang directory; the metrics read as one run; the plot is there.
      const exp = await checkDraftExport(join(root, "resumed", "epoch_0_step_4"));
      assert.equal(exp.config.draftVocabSize, 256);
      assert.equal(
        exp.json.eagle_config,
        undefined,
        "aux layers [1, 3, 4] are SpecForge's default for 8 layers",
      );
      const lines = (await Deno.readTextFile(join(root, "resumed", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l));
      assert.deepEqual(lines.filter((l) => l.split === "train").map((l) => l.step), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.deepEqual(lines.filter((l) => l.split === "eval").map((l) => l.step), [4, 8]);
      const straight = (await Deno.readTextFile(join(root, "straight", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l));
      assert.deepEqual(
        lines.map((l) => l.loss),
        straight.map((l) => l.loss),
        "same losses straight and resumed",
      );
      assert.ok(
        lines.every((l) => Number.isFinite(l.loss) && l.acc_2 >= 0 && l.acc_2 <= 1 && "ploss_2" in l),
      );
      assert.ok(lines[7].loss < lines[0].loss, `loss falls (${lines[0].loss} → ${lines[7].loss})`);
      const svg = await Deno.readTextFile(join(root, "resumed", "training_curves.svg"));
      assert.ok(svg.includes("acc_2") && svg.includes("eval loss"));
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  { name: "trainer: a NaN loss stops the run and keeps the last good checkpoint", ...needsGpu },
  async () => {
    const root = await fixture();
    try {
      const s = await settings(root, "nan", [
        "--save-interval",
        "2",
        "--eval-interval",
        "0",
        "--draft-vocab-size",
        "48",
      ]);
      const err = await trainOnline(gpu!, {
        settings: s,
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: quiet(),
        hooks: {
          afterUpdate: (step, draft) => {
            if (step === 3) draft.params["norm.weight"].write(new Float32Array(32).fill(NaN));
          },
        },
      }).then(() => null, (e) => e);
      assert.ok(err instanceof TrainingDivergedError, String(err));
      assert.match(err.message, /loss is NaN or infinite by update 4/);
      assert.match(err.message, /last good checkpoint is .*epoch_0_step_2/);
      assert.equal(await findLatestCheckpoint(join(root, "nan")), join(root, "nan", "epoch_0_step_2"));
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  { name: "trainer: eval also measures tau by real speculative decoding when asked", ...needsGpu },
  async () => {
    const root = await fixture();
    try {
      const r = await trainOnline(gpu!, {
        settings: await settings(root, "tau", [
          "--max-num-steps",
          "4",
          "--eval-spec-samples",
          "2",
          "--eval-spec-steps",
          "2",
          "--eval-spec-new-tokens",
          "5",
        ]),
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: quiet(),
      });
      const tau = r.lastEval?.tau;
      assert.ok(tau !== undefined && tau >= 1 && tau <= 3, `tau ${tau} in [1, 1 + steps]`);
      const lines = (await Deno.readTextFile(join(root, "tau", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l));
      assert.equal(lines.filter((l) => l.split === "eval" && typeof l.tau === "number").length, 1);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test({ name: "trainer: bad input is named", ...needsGpu }, async () => {
  const root = await fixture();
  try {
    const bad = {
      ...JSON.parse(await Deno.readTextFile(join(TARGET, "config.json"))),
      hidden_size: 64,
      head_dim: 16,
    };
    bad.architectures = ["LlamaForCausalLMEagle3"];
    bad.num_hidden_layers = 1;
    await Deno.writeTextFile(join(root, "draft.json"), JSON.stringify(bad));
    const run = async (extra: string[]) =>
      trainOnline(gpu!, {
        settings: await settings(root, "bad", extra),
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: quiet(),
      });
    await assert.rejects(
      () => run(["--draft-model-config", join(root, "draft.json")]),
      /hidden_size 64 does not match the target's hidden_size 32/,
    );
    await assert.rejects(
      () => run(["--draft-model-config", join(root, "nope.json")]),
      /nope\.json: no such file/,
    );
    await assert.rejects(
      () => run(["--train-data-path", join(root, "missing.jsonl")]),
      /data file not found: .*missing\.jsonl/,
    );
    await assert.rejects(() => run(["--draft-vocab-size", "300"]), /300.*256/);
    await assert.rejects(
      () => run(["--resume-from", join(root, "nowhere")]),
      /nowhere.*training_state\.json: missing/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
