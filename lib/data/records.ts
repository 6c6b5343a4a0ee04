/**
 * Reading dataset files and validating their records.
 *
 * Files: `.jsonl`/`.ndjson` (one JSON object a line; blank lines skipped), `.json` (a JSON array of objects,
 * or JSON lines as Hugging Face's json loader also accepts) and `.parquet` (npm:hyparquet, read one row
 * group at a time). Each record comes with its source (`file:line`, `file record N`, `file row N`) so that
 * every error names where the bad input is.
 *
 * Record kinds Eaglet trains on (the three SpecForge's current version accepts):
 * - conversation: `{"id", "conversations": [{"role", "content"}, ...], "tools"?}` (ShareGPT `from/value`
 *   keys and human/gpt roles are accepted and normalized later);
 * - text: `{"id"?, "text": "<already rendered by the chat template>"}` (`--is-preformatted`);
 * - tokens: `{"id"?, "input_ids": [...], "loss_mask": [...]}` (pre-tokenized, e.g. self-distilled data).
 */

import { type AsyncBuffer, parquetMetadataAsync, parquetReadObjects } from "../npm.ts";
import { extname } from "node:path";
import { DataError, type RecordSource } from "./errors.ts";
import type { Message } from "./preprocess.ts";
import { oneLine, printable } from "../io/printable.ts";

/** A raw record and where it came from. */
export interface RawRecord {
  value: unknown;
  source: RecordSource;
  /** 0-based position in the file. */
  index: number;
}

/** A validated conversation sample. */
export interface ConversationRecord {
  /** Discriminant: a chat conversation. */
  kind: "conversation";
  /** The record's `id` field as a string, or its 0-based position in the file when absent. */
  id: string;
  /**
   * The messages in order, roles normalized (human → user, gpt → assistant, ShareGPT `from/value` →
   * `role/content`).
   */
  conversations: Message[];
  /**
   * Tool schemas given to the chat template as `tools` (a JSON string in the file is parsed), when present.
   */
  tools?: unknown[];
}

/** A preformatted (already chat-template-rendered) sample. */
export interface TextRecord {
  /** Discriminant: text already rendered by the chat template. */
  kind: "text";
  /** The record's `id` field as a string, or its 0-based position in the file when absent. */
  id: string;
  /** The rendered text, tokenized as is. */
  text: string;
}

/** A pre-tokenized sample. */
export interface TokensRecord {
  /** Discriminant: pre-tokenized ids with their loss mask. */
  kind: "tokens";
  /** The record's `id` field as a string, or its 0-based position in the file when absent. */
  id: string;
  /** Token ids (`input_ids`). */
  inputIds: number[];
  /** `loss_mask`, one 0/1 per token of inputIds: 1 where the token is supervised. */
  lossMask: number[];
}

/** Any validated sample. */
export type DataRecord = ConversationRecord | TextRecord | TokensRecord;

/** Roles of a conversation (after human → user, gpt → assistant). */
export const CONVERSATION_ROLES = ["system", "user", "assistant", "tool"] as const;
/** Extra roles of gpt-oss (harmony) conversations, as SpecForge's HarmonyParser reads them. */
export const HARMONY_ROLES = [
  "assistant_reasoning_effort",
  "assistant_analysis",
  "assistant_commentary",
  "assistant_final",
] as const;

function fileAsyncBuffer(file: Deno.FsFile, size: number): AsyncBuffer {
  return {
    byteLength: size,
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = end ?? size;
      const out = new Uint8Array(stop - start);
      await file.seek(start, Deno.SeekMode.Start);
      let got = 0;
      while (got < out.byteLength) {
        const n = await file.read(out.subarray(got));
        if (n === null) throw new DataError(`unexpected end of file at byte ${start + got}`);
        got += n;
      }
      return out.buffer;
    },
  };
}

/** A value from a record, for a one-line message (numbers as JavaScript writes them: 1e400 is Infinity). */
function shownValue(v: unknown): string {
  return oneLine(typeof v === "number" ? String(v) : String(JSON.stringify(v)));
}

function jsonLineError(path: string, line: number, e: unknown): DataError {
  return new DataError(`${path}:${line}: malformed JSON (${oneLine((e as Error).message)})`);
}

async function* readJsonLines(path: string, text: string | null): AsyncGenerator<RawRecord> {
  let index = 0;
  let lineNo = 0;
  const handle = (line: string): RawRecord | null => {
    lineNo++;
    if (line.trim() === "") return null;
    try {
      return { value: JSON.parse(line), source: `${path}:${lineNo}`, index: index++ };
    } catch (e) {
      throw jsonLineError(path, lineNo, e);
    }
  };
  if (text !== null) {
    for (const line of text.split("\n")) {
      const r = handle(line);
      if (r) yield r;
    }
    return;
  }
  using file = await Deno.open(path);
  let rest = "";
  for await (const chunk of file.readable.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) !== -1) {
      const r = handle(rest.slice(0, nl));
      rest = rest.slice(nl + 1);
      if (r) yield r;
    }
  }
  const r = handle(rest);
  if (r) yield r;
}

async function* readParquet(path: string): AsyncGenerator<RawRecord> {
  using file = await Deno.open(path);
  const size = (await file.stat()).size;
  const buffer = fileAsyncBuffer(file, size);
  let metadata;
  try {
    metadata = await parquetMetadataAsync(buffer);
  } catch (e) {
    throw new DataError(`${path}: not a readable parquet file (${(e as Error).message})`);
  }
  let rowStart = 0;
  for (const group of metadata.row_groups) {
    const rowEnd = rowStart + Number(group.num_rows);
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({ file: buffer, metadata, rowStart, rowEnd });
    } catch (e) {
      throw new DataError(`${path} rows ${rowStart}-${rowEnd - 1}: cannot decode (${(e as Error).message})`);
    }
    for (let i = 0; i < rows.length; i++) {
      yield { value: rows[i], source: `${path} row ${rowStart + i}`, index: rowStart + i };
    }
    rowStart = rowEnd;
  }
}

/**
 * The records of a `.jsonl`, `.json` or `.parquet` file, in file order, each with its source. Throws
 * DataError naming the file (and line) for a missing file, malformed JSON or an unknown extension.
 */
export async function* readRecords(path: string): AsyncGenerator<RawRecord> {
  const ext = extname(path).toLowerCase();
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`data file not found: ${path}`);
    throw e;
  }
  if (ext === ".parquet") {
    yield* readParquet(path);
  } else if (ext === ".jsonl" || ext === ".ndjson") {
    yield* readJsonLines(path, null);
  } else if (ext === ".json") {
    const text = await Deno.readTextFile(path);
    if (text.trimStart().startsWith("[")) {
      let arr: unknown;
      try {
        arr = JSON.parse(text);
      } catch (e) {
        throw new DataError(`${path}: malformed JSON array (${oneLine((e as Error).message)})`);
      }
      const list = arr as unknown[];
      for (let i = 0; i < list.length; i++) {
        yield { value: list[i], source: `${path} record ${i + 1}`, index: i };
      }
    } else {
      yield* readJsonLines(path, text);
    }
  } else {
    throw new DataError(
      `${path}: unsupported data file extension '${ext}' (expected .jsonl, .json or .parquet)`,
    );
  }
}

function asInt(v: unknown): number | null {
  if (typeof v === "bigint") return Number(v);
  if (typeof v === "number" && Number.isInteger(v)) return v;
  return null;
}

function intSequence(value: unknown, field: string, source: string, binary: boolean): number[] {
  let seq = value;
  if (ArrayBuffer.isView(seq)) seq = Array.from(seq as unknown as ArrayLike<number>);
  if (!Array.isArray(seq)) throw new DataError(`${source}: field ${field} must be a list of integers`);
  // SpecForge accepts a [[...]] batch of one.
  if (seq.length === 1 && Array.isArray(seq[0])) seq = seq[0];
  const list = seq as unknown[];
  const out = new Array<number>(list.length);
  for (let i = 0; i < list.length; i++) {
    const n = typeof list[i] === "boolean" && binary ? (list[i] ? 1 : 0) : asInt(list[i]);
    if (n === null) {
      throw new DataError(`${source}: ${field}[${i}] must be an integer, got ${shownValue(list[i])}`);
    }
    if (binary && n !== 0 && n !== 1) {
      throw new DataError(`${source}: ${field}[${i}] must be 0 or 1, got ${n}`);
    }
    if (!binary && n < 0) throw new DataError(`${source}: ${field}[${i}] is a negative token id (${n})`);
    out[i] = n;
  }
  return out;
}

/** Options of `parseRecord`. */
export interface ParseRecordOptions {
  /** Also accept gpt-oss harmony roles (assistant_final, ...). */
  harmonyRoles?: boolean;
}

/**
 * Validates one raw record into a DataRecord; throws DataError naming `source` for: not an object,
 * input_ids without loss_mask (or the reverse), lengths that differ, non-integer ids, masks not 0/1, an empty
 * token list, a non-string text, a missing or empty conversation, a message without role or content, an
 * unknown role, and an assistant-only conversation (no user message).
 */
export function parseRecord(raw: RawRecord, options: ParseRecordOptions = {}): DataRecord {
  const { value, source, index } = raw;
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new DataError(
      `${source}: expected a JSON object, got ${Array.isArray(value) ? "an array" : typeof value}`,
    );
  }
  const r = value as Record<string, unknown>;
  const id = r.id === undefined || r.id === null ? String(index) : String(r.id);
  if ("input_ids" in r || "loss_mask" in r) {
    if (!("input_ids" in r) || !("loss_mask" in r)) {
      const missing = "input_ids" in r ? "loss_mask" : "input_ids";
      throw new DataError(
        `${source}: a pre-tokenized record needs both input_ids and loss_mask; ${missing} is missing`,
      );
    }
    const inputIds = intSequence(r.input_ids, "input_ids", source, false);
    const lossMask = intSequence(r.loss_mask, "loss_mask", source, true);
    if (inputIds.length !== lossMask.length) {
      throw new DataError(
        `${source}: input_ids has ${inputIds.length} tokens but loss_mask has ${lossMask.length}`,
      );
    }
    if (inputIds.length === 0) throw new DataError(`${source}: empty token sequence`);
    return { kind: "tokens", id, inputIds, lossMask };
  }
  const conv = r.conversations ?? r.messages;
  if (conv === undefined && "text" in r) {
    if (typeof r.text !== "string") throw new DataError(`${source}: field text must be a string`);
    return { kind: "text", id, text: r.text };
  }
  if (conv === undefined) {
    throw new DataError(
      `${source}: no "conversations", "text" or "input_ids"+"loss_mask" field (keys: ${
        Object.keys(r).map(printable).join(", ")
      })`,
    );
  }
  if (!Array.isArray(conv)) throw new DataError(`${source}: conversations must be a list of messages`);
  if (conv.length === 0) throw new DataError(`${source}: empty conversation`);
  const known: readonly string[] = options.harmonyRoles
    ? [...CONVERSATION_ROLES, ...HARMONY_ROLES]
    : CONVERSATION_ROLES;
  const messages: Message[] = conv.map((m, i) => {
    if (!m || typeof m !== "object" || Array.isArray(m)) {
      throw new DataError(`${source}: message ${i} is not an object`);
    }
    const msg = m as Record<string, unknown>;
    let role = msg.role ?? msg.from;
    if (typeof role !== "string") throw new DataError(`${source}: message ${i} has no role (or "from")`);
    if (role === "human") role = "user";
    else if (role === "gpt") role = "assistant";
    if (!known.includes(role as string)) {
      throw new DataError(
        `${source}: message ${i} has unknown role '${printable(role as string)}' (expected ${
          known.join(", ")
        })`,
      );
    }
    const content = msg.content ?? msg.value ?? (msg.tool_calls !== undefined ? "" : undefined);
    if (typeof content !== "string") {
      throw new DataError(`${source}: message ${i} (${printable(role as string)}) has no string content`);
    }
    const out: Message = { ...msg, role: role as string, content };
    delete out.from;
    delete out.value;
    return out;
  });
  if (!messages.some((m) => m.role === "user")) {
    const roles = [...new Set(messages.map((m) => m.role))].join("/");
    throw new DataError(
      `${source}: conversation has no user message (only ${roles}); nothing to condition on`,
    );
  }
  let tools: unknown[] | undefined;
  if (r.tools !== undefined && r.tools !== null) {
    let t = r.tools;
    if (typeof t === "string") {
      try {
        t = JSON.parse(t);
      } catch {
        throw new DataError(`${source}: tools is a string that is not valid JSON`);
      }
    }
    if (!Array.isArray(t)) throw new DataError(`${source}: tools must be a list`);
    tools = t;
  }
  return { kind: "conversation", id, conversations: messages, ...(tools ? { tools } : {}) };
}

/** A record in the JSON form it is written to a prepared JSONL file. */
export function recordToJson(rec: DataRecord): Record<string, unknown> {
  switch (rec.kind) {
    case "conversation":
      return { id: rec.id, conversations: rec.conversations, ...(rec.tools ? { tools: rec.tools } : {}) };
    case "text":
      return { id: rec.id, text: rec.text };
    case "tokens":
      return { id: rec.id, input_ids: rec.inputIds, loss_mask: rec.lossMask };
  }
}
