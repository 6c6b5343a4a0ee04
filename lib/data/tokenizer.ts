/**
 * A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) with its Jinja chat template, as the
 * data pipeline needs it: encode without added special tokens (the template already holds BOS), render a
 * conversation exactly as `tokenizer.apply_chat_template(messages, tokenize=False)` does, and a fingerprint
 * of every file read, so a preprocessing cache can never mix tokenizers.
 *
 * Encoding is npm:@huggingface/tokenizers; rendering is npm:@huggingface/jinja with the same variables
 * transformers passes (messages, tools, add_generation_prompt, the special-token strings, plus template kwargs
 * such as enable_thinking; the package itself provides raise_exception and strftime_now).
 */

import { Template, Tokenizer } from "../npm.ts";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { DataError } from "./errors.ts";

/** A chat message as the Jinja templates see it. */
export interface ChatMessage {
  /** Role (system, user, assistant, tool, ...), as the template expects it. */
  role: string;
  /** Message text. */
  content: string;
  /** Other keys the template may read (reasoning_content, tool_calls...). */
  [key: string]: unknown;
}

/** Options of `renderChat`. */
export interface RenderOptions {
  /** Tool schemas passed as `tools` (omitted when empty, like transformers). */
  tools?: unknown[];
  /** Appends the assistant header for generation (false for training data). */
  addGenerationPrompt?: boolean;
  /** Extra template variables, e.g. `{ enable_thinking: true }`. */
  kwargs?: Record<string, unknown>;
}

/** sha256 (hex) of every input that determines tokenization; part of the preprocessing cache key. */
export interface TokenizerFingerprint {
  /** sha256 of tokenizer.json's bytes. */
  tokenizerJson: string;
  /** sha256 of tokenizer_config.json's bytes, or null when there is none. */
  tokenizerConfig: string | null;
  /** sha256 of the chat template text actually used, or null when the tokenizer has none. */
  chatTemplate: string | null;
}

/** Where `loadTokenizer` found things, for messages. */
export interface TokenizerSource {
  /** Path of the tokenizer.json read. */
  tokenizerJsonPath: string;
  /** Path of the tokenizer_config.json read, or null when there is none. */
  tokenizerConfigPath: string | null;
  /** "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "override" or null. */
  chatTemplateOrigin: string | null;
}

/** Options of `loadTokenizer`. */
export interface LoadTokenizerOptions {
  /**
   * Jinja text that replaces the tokenizer's own chat template (e.g. the template served in production);
   * null ignores the tokenizer's template, so the template registry's fallback renderer is used.
   */
  chatTemplate?: string | null;
}

/** The hex sha256 of bytes or a string. */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return null;
}

/** A loaded tokenizer with its chat template. Build with `loadTokenizer` (files) or the constructor (objects). */
export class ChatTokenizer {
  /** The chat template text, or null when the tokenizer has none (the fallback renderer is then used). */
  readonly chatTemplate: string | null;
  /** Special-token strings from tokenizer_config.json (bos_token, eos_token, ...), as templates see them. */
  readonly specialTokens: Record<string, string>;
  /** 1 + the largest token id of the vocabulary and added tokens. */
  readonly vocabSize: number;
  /** Hashes of the files that define this tokenizer. */
  readonly fingerprint: TokenizerFingerprint;
  /** Where the files came from. */
  readonly source: TokenizerSource;
  #tok: Tokenizer;
  #template: Template | null;

  /**
   * From parsed tokenizer.json and tokenizer_config.json objects. `fingerprint` and `source` describe
   * where they came from (loadTokenizer fills them).
   */
  constructor(
    tokenizerJson: Record<string, unknown>,
    tokenizerConfig: Record<string, unknown>,
    chatTemplate: string | null,
    fingerprint: TokenizerFingerprint,
    source: TokenizerSource,
  ) {
    this.#tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    this.chatTemplate = chatTemplate;
    this.#template = chatTemplate ? new Template(chatTemplate) : null;
    this.fingerprint = fingerprint;
    this.source = source;
    const special: Record<string, string> = {};
    for (
      const key of [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
      ]
    ) {
      const t = tokenText(tokenizerConfig[key]);
      if (t !== null) special[key] = t;
    }
    this.specialTokens = special;
    this.vocabSize = vocabSizeOf(tokenizerJson);
  }

  /**
   * Token ids of `text`; added tokens in the text are matched. By default no special tokens are added
   * (`add_special_tokens=False`, as chat preprocessing needs); `addSpecialTokens` applies the tokenizer's
   * post-processor (e.g. a BOS), as transformers' `tokenizer(text)` does.
   */
  encode(text: string, { addSpecialTokens = false }: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tok.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** Text of `ids`; special tokens are kept unless `skipSpecialTokens`. */
  decode(
    ids: ArrayLike<number>,
    { skipSpecialTokens = false }: { skipSpecialTokens?: boolean } = {},
  ): string {
    return this.#tok.decode(Array.from(ids), { skip_special_tokens: skipSpecialTokens });
  }

  /** The vocabulary string of one token id (e.g. "Ġname"), or undefined. */
  tokenString(id: number): string | undefined {
    return this.#tok.id_to_token(id);
  }

  /**
   * `apply_chat_template(messages, tokenize=False, ...)`. Throws DataError when the tokenizer has no chat
   * template (callers then use the template registry's fallback renderer).
   */
  renderChat(messages: ChatMessage[], options: RenderOptions = {}): string {
    if (!this.#template) {
      throw new DataError(`tokenizer ${this.source.tokenizerJsonPath} has no chat template`);
    }
    const context: Record<string, unknown> = {
      ...this.specialTokens,
      ...options.kwargs,
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
    };
    if (options.tools && options.tools.length > 0) context.tools = options.tools;
    try {
      return this.#template.render(context);
    } catch (e) {
      throw new DataError(
        `chat template of ${this.source.tokenizerJsonPath} failed: ${(e as Error).message}`,
      );
    }
  }
}

function vocabSizeOf(tokenizerJson: Record<string, unknown>): number {
  let max = -1;
  const model = tokenizerJson.model as { vocab?: unknown } | undefined;
  const vocab = model?.vocab;
  if (Array.isArray(vocab)) max = vocab.length - 1; // Unigram: [[piece, score], ...]
  else if (vocab && typeof vocab === "object") {
    for (const id of Object.values(vocab as Record<string, number>)) if (id > max) max = id;
  }
  for (const t of (tokenizerJson.added_tokens ?? []) as Array<{ id: number }>) if (t.id > max) max = t.id;
  return max + 1;
}

async function readIfExists(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

function parseJson(bytes: Uint8Array, path: string): Record<string, unknown> {
  try {
    const v = JSON.parse(new TextDecoder().decode(bytes));
    if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (e) {
    throw new DataError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

function templateFromConfigValue(v: unknown, path: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    // Named templates: [{name, template}], transformers uses "default".
    const def = v.find((t) => t && (t as { name?: string }).name === "default") as
      | { template?: string }
      | undefined;
    if (def && typeof def.template === "string") return def.template;
    throw new DataError(`${path}: chat_template is a list without a "default" entry`);
  }
  throw new DataError(`${path}: chat_template must be a string or a list of {name, template}`);
}

/**
 * Loads a tokenizer from a directory (or a tokenizer.json path): tokenizer.json is required,
 * tokenizer_config.json optional. The chat template is, in order: `options.chatTemplate` (null: none), the
 * directory's chat_template.jinja, chat_template.json, then tokenizer_config.json's `chat_template`.
 */
export async function loadTokenizer(
  path: string,
  options: LoadTokenizerOptions = {},
): Promise<ChatTokenizer> {
  let dir = path;
  let jsonPath = join(path, "tokenizer.json");
  try {
    if ((await Deno.stat(path)).isFile) {
      jsonPath = path;
      dir = join(path, "..");
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`tokenizer path ${path} does not exist`);
    throw e;
  }
  const jsonBytes = await readIfExists(jsonPath);
  if (!jsonBytes) {
    throw new DataError(`tokenizer file missing: ${jsonPath} (a Hugging Face tokenizer.json is needed)`);
  }
  const configPath = join(dir, "tokenizer_config.json");
  const configBytes = await readIfExists(configPath);
  const tokenizerJson = parseJson(jsonBytes, jsonPath);
  if (!tokenizerJson.model) throw new DataError(`${jsonPath}: no "model" section; not a tokenizer.json`);
  const config = configBytes ? parseJson(configBytes, configPath) : {};

  let chatTemplate: string | null = null;
  let origin: string | null = null;
  if (options.chatTemplate !== undefined) {
    chatTemplate = options.chatTemplate;
    origin = chatTemplate === null ? null : "override";
  } else {
    const jinja = await readIfExists(join(dir, "chat_template.jinja"));
    const ctJson = jinja ? null : await readIfExists(join(dir, "chat_template.json"));
    if (jinja) {
      chatTemplate = new TextDecoder().decode(jinja);
      origin = "chat_template.jinja";
    } else if (ctJson) {
      const p = join(dir, "chat_template.json");
      chatTemplate = templateFromConfigValue(parseJson(ctJson, p).chat_template, p);
      origin = "chat_template.json";
    } else {
      chatTemplate = templateFromConfigValue(config.chat_template, configPath);
      if (chatTemplate !== null) origin = "tokenizer_config.json";
    }
  }
  try {
    return new ChatTokenizer(
      tokenizerJson,
      config,
      chatTemplate,
      {
        tokenizerJson: sha256Hex(jsonBytes),
        tokenizerConfig: configBytes ? sha256Hex(configBytes) : null,
        chatTemplate: chatTemplate === null ? null : sha256Hex(chatTemplate),
      },
      {
        tokenizerJsonPath: jsonPath,
        tokenizerConfigPath: configBytes ? configPath : null,
        chatTemplateOrigin: origin,
      },
    );
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(`${jsonPath}: cannot build the tokenizer (${(e as Error).message})`);
  }
}

/**
 * A Hugging Face tokenizer.json of a word-level vocabulary `t0` … `t{n−1}` (token id i is the word `t<i>`):
 * enough for pre-tokenized data with a target that ships no tokenizer (random-weight benchmark targets,
 * tests).
 */
export function wordLevelTokenizerJson(vocabSize: number): string {
  const vocab: Record<string, number> = {};
  for (let i = 0; i < vocabSize; i++) vocab[`t${i}`] = i;
  return JSON.stringify({
    version: "1.0",
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: "Whitespace" },
    post_processor: null,
    decoder: null,
    model: { type: "WordLevel", vocab, unk_token: "t0" },
  });
}
