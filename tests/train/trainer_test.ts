/**
 * Online training end to end on a tiny random Llama target (tests/golden/targets/llama: 8 layers, hidden 32,
 * vocab 256): checkpoints and resume identity, metrics and plot, the SGLang export of each save, NaN stop,
 * bad input.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { TARGET, trainFixture, trainSettings } from "./fixtures.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";
import { TrainingDivergedError, trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { checkDraftExport } from "../../lib/models/export.ts";
import { CHECKPOINT_FILES, findLatestCheckpoint, loadCheckpoint } from "../../lib/train/checkpoint.ts";

const quiet = () => new ProgressPrinter(() => {}, false);

Deno.test(
  { name: "trainer: N updates straight == N/2, stop, resume (bit for bit)", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      // The full vocabulary: a random target's argmax rarely falls in a small draft vocab (no loss rows then).
      const a = await trainOnline(gpu!, {
        settings: await trainSettings(root, "straight"),
        hub,
        progress: quiet(),
      });
      assert.equal(a.updates, 8);
      const first = await trainOnline(gpu!, {
        settings: await trainSettings(root, "resumed", { maxNumSteps: 4 }),
        hub,
        progress: quiet(),
      });
      assert.equal(first.updates, 4);
      const b = await trainOnline(gpu!, {
        settings: await trainSettings(root, "resumed", { resume: true }),
        hub,
        progress: quiet(),
      });
      assert.equal(b.updates, 8);
      assert.equal(a.checkpoint, join(root, "straight", "epoch_1_step_8"));
      assert.equal(b.checkpoint, join(root, "resumed", "epoch_1_step_8"));
      for (const f of [CHECKPOINT_FILES.weights, CHECKPOINT_FILES.optimizer, CHECKPOINT_FILES.model]) {
        const x = await Deno.readFile(join(a.checkpoint!, f));
        const y = await Deno.readFile(join(b.checkpoint!, f));
        assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${f} identical`);
      }
      // Serving loaders glob *.safetensors: the servable weights are the checkpoint's only ones.
      for (const dir of [a.checkpoint!, b.checkpoint!]) {
        const top = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".safetensors"));
        assert.deepEqual(top, [CHECKPOINT_FILES.model], `${dir}: safetensors beside config.json`);
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
    const root = await trainFixture();
    try {
      // The full draft vocabulary, so that every batch has loss rows (with a small one, a random target's argmax
      // may miss it in a whole batch: then the loss stays finite and the gradient norm reports the NaN).
      const s = await trainSettings(root, "nan", { saveInterval: 2, evalInterval: 0 });
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
    const root = await trainFixture();
    try {
      const r = await trainOnline(gpu!, {
        settings: await trainSettings(root, "tau", {
          maxNumSteps: 4,
          evalSpecSamples: 2,
          evalSpecSteps: 2,
          evalSpecNewTokens: 5,
        }),
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
  const root = await trainFixture();
  try {
    const bad = {
      ...JSON.parse(await Deno.readTextFile(join(TARGET, "config.json"))),
      hidden_size: 64,
      head_dim: 16,
    };
    bad.architectures = ["LlamaForCausalLMEagle3"];
    bad.num_hidden_layers = 1;
    await Deno.writeTextFile(join(root, "draft.json"), JSON.stringify(bad));
    const run = async (extra: Partial<TrainSettingsInput>) =>
      trainOnline(gpu!, {
        settings: await trainSettings(root, "bad", extra),
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: quiet(),
      });
    await assert.rejects(
      () => run({ draftModelConfig: join(root, "draft.json") }),
      /hidden_size 64 does not match the target's hidden_size 32/,
    );
    await assert.rejects(
      () => run({ draftModelConfig: join(root, "nope.json") }),
      /nope\.json: no such file/,
    );
    await assert.rejects(
      () => run({ trainDataPath: join(root, "missing.jsonl") }),
      /data file not found: .*missing\.jsonl/,
    );
    await assert.rejects(() => run({ draftVocabSize: 300 }), /300.*256/);
    await assert.rejects(
      () => run({ resumeFrom: join(root, "nowhere") }),
      /nowhere.*training_state\.json: missing/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
