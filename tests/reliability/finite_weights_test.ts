/**
 * Reliability: a NaN or infinite weight is an error naming the file and the tensor wherever a checkpoint is
 * loaded (the target for generate, training and prepare-hidden-states; a draft for eval; `export --check`),
 * instead of token 0 forever or a "successful" run.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { NonFiniteWeightError } from "../../lib/models/finite_weights.ts";
import { checkDraftExport, exportDraft } from "../../lib/models/export.ts";
import { loadDraftDirectory } from "../../lib/eval/draft_dir.ts";
import { main as exportMain } from "../../tasks/export.ts";
import { TARGET, tinyExport } from "../train/fixtures.ts";
import { poisonTensor } from "./poison.ts";
import { runMain } from "./run_main.ts";

/** A copy of the tiny golden Llama target in a temp dir. */
async function targetCopy(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-finite-" });
  for (const f of ["config.json", "model.safetensors"]) await Deno.copyFile(join(TARGET, f), join(dir, f));
  return dir;
}

Deno.test({
  name: "a target with a NaN or Inf weight does not load: the file and tensor are named",
  ...needsGpu,
}, async () => {
  const dir = await targetCopy();
  try {
    const file = join(dir, "model.safetensors");
    await poisonTensor(file, "model.layers.1.mlp.down_proj.weight", "inf", 5);
    await poisonTensor(file, "model.norm.weight", "nan");
    await assert.rejects(TargetModel.load(gpu!, dir), (e: Error) => {
      assert.ok(e instanceof NonFiniteWeightError, String(e));
      assert.equal(
        e.message,
        `${file}: target tensor model.layers.1.mlp.down_proj.weight has 1 NaN or infinite values of ` +
          `${32 * 72}; 1 more tensors too (model.norm.weight, …)`,
      );
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test(
  { name: "generate on a target with a NaN weight exits 1 with one line naming it", ...needsGpu },
  async () => {
    const dir = await targetCopy();
    try {
      await poisonTensor(join(dir, "model.safetensors"), "model.embed_tokens.weight", "nan", 77);
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "tasks/generate.ts",
          "--model-path",
          dir,
          "--prompt-ids",
          "1",
          "--max-new-tokens",
          "2",
        ],
        cwd: new URL("../../", import.meta.url).pathname,
        env: { NODEVICE_SELECT: "1" },
      }).output();
      const stderr = new TextDecoder().decode(out.stderr).trim().split("\n");
      assert.equal(out.code, 1);
      assert.match(
        stderr.at(-1)!,
        /model\.safetensors: target tensor model\.embed_tokens\.weight\[0:\d+\] has 1 NaN/,
      );
      assert.ok(!stderr.some((l) => /^\s+at /.test(l)), "no stack trace");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test({
  name: "a draft with a NaN weight: eval's loader and export --check refuse it by name",
  ...needsGpu,
}, async () => {
  const root = await Deno.makeTempDir({ prefix: "eaglet-finite-" });
  try {
    const dir = join(root, "draft");
    await exportDraft(dir, tinyExport(), { dtype: "bf16" });
    const file = join(dir, "model.safetensors");
    await poisonTensor(file, "midlayer.self_attn.o_proj.weight", "nan", 3);
    const message = `${file}: draft tensor midlayer.self_attn.o_proj.weight has 1 NaN or infinite values`;
    await assert.rejects(loadDraftDirectory(gpu!, dir), (e: Error) => e.message.startsWith(message));
    await assert.rejects(
      checkDraftExport(dir),
      (e: Error) => e instanceof NonFiniteWeightError && e.message === message,
    );
    const r = await runMain(exportMain, ["--check", dir]);
    assert.equal(r.code, 1);
    assert.deepEqual(r.errors, [`export: ${message}`]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
