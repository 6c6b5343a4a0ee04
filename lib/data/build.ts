/**
 * Builds the tokenized training set from a prepared data file (SpecForge `specforge/data/preprocessing.py`
 * `build_eagle3_dataset`): every record is tokenized with its loss mask (lib/data/preprocess.ts),
 * samples with fewer than `minLossTokens` supervised tokens are dropped and counted, and the result is
 * cached by content (lib/data/cache.ts): a second run with the same inputs reads the cache and says so.
 *
 * Differences from SpecForge, on purpose: samples keep file order (SpecForge shuffles with seed 42 before
 * tokenizing; the training loader shuffles anyway), and records are auto-detected per line (conversation,
 * preformatted text, pre-tokenized); `isPreformatted` then asserts that every record is text.
 */

import { type CacheKeyInputs, hashFile, PIPELINE_VERSION, readCache, writeCache } from "./cache.ts";
import { DataError } from "./errors.ts";
import { preprocessConversation, preprocessText } from "./preprocess.ts";
import { parseRecord, readRecords } from "./records.ts";
import type { ChatTemplate } from "./templates.ts";
import { type TokenizedDataset, TokenizedDatasetBuilder } from "./tokenized.ts";
import type { ChatTokenizer } from "./tokenizer.ts";

/** Options of `buildTokenizedDataset`. */
export interface BuildOptions {
  /** Prepared data file (.jsonl, .json or .parquet). */
  dataPath: string;
  /** Tokenizer (with its chat template) that renders and tokenizes conversations. */
  tokenizer: ChatTokenizer;
  /** Registered name of `template` (part of the cache key). */
  templateName: string;
  /**
   * Where supervised spans start and end (assistant header, end of turn), the default system prompt and the
   * parser.
   */
  template: ChatTemplate;
  /** Default 2048. */
  maxLength?: number;
  /** Every record must be preformatted text. */
  isPreformatted?: boolean;
  /** Supervise only the last assistant turn (`--train-only-last-turn`); default false. */
  trainOnlyLastTurn?: boolean;
  /** Samples with fewer supervised tokens are dropped (default 1, as SpecForge's EAGLE-3 provider). */
  minLossTokens?: number;
  /** Cache directory; null or absent disables the cache. */
  cacheDir?: string | null;
  /** A name for the cache entry instead of its key (inputs are still checked). */
  cacheName?: string;
  /** Progress and notices. */
  log?: (line: string) => void;
}

/** Counts of a build. */
export interface BuildStats {
  /** Records read from the file. */
  records: number;
  /** Samples kept. */
  samples: number;
  /** Samples dropped for having fewer than minLossTokens supervised tokens. */
  droppedUnsupervised: number;
  /** Samples cut at maxLength. */
  truncated: number;
  /** Tokens over the kept samples. */
  tokens: number;
  /** Supervised tokens (loss mask 1) over the kept samples. */
  supervisedTokens: number;
  /** Samples whose own system message replaced the template's system prompt. */
  systemFromData: number;
  /** Leading non-user messages dropped. */
  droppedLeadingMessages: number;
  /** Conversations cut at an alternation violation. */
  cutConversations: number;
  /** Conversation records. */
  conversations: number;
  /** Preformatted text records. */
  texts: number;
  /** Pre-tokenized (input_ids + loss_mask) records. */
  pretokenized: number;
}

/** Result of `buildTokenizedDataset`. */
export interface BuildResult {
  /** The tokenized samples (read from the cache or just built). */
  dataset: TokenizedDataset;
  /** Counts of the build (as when it was built, for a cache hit). */
  stats: BuildStats;
  /** "hit" when read from the cache; "built" otherwise (with why the cache was not used). */
  cache: { status: "hit" | "built"; path: string | null; reason?: string };
  /** What the result depends on (the cache key's inputs): the data file's hash, tokenizer, template, … */
  inputs: CacheKeyInputs;
}

/** The cache key inputs of a build. */
export async function buildKeyInputs(options: BuildOptions): Promise<CacheKeyInputs> {
  return {
    pipelineVersion: PIPELINE_VERSION,
    data: await hashFile(options.dataPath).catch((e) => {
      if (e instanceof Deno.errors.NotFound) throw new DataError(`data file not found: ${options.dataPath}`);
      throw e;
    }),
    tokenizer: options.tokenizer.fingerprint,
    template: { name: options.templateName, definition: options.template },
    maxLength: options.maxLength ?? 2048,
    isPreformatted: options.isPreformatted ?? false,
    trainOnlyLastTurn: options.trainOnlyLastTurn ?? false,
    minLossTokens: options.minLossTokens ?? 1,
  };
}

/** Tokenizes a prepared data file, through the cache when `cacheDir` is set. */
export async function buildTokenizedDataset(options: BuildOptions): Promise<BuildResult> {
  const log = options.log ?? (() => {});
  const maxLength = options.maxLength ?? 2048;
  if (!(Number.isInteger(maxLength) && maxLength > 0)) {
    throw new DataError(`max_length must be a positive integer, got ${maxLength}`);
  }
  const minLoss = options.minLossTokens ?? 1;
  const inputs = await buildKeyInputs(options);
  let reason = "cache disabled";
  if (options.cacheDir) {
    const found = await readCache(options.cacheDir, inputs, options.cacheName);
    if (found.status === "hit") {
      log(`reusing preprocessed cache ${found.path} (${found.dataset.length} samples)`);
      return {
        dataset: found.dataset,
        stats: found.stats as unknown as BuildStats,
        cache: { status: "hit", path: found.path },
        inputs,
      };
    }
    reason = found.status === "miss" ? "no cache entry" : `cache entry ${found.status}: ${found.reason}`;
    if (found.status !== "miss") log(`rebuilding ${found.path}: ${reason}`);
  }

  const stats: BuildStats = {
    records: 0,
    samples: 0,
    droppedUnsupervised: 0,
    truncated: 0,
    tokens: 0,
    supervisedTokens: 0,
    systemFromData: 0,
    droppedLeadingMessages: 0,
    cutConversations: 0,
    conversations: 0,
    texts: 0,
    pretokenized: 0,
  };
  const builder = new TokenizedDatasetBuilder();
  const harmony = options.template.parser === "openai-harmony";
  const opts = { maxLength, trainOnlyLastTurn: options.trainOnlyLastTurn };
  for await (const raw of readRecords(options.dataPath)) {
    const rec = parseRecord(raw, { harmonyRoles: harmony });
    stats.records++;
    if (options.isPreformatted && rec.kind !== "text") {
      throw new DataError(
        `${raw.source}: --is-preformatted expects {"text": ...} records, got a ${rec.kind} record`,
      );
    }
    let ids: ArrayLike<number>;
    let mask: ArrayLike<number>;
    let truncated: boolean;
    if (rec.kind === "tokens") {
      stats.pretokenized++;
      const bad = rec.inputIds.findIndex((t) => t >= options.tokenizer.vocabSize);
      if (bad >= 0) {
        throw new DataError(
          `${raw.source}: input_ids[${bad}] = ${
            rec.inputIds[bad]
          } is outside the tokenizer's vocabulary (${options.tokenizer.vocabSize})`,
        );
      }
      truncated = rec.inputIds.length > maxLength;
      ids = rec.inputIds.slice(0, maxLength);
      mask = rec.lossMask.slice(0, maxLength);
    } else {
      let sample;
      try {
        if (rec.kind === "text") {
          stats.texts++;
          sample = preprocessText(options.tokenizer, options.template, rec.text, opts);
        } else {
          stats.conversations++;
          sample = preprocessConversation(
            options.tokenizer,
            options.template,
            rec.conversations,
            opts,
            rec.tools,
          );
          if (sample.notes.systemFromData) stats.systemFromData++;
          stats.droppedLeadingMessages += sample.notes.droppedLeading;
          if (sample.notes.droppedAfterViolation > 0) stats.cutConversations++;
        }
      } catch (e) {
        if (e instanceof DataError) throw new DataError(`${raw.source}: ${e.message}`);
        throw e;
      }
      ids = sample.inputIds;
      mask = sample.lossMask;
      truncated = sample.truncated;
    }
    let supervised = 0;
    for (let i = 0; i < mask.length; i++) supervised += mask[i];
    // A single token has no next token to predict: after the shift of the targets (SpecForge
    // `specforge/utils.py` `padding(t, left=False)`) none of its rows carries loss.
    if (supervised < minLoss || ids.length < 2) {
      stats.droppedUnsupervised++;
      continue;
    }
    if (truncated) stats.truncated++;
    stats.samples++;
    stats.tokens += ids.length;
    stats.supervisedTokens += supervised;
    builder.add(rec.id, ids, mask);
    if (stats.records % 10000 === 0) log(`tokenized ${stats.records} records`);
  }
  if (stats.droppedUnsupervised > 0) {
    log(
      `dropped ${stats.droppedUnsupervised} of ${stats.records} samples with fewer than ${minLoss} supervised ` +
        "tokens or a single token",
    );
  }
  if (stats.cutConversations > 0) {
    log(`${stats.cutConversations} conversations were cut at a turn that broke user/assistant alternation`);
  }
  const dataset = builder.finish();
  let path: string | null = null;
  if (options.cacheDir) {
    path = await writeCache(
      options.cacheDir,
      inputs,
      dataset,
      stats as unknown as Record<string, unknown>,
      options.cacheName,
    );
    log(`wrote preprocessed cache ${path}`);
  }
  return { dataset, stats, cache: { status: "built", path, reason }, inputs };
}
