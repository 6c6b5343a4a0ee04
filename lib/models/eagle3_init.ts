/**
 * Initial weights of an EAGLE-3 draft beyond SpecForge's default ({@link initEagle3Weights}): the head taken
 * from the target. EAGLE-1/2 drafts reuse the target's lm_head outright (Li et al., arXiv 2401.15077 §4); an
 * EAGLE-3 draft trains its own head over the draft vocabulary, and starting it from the target's rows of that
 * vocabulary and the target's final norm starts the draft's predictions where the target's are.
 */
import { join } from "node:path";
import { SafetensorsCheckpoint, toFloat32 } from "../io/safetensors.ts";
import { ConfigError, loadTargetConfig, resolveWeightNames } from "./config.ts";
import type { DraftConfig } from "./draft_config.ts";
import { type Eagle3Weights, initEagle3Weights } from "./eagle3.ts";
import { normOffsetOf } from "./target.ts";

/** Rows of the target's lm_head read at once (about 64 MiB as f32 at H 4,096: a 128K vocabulary never is whole). */
const HEAD_ROWS_PER_READ = 4096;

/**
 * {@link initEagle3Weights}(cfg, seed) with `lm_head.weight` = the target's lm_head rows `draftToTarget` (the
 * draft vocabulary's target ids) and `norm.weight` = the target's final norm (as its forward applies it:
 * Gemma 3's 1 + w), read from the checkpoint in `targetDir` `rowsPerRead` rows at a time. The target's hidden
 * size must be the draft's.
 */
export async function initEagle3WeightsFromTargetHead(
  cfg: DraftConfig,
  seed: number,
  targetDir: string,
  draftToTarget: Int32Array,
  rowsPerRead = HEAD_ROWS_PER_READ,
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
    const byTarget = [...draftToTarget.keys()].sort((a, b) => draftToTarget[a] - draftToTarget[b]);
    for (let at = 0; at < byTarget.length;) {
      const start = draftToTarget[byTarget[at]];
      const end = Math.min(start + rowsPerRead, target.vocabSize);
      const rows = toFloat32(await ckpt.readRows(names.lmHead, start, end), `${targetDir}: ${names.lmHead}`);
      for (; at < byTarget.length && draftToTarget[byTarget[at]] < end; at++) {
        const t = draftToTarget[byTarget[at]] - start;
        head.set(rows.subarray(t * H, (t + 1) * H), byTarget[at] * H);
      }
    }
    weights.set("lm_head.weight", head);
    const norm = await ckpt.readFloat32(names.finalNorm), offset = normOffsetOf(target);
    weights.set("norm.weight", offset ? norm.map((w) => w + offset) : norm);
    return weights;
  } finally {
    ckpt.close();
  }
}
