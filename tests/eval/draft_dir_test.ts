import assert from "node:assert/strict";
import { gpu, needsGpu } from "../gpu.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";
import { initEagle3Weights } from "../../lib/models/eagle3.ts";
import type { TargetConfig } from "../../lib/models/config.ts";
import { loadTargetConfig } from "../../lib/models/config.ts";
import { exportDraft, type NamedWeight } from "../../lib/models/export.ts";
import { eagle3ParamShapes } from "../../lib/models/eagle3.ts";
import { roundBf16 } from "../../lib/tensor.ts";
import { loadDraftDirectory } from "../../lib/eval/draft_dir.ts";
import { ConfigError } from "../../lib/models/config.ts";

const GOLDEN_LLAMA = new URL("../golden/targets/llama", import.meta.url).pathname;

/** An Eaglet export of a seeded draft with a 40-token draft vocabulary (every 3rd target id from 5). */
async function writeExport(dir: string, target: TargetConfig, dtype: "bf16" | "f32") {
  const cfg = deriveDraftConfig(target, { draftVocabSize: 40 });
  const host = initEagle3Weights(cfg, 5);
  const shapes = eagle3ParamShapes(cfg);
  const weights = new Map<string, NamedWeight>();
  for (const [name, values] of host) {
    weights.set(name, { values, shape: shapes[name as keyof typeof shapes] });
  }
  const used = Int32Array.from({ length: 40 }, (_, i) => 5 + 3 * i);
  const d2t = BigInt64Array.from(used, (t, i) => BigInt(t - i));
  const t2d = new Uint8Array(target.vocabSize);
  for (const t of used) t2d[t] = 1;
  await exportDraft(dir, {
    config: cfg,
    weights,
    mapping: { draftVocabSize: 40, targetVocabSize: target.vocabSize, d2t, t2d, draftToTarget: used },
  }, { dtype, overwrite: true });
  return { host, used };
}

Deno.test(
  { name: "draft directories load in bf16 and f32 with d2t mapped as SGLang does", ...needsGpu },
  async () => {
    const target = await loadTargetConfig(`${GOLDEN_LLAMA}/config.json`);
    const root = await Deno.makeTempDir();
    try {
      for (const dtype of ["bf16", "f32"] as const) {
        const dir = `${root}/${dtype}`;
        const { host, used } = await writeExport(dir, target, dtype);
        const loaded = await loadDraftDirectory(gpu!, dir);
        assert.deepEqual(Array.from(loaded.draftToTarget), Array.from(used));
        assert.equal(loaded.storedDtype, dtype === "bf16" ? "BF16" : "F32");
        const fc = await loaded.draft.params["fc.weight"].readFloat();
        const want = host.get("fc.weight")!;
        for (let i = 0; i < fc.length; i += 97) {
          assert.equal(fc[i], dtype === "bf16" ? roundBf16(want[i]) : want[i]);
        }
        loaded.draft.destroy();
      }
      // A directory whose config names another architecture is refused, naming the file.
      const json = JSON.parse(await Deno.readTextFile(`${root}/f32/config.json`));
      await Deno.writeTextFile(
        `${root}/f32/config.json`,
        JSON.stringify({ ...json, architectures: ["LlamaForCausalLM"] }),
      );
      await assert.rejects(
        loadDraftDirectory(gpu!, `${root}/f32`),
        (e: Error) => e instanceof ConfigError && /config\.json.*architectures/.test(e.message),
      );
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
