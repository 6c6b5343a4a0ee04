/**
 * Self-distilled training data: text the target wrote itself, the data that trains the best drafts
 * (SpecForge's `regenerate_train_data.py`, SpecForge issue #192). Each sample is an opening
 * the target samples from its BOS token (temperature 1, one seeded stream per sample, so samples differ),
 * then the target's greedy continuation of that opening; the loss covers the continuation only. Samples are
 * pre-tokenized records `{"id", "input_ids", "loss_mask"}` that lib/data reads as they are.
 *
 * This is the data of the tinystories learning check: 16-token openings (BOS + 15 sampled tokens), 112
 * greedy tokens, loss on those 112.
 */
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { TargetModel } from "../models/target.ts";
import { generate } from "../models/generate.ts";
import { writeFileAtomic } from "../io/atomic.ts";

/** Options of {@link selfDistilledSamples}. */
export interface SelfDistillOptions {
  /** Samples to make. */
  count: number;
  /** Tokens of the opening, BOS included (default 16). */
  openingTokens?: number;
  /** Greedy tokens after the opening (default 112). */
  continuationTokens?: number;
  /** Seed of the openings' sampling streams (default 0); sample i uses stream i of it. */
  seed?: number;
  /** Temperature of the openings (default 1). */
  temperature?: number;
  /** Prompts per generation batch (default 25). */
  batch?: number;
  /** Called after each batch with the samples made so far. */
  onProgress?: (done: number) => void;
}

/** One pre-tokenized sample. */
export interface SelfDistilledSample {
  /** "selfdistill-<n>", n the sample's index. */
  id: string;
  /** BOS, the sampled opening, then the greedy continuation (openingTokens + continuationTokens ids). */
  input_ids: number[];
  /** 0 for each opening token, 1 for each continuation token. */
  loss_mask: number[];
}

/**
 * Makes `count` samples with `model`: each opening is BOS + (openingTokens − 1) sampled tokens, then
 * continuationTokens greedy tokens (end-of-sequence tokens do not stop it, so every sample has the same
 * length). loss_mask is 0 on the opening, 1 on the continuation.
 */
export async function selfDistilledSamples(
  model: TargetModel,
  o: SelfDistillOptions,
): Promise<SelfDistilledSample[]> {
  const opening = o.openingTokens ?? 16, cont = o.continuationTokens ?? 112, batch = o.batch ?? 25;
  const bos = model.config.bosTokenId;
  if (bos === null) {
    throw new Error(`${model.dir}: config.json has no bos_token_id to start the openings from`);
  }
  const out: SelfDistilledSample[] = [];
  for (let i0 = 0; i0 < o.count; i0 += batch) {
    const n = Math.min(batch, o.count - i0);
    // Sampling streams are per prompt index within a call; seed each batch apart so that streams never repeat.
    const openings = await generate(model, Array.from({ length: n }, () => [bos]), {
      maxNewTokens: opening - 1,
      temperature: o.temperature ?? 1,
      seed: ((o.seed ?? 0) * 1000003 + i0) >>> 0,
      eosTokenIds: [],
    });
    const prompts = openings.map((g) => [bos, ...g]);
    const greedy = await generate(model, prompts, { maxNewTokens: cont, temperature: 0, eosTokenIds: [] });
    for (let j = 0; j < n; j++) {
      out.push({
        id: `selfdistill-${i0 + j}`,
        input_ids: [...prompts[j], ...greedy[j]],
        loss_mask: [...new Array(opening).fill(0), ...new Array(cont).fill(1)],
      });
    }
    o.onProgress?.(out.length);
  }
  return out;
}

/** Writes samples as JSON lines, atomically. */
export async function writeJsonl(path: string, rows: readonly unknown[]): Promise<void> {
  await writeFileAtomic(path, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}

/** Options of {@link writeSelfDistilledSplit}: the samples' shape and where the files go. */
export interface SelfDistilledSplitOptions extends Omit<SelfDistillOptions, "count"> {
  /** Training samples (the first ones made). */
  trainSamples: number;
  /** Held-out samples (the rest). */
  evalSamples: number;
  /** Directory of train.jsonl, eval.jsonl and eval_prompts.jsonl (created if needed). */
  outputDir: string;
}

/** The files {@link writeSelfDistilledSplit} wrote, and every sample in order (training ones first). */
export interface SelfDistilledSplit {
  /** The pre-tokenized training samples, as train-online reads them. */
  trainJsonl: string;
  /** The held-out samples, same form (eval loss and `deno task eval` prompts from their loss masks). */
  evalJsonl: string;
  /** The held-out openings alone, `{"id", "input_ids"}`: prompts for `deno task eval`. */
  evalPromptsJsonl: string;
  /** All samples, the training ones first. */
  samples: SelfDistilledSample[];
}

/**
 * Loads the target in `targetDir`, makes trainSamples + evalSamples samples with {@link selfDistilledSamples}
 * and writes the train / held-out split (the demo's step 1 and examples/tinystories_selfdistill.ts).
 */
export async function writeSelfDistilledSplit(
  gpu: Gpu,
  targetDir: string,
  o: SelfDistilledSplitOptions,
): Promise<SelfDistilledSplit> {
  const model = await TargetModel.load(gpu, targetDir);
  let samples;
  try {
    samples = await selfDistilledSamples(model, { ...o, count: o.trainSamples + o.evalSamples });
  } finally {
    model.destroy();
  }
  const opening = o.openingTokens ?? 16;
  const held = samples.slice(o.trainSamples);
  await Deno.mkdir(o.outputDir, { recursive: true });
  const files = {
    trainJsonl: join(o.outputDir, "train.jsonl"),
    evalJsonl: join(o.outputDir, "eval.jsonl"),
    evalPromptsJsonl: join(o.outputDir, "eval_prompts.jsonl"),
  };
  await writeJsonl(files.trainJsonl, samples.slice(0, o.trainSamples));
  await writeJsonl(files.evalJsonl, held);
  await writeJsonl(
    files.evalPromptsJsonl,
    held.map((s) => ({ id: s.id, input_ids: s.input_ids.slice(0, opening) })),
  );
  return { ...files, samples };
}
