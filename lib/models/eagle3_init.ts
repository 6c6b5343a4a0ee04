/**
 * Initial weights of an EAGLE-3 draft beyond SpecForge's default ({@link initEagle3Weights}): the head taken
 * from the target. EAGLE-1/2 drafts reuse the target's lm_head outright (Li et al., arXiv 2401.15077 §4); an
 * EAGLE-3 draft trains its own head over the draft vocabulary, and starting it from the target's rows of that
 * vocabulary and the target's final norm starts the draft's predictions where the target's are.
 */
import { join } from "node:path";
import { SafetensorsCheckpoint } from "../io/safetensors.ts";
import { ConfigError, loadTargetConfig, resolveWeightNames } from "./config.ts";
import type { DraftConfig } from "./draft_config.ts";
import { type Eagle3Weights, initEagle3Weights } from "./eagle3.ts";

/**
 * {@link initEagle3Weights}(cfg, seed) with `lm_head.weight` = the target's lm_head rows `draftToTarget` (the
 * draft vocabulary's target ids) and `norm.weight` = the target's final norm, read from the checkpoint in
 * `targetDir`. The target's hidden size must be the draft's.
 */
export async function initEagle3WeightsFromTargetHead(
  cfg: DraftConfig,
  seed: number,
  targetDir: string,
  draftToTarget: Int32Array,
): Promise<Eagle3Weights> {
  const target = await loadTargetConfig(join(targetDir, "config.json"));
  if (target.hiddenSize !== cfg.hiddenSize) {
    throw new ConfigError(
      `the target's head cannot initialise the draft's: the target's hidden_size is ${target.hiddenSize}, the ` +
        `draft's ${cfg.hiddenSize}`,
    );
  }
  const weights = initEagle3Weights(cfg, seed);
  const ckpt = await SafetensorsCheckpoint.open(targetDir);
  try {
    const names = resolveWeightNames(target, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, targetDir);
    const H = cfg.hiddenSize, head = new Float32Array(draftToTarget.length * H);
    const lmHead = await ckpt.readFloat32(names.lmHead);
    draftToTarget.forEach((t, i) => head.set(lmHead.subarray(t * H, (t + 1) * H), i * H));
    weights.set("lm_head.weight", head);
    weights.set("norm.weight", await ckpt.readFloat32(names.finalNorm));
    return weights;
  } finally {
    ckpt.close();
  }
}
