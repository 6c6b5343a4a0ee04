/**
 * Chat-template registry (SpecForge `specforge/data/template.py` `TEMPLATE_REGISTRY`).
 *
 * A template here does NOT render text: text is rendered by the tokenizer's own Jinja `chat_template`
 * (lib/data/tokenizer.ts). The header and end-of-turn strings only locate the assistant spans that the
 * loss mask supervises (lib/data/preprocess.ts), and render text through the fallback renderer when a
 * tokenizer has no chat template. Names and strings are exactly SpecForge's, so a template chosen for
 * SpecForge selects the same tokens here.
 */

import { DataError } from "./errors.ts";

/** How the loss-mask parser walks a rendered conversation. */
export type ParserType = "general" | "thinking" | "openai-harmony";

/** One chat template: the strings that delimit turns in text rendered by the tokenizer's template. */
export interface ChatTemplate {
  /** Text that opens an assistant turn; the loss mask starts right after it. */
  assistantHeader: string | null;
  /** Text that opens a user turn (used by the fallback renderer). */
  userHeader: string | null;
  /** System prompt prepended when a sample has none; null or "" for none. */
  systemPrompt: string | null;
  /** Text that closes an assistant turn; supervised (it is part of the span). */
  endOfTurn: string | null;
  /** `general`, `thinking` (passes enable_thinking to the Jinja template) or `openai-harmony` (gpt-oss). */
  parser: ParserType;
  /** Passed as `enable_thinking=True` to the tokenizer's chat template (thinking parser only). */
  enableThinking: boolean;
  /** Substrings whose tokens are removed from the loss mask after the spans are marked. */
  ignoreTokens: string[];
}

/** The Llama-3 system prompt of SpecForge (note the two spaces after "safe."). */
export const LLAMA3_SYSTEM_PROMPT =
  "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.";

const HELPFUL = "You are a helpful assistant.";

function general(
  assistantHeader: string | null,
  userHeader: string | null,
  systemPrompt: string | null,
  endOfTurn: string | null,
  extra: Partial<ChatTemplate> = {},
): ChatTemplate {
  return {
    assistantHeader,
    userHeader,
    systemPrompt,
    endOfTurn,
    parser: "general",
    enableThinking: false,
    ignoreTokens: [],
    ...extra,
  };
}

const QWEN = general("<|im_start|>assistant\n", "<|im_start|>user\n", HELPFUL, "<|im_end|>\n");

/** The templates SpecForge v0.1 ships (its `TEMPLATE_REGISTRY`), plus qwen3-thinking and qwen3-instruct. */
const BUILTIN: Record<string, ChatTemplate> = {
  "llama3": general(
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|start_header_id|>user<|end_header_id|>",
    LLAMA3_SYSTEM_PROMPT,
    "<|eot_id|>",
  ),
  "llama4": general(
    "<|header_start|>assistant<|header_end|>\n\n",
    "<|header_start|>user<|header_end|>",
    HELPFUL,
    "<|eot|>",
  ),
  "qwen": QWEN,
  "qwen2-vl": { ...QWEN },
  "deepseek": general("Assistant:", "User:", HELPFUL, ""),
  "phi3": general("<|assistant|>\n", "<|user|>\n", HELPFUL, "<|end|>\n"),
  "phi4": general("<|im_start|>assistant<|im_sep|>", "<|im_start|>user<|im_sep|>", HELPFUL, "<|im_end|>"),
  "phi4-mini": general("<|assistant|>", "<|user|>", HELPFUL, "<|end|>"),
  "gpt-oss-naive": general(
    "<|start|>assistant<|channel|>analysis<|message|>",
    "<|start|>user<|message|>",
    null,
    "<|end|>",
  ),
  "gpt-oss": { ...general(null, null, null, null), parser: "openai-harmony" },
  "deepseek-r1-distill": general("<｜Assistant｜>", "<｜User｜>", null, null),
  "qwen3-thinking": { ...QWEN, parser: "thinking", enableThinking: true },
  "qwen3-instruct": { ...QWEN, ignoreTokens: ["<think>\n\n</think>\n\n"] },
};

/**
 * Name → template. `register` adds one's own; built-ins are present from the start. Templates are frozen
 * copies, so a registered template cannot change behind a cache key.
 */
export class TemplateRegistry {
  #templates = new Map<string, Readonly<ChatTemplate>>();

  /** A registry holding SpecForge's built-in templates. */
  constructor() {
    for (const [name, t] of Object.entries(BUILTIN)) this.register(name, t);
  }

  /** Adds `template` under `name`; throws if the name is taken unless `override`. */
  register(name: string, template: ChatTemplate, { override = false } = {}): void {
    if (!name) throw new DataError("a chat template needs a non-empty name");
    if (this.#templates.has(name) && !override) {
      throw new DataError(`chat template '${name}' is already registered (pass override to replace it)`);
    }
    validateTemplate(name, template);
    this.#templates.set(
      name,
      Object.freeze({ ...template, ignoreTokens: Object.freeze([...template.ignoreTokens]) as string[] }),
    );
  }

  /** The template named `name`; the error lists the known names. */
  get(name: string): Readonly<ChatTemplate> {
    const t = this.#templates.get(name);
    if (!t) {
      throw new DataError(`unknown chat template '${name}'; known templates: ${this.names().join(", ")}`);
    }
    return t;
  }

  /** Whether `name` is registered. */
  has(name: string): boolean {
    return this.#templates.has(name);
  }

  /** Registered names in registration order. */
  names(): string[] {
    return [...this.#templates.keys()];
  }
}

function validateTemplate(name: string, t: ChatTemplate): void {
  if (t.parser !== "general" && t.parser !== "thinking" && t.parser !== "openai-harmony") {
    throw new DataError(`chat template '${name}': unknown parser '${t.parser}'`);
  }
  if (t.parser !== "openai-harmony" && !t.assistantHeader) {
    throw new DataError(`chat template '${name}': assistantHeader is required to locate assistant turns`);
  }
  if (!Array.isArray(t.ignoreTokens) || t.ignoreTokens.some((s) => typeof s !== "string" || s === "")) {
    throw new DataError(`chat template '${name}': ignoreTokens must be a list of non-empty strings`);
  }
}

/** The process-wide registry used by the CLIs; register custom templates on it before preprocessing. */
export const templates: TemplateRegistry = new TemplateRegistry();
