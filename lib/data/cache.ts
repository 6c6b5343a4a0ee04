/**
 * Preprocessing cache (SpecForge `specforge/data/preprocessing.py` `build_eagle3_dataset`'s cache, reworked;
 * SpecForge's classic scripts are [C], its current runtime (`specforge train`) [H].)
 *
 * The key is the sha256 of a canonical JSON of EVERYTHING that changes the tokenized result: the data file's
 * content hash (not its path), the tokenizer.json and tokenizer_config.json hashes, the hash of the chat
 * template text actually rendered, the chat-template name and its full definition (headers, eot, system
 * prompt, parser, ignore tokens), max_length, the preformatted flag, train-only-last-turn, the minimum of
 * supervised tokens and the pipeline version. SpecForge's [C] key (`md5(path-max_length-template-model)`)
 * reused a cache across edited data files and tokenizers; here two models with different tokenizers or
 * templates cannot share an entry, and an edited file gets a new key.
 *
 * File `<cacheDir>/<key>.eaglet-tok`: magic `EAGLTOK1`, u32 LE header length, header JSON (key, the key
 * inputs, counts, sha256 of the body, sample ids, build stats), zero padding to 8 bytes, then the body:
 * offsets u32[n+1], input ids i32[T], loss mask u8[T]. Written to a temporary name and renamed. On load the
 * header's key and key inputs must equal the expected ones (else "stale") and the body must have the
 * recorded size and hash (else "corrupt"); either way the caller rebuilds and overwrites the entry.
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { DataError } from "./errors.ts";
import type { ChatTemplate } from "./templates.ts";
import { TokenizedDataset } from "./tokenized.ts";
import type { TokenizerFingerprint } from "./tokenizer.ts";

/** Bumped whenever preprocessing code changes what it produces, so old entries become unreachable (2: samples of a single token are dropped). */
export const PIPELINE_VERSION = 2;
const MAGIC = "EAGLTOK1";

/** Everything that determines a tokenized dataset. */
export interface CacheKeyInputs {
  /** {@link PIPELINE_VERSION} of the code that built it. */
  pipelineVersion: number;
  /** sha256 and byte size of the data file. */
  data: { sha256: string; bytes: number };
  /** The hashes of the tokenizer's files. */
  tokenizer: TokenizerFingerprint;
  /** The chat template's name and its whole definition. */
  template: { name: string; definition: ChatTemplate };
  /** Tokens kept per sample. */
  maxLength: number;
  /** Records are rendered text already. */
  isPreformatted: boolean;
  /** Only the last assistant turn is supervised. */
  trainOnlyLastTurn: boolean;
  /** Samples with fewer supervised tokens are dropped. */
  minLossTokens: number;
}

/** JSON with object keys sorted at every level (a canonical form to hash). */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

/** The cache key: hex sha256 of the canonical JSON of the inputs. */
export function cacheKey(inputs: CacheKeyInputs): string {
  return createHash("sha256").update(canonicalJson(inputs)).digest("hex");
}

/** sha256 (hex) and size of a file, streamed. */
export async function hashFile(path: string): Promise<{ sha256: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  using file = await Deno.open(path);
  for await (const chunk of file.readable) {
    h.update(chunk);
    bytes += chunk.byteLength;
  }
  return { sha256: h.digest("hex"), bytes };
}

/** Path of the entry named `name` (the key, unless the user named it) under `cacheDir`. */
export function cachePath(cacheDir: string, name: string): string {
  if (!/^[\w.-]+$/.test(name)) {
    throw new DataError(`cache name '${name}' may only hold letters, digits, '.', '_' and '-'`);
  }
  return join(cacheDir, `${name}.eaglet-tok`);
}

interface Header {
  magic: string;
  key: string;
  inputs: CacheKeyInputs;
  numSamples: number;
  numTokens: number;
  bodySha256: string;
  ids: string[];
  stats: Record<string, unknown>;
}

/** Serializes a dataset with its key (and build stats, returned on a hit). */
export function encodeCacheEntry(
  key: string,
  inputs: CacheKeyInputs,
  dataset: TokenizedDataset,
  stats: Record<string, unknown>,
): Uint8Array {
  const n = dataset.length;
  const t = dataset.numTokens;
  const bodyLen = 4 * (n + 1) + 4 * t + t;
  const body = new Uint8Array(bodyLen);
  const dv = new DataView(body.buffer);
  for (let i = 0; i <= n; i++) dv.setUint32(4 * i, dataset.offsets[i], true);
  const idBase = 4 * (n + 1);
  for (let i = 0; i < t; i++) dv.setInt32(idBase + 4 * i, dataset.inputIds[i], true);
  body.set(dataset.lossMask, idBase + 4 * t);
  const header: Header = {
    magic: MAGIC,
    key,
    inputs,
    numSamples: n,
    numTokens: t,
    bodySha256: createHash("sha256").update(body).digest("hex"),
    ids: dataset.ids,
    stats,
  };
  const headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const start = align8(8 + 4 + headerBytes.byteLength);
  const out = new Uint8Array(start + bodyLen);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, headerBytes.byteLength, true);
  out.set(headerBytes, 12);
  out.set(body, start);
  return out;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** Outcome of a cache lookup. */
export type CacheLookup =
  | { status: "hit"; path: string; dataset: TokenizedDataset; stats: Record<string, unknown> }
  | { status: "miss"; path: string }
  | { status: "stale" | "corrupt"; path: string; reason: string };

/** Parses an entry's bytes; `expected` are the key inputs the caller would build it from. */
export function decodeCacheEntry(
  bytes: Uint8Array,
  path: string,
  expectedKey: string,
  expected: CacheKeyInputs,
): CacheLookup {
  const corrupt = (reason: string): CacheLookup => ({ status: "corrupt", path, reason });
  if (bytes.byteLength < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    return corrupt("not an Eaglet tokenized-dataset file (bad magic)");
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = dv.getUint32(8, true);
  if (12 + headerLen > bytes.byteLength) return corrupt("truncated header");
  let header: Header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLen)));
  } catch {
    return corrupt("header is not valid JSON");
  }
  if (header.key !== expectedKey || canonicalJson(header.inputs) !== canonicalJson(expected)) {
    return { status: "stale", path, reason: describeStale(header.inputs, expected) };
  }
  const n = header.numSamples;
  const t = header.numTokens;
  const start = align8(12 + headerLen);
  const bodyLen = 4 * (n + 1) + 5 * t;
  if (!Array.isArray(header.ids) || header.ids.length !== n) {
    return corrupt("sample id list does not match the count");
  }
  if (bytes.byteLength !== start + bodyLen) {
    return corrupt(`body is ${bytes.byteLength - start} bytes, expected ${bodyLen} (truncated or padded)`);
  }
  const body = bytes.subarray(start);
  if (createHash("sha256").update(body).digest("hex") !== header.bodySha256) {
    return corrupt("body checksum mismatch");
  }
  const bdv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const offsets = new Uint32Array(n + 1);
  for (let i = 0; i <= n; i++) offsets[i] = bdv.getUint32(4 * i, true);
  const ids = new Int32Array(t);
  const idBase = 4 * (n + 1);
  for (let i = 0; i < t; i++) ids[i] = bdv.getInt32(idBase + 4 * i, true);
  const mask = body.slice(idBase + 4 * t);
  try {
    return {
      status: "hit",
      path,
      dataset: new TokenizedDataset(header.ids, offsets, ids, mask),
      stats: header.stats,
    };
  } catch (e) {
    return corrupt((e as Error).message);
  }
}

function describeStale(found: CacheKeyInputs | undefined, expected: CacheKeyInputs): string {
  if (!found || typeof found !== "object") return "entry has no key inputs";
  const diffs = Object.keys(expected).filter((k) =>
    canonicalJson((found as unknown as Record<string, unknown>)[k]) !==
      canonicalJson((expected as unknown as Record<string, unknown>)[k])
  );
  return diffs.length ? `entry was built with a different ${diffs.join(", ")}` : "entry key differs";
}

/**
 * Looks up the entry for `inputs` under `cacheDir`. `name` replaces the key as the file name (SpecForge's
 * `cache_key`); the inputs recorded inside are still compared, so a named entry built from other inputs is
 * reported stale instead of being silently reused.
 */
export async function readCache(
  cacheDir: string,
  inputs: CacheKeyInputs,
  name?: string,
): Promise<CacheLookup> {
  const key = cacheKey(inputs);
  const path = cachePath(cacheDir, name ?? key);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { status: "miss", path };
    throw e;
  }
  return decodeCacheEntry(bytes, path, key, inputs);
}

/** Writes the entry for `inputs` atomically (temporary file + rename) under its key or `name`; returns its path. */
export async function writeCache(
  cacheDir: string,
  inputs: CacheKeyInputs,
  dataset: TokenizedDataset,
  stats: Record<string, unknown>,
  name?: string,
): Promise<string> {
  const key = cacheKey(inputs);
  await Deno.mkdir(cacheDir, { recursive: true });
  const path = cachePath(cacheDir, name ?? key);
  await writeFileAtomic(path, encodeCacheEntry(key, inputs, dataset, stats));
  return path;
}
