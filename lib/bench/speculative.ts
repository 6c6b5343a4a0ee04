/**
 * Speed of speculative decoding against target-only decoding for tinystories-656K (skipped when absent):
 * new tokens per second after the prefill, greedy, for a chain (num_steps 3) and a tree (num_steps 3,
 * topk 2, 6 draft tokens), with the draft from `draftPath` (an export / SGLang directory) or, by default, a
 * randomly initialised one (tau ≈ 1: it measures the overhead of drafting and verifying). Each row's note
 * gives tau and the speed-up; `ms` is the mean time per new token.
 */
import type { Gpu } from "../gpu/device.ts";
import { TargetModel } from "../models/target.ts";
import { deriveDraftConfig } from "../models/draft_config.ts";
import { Eagle3Draft } from "../models/eagle3.ts";
import { loadDraftDirectory } from "../eval/draft_dir.ts";
import { runSpeculativeEval } from "../eval/speculative.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;

/** Options of {@link benchSpeculative}. */
export interface SpeculativeBenchOptions extends BenchOptions {
  /** A draft directory for tinystories-656K (default: a random draft). */
  draftPath?: string;
  /** Target directory (default tinystories-656K from ../shared). */
  targetPath?: string;
}

/** Rows: target-only and speculative tokens/s per configuration (see the module comment). */
export async function benchSpeculative(gpu: Gpu, opts: SpeculativeBenchOptions = {}): Promise<BenchRow[]> {
  const targetPath = opts.targetPath ?? TINYSTORIES;
  const present = await Deno.stat(`${targetPath}/model.safetensors`).then(() => true, () => false);
  if (!present) {
    console.error(`bench speculative: ${targetPath} is absent, skipped`);
    return [];
  }
  const loaded = opts.draftPath ? await loadDraftDirectory(gpu, opts.draftPath) : null;
  const target = await TargetModel.load(gpu, targetPath, {
    auxLayers: loaded?.config.auxLayerIds ?? undefined,
    onMessage: () => {},
  });
  const draft = loaded?.draft ??
    Eagle3Draft.create(gpu, deriveDraftConfig(target.config, { auxLayers: target.auxLayers }), { seed: 0 });
  const map = loaded?.draftToTarget ?? Int32Array.from({ length: draft.config.draftVocabSize }, (_, i) => i);
  const prompts = opts.quick ? [[1]] : [[1], [1, 403, 407, 261], [1, 1078, 1079]];
  const maxNewTokens = opts.quick ? 24 : 64;
  const rows: BenchRow[] = [];
  try {
    const configs = [
      { label: "chain", numSteps: 3, topk: 1 },
      { label: "tree", numSteps: 3, topk: 2, numDraftTokens: 6 },
    ];
    for (const c of configs) {
      const r = await runSpeculativeEval(target, draft, prompts, {
        ...c,
        maxNewTokens,
        eosTokenIds: [],
        draftToTarget: map,
        measureSpeed: true,
      });
      const draftName = opts.draftPath ? "given draft" : "random draft";
      const shape = `${prompts.length}×${maxNewTokens} tokens`;
      rows.push({
        group: "speculative",
        name: "tinystories-656K target only (greedy)",
        shape,
        ms: 1000 / r.targetTokensPerSecond!,
        tokensPerSec: r.targetTokensPerSecond!,
      }, {
        group: "speculative",
        name: `tinystories-656K + ${draftName}, ${c.label} (steps ${c.numSteps}, topk ${c.topk})`,
        shape,
        ms: 1000 / r.speculativeTokensPerSecond!,
        tokensPerSec: r.speculativeTokensPerSecond!,
        note: `tau ${r.stats.tau.toFixed(3)}, speed-up ×${r.speedup!.toFixed(2)}, ` +
          `outputs ${r.matchesTargetGreedy ? "equal" : "DIFFER from"} target greedy`,
      });
    }
  } finally {
    draft.destroy();
    target.destroy();
  }
  return rows;
}
