/**
 * Conversation → `input_ids` + `loss_mask`, as SpecForge's current parser builds them
 * (SpecForge `specforge/data/parse.py` `GeneralParser.parse` / ThinkingParser / HarmonyParser in its current
 * runtime [H]; [C] marks its classic scripts):
 *
 * 1. Normalize: `from/value` keys and human/gpt roles are mapped; a leading system message replaces the
 *    template's system prompt, otherwise the template's (if any) is prepended; leading non-user messages are
 *    dropped; the conversation is truncated at the first turn that breaks alternation (`assistant` must follow
 *    `user`/`tool`, `tool` must follow `assistant`/`tool`).
 * 2. Render with the tokenizer's own Jinja chat template (thinking templates pass `enable_thinking=True`),
 *    or, when the tokenizer has none, the fallback `bos + system + (user_header + content)… +
 *    (assistant_header + content + eot)…`. gpt-oss (harmony) text is built by its own renderer.
 * 3. Tokenize without added special tokens and keep the first `maxLength` tokens (right truncation).
 * 4. Loss mask: every match of `assistant_header ( .*? (eot | end of text) )` (lazy, across newlines) marks
 *    the tokens of its capture group: from `len(encode(text[:start]))` to `len(encode(text[:end]))`, both
 *    clipped to the kept length. The header is not supervised; the content and the end-of-turn string
 *    (e.g. `<|im_end|>\n`) are. Then every occurrence of each `ignore_token` string is zeroed the same way
 *    (qwen3-instruct removes the empty `<think>\n\n</think>\n\n` block Qwen3's template inserts).
 *
 * Deliberate deviation: for a template without an end-of-turn string (deepseek, deepseek-r1-distill)
 * SpecForge's [H] regex ends every span at once (an empty alternative matches first) and supervises nothing;
 * here the span runs up to the next user header or the end of the text, as SpecForge [C] intended.
 */

import { DataError } from "./errors.ts";
import type { ChatTemplate } from "./templates.ts";
import type { ChatMessage, ChatTokenizer } from "./tokenizer.ts";

/** A conversation message as stored in the conversations JSONL (extra keys are allowed). */
export interface Message {
  /** Normalized role: system, user, assistant or tool (or a harmony role for gpt-oss data). */
  role: string;
  /** Message text ("" for an assistant message with only tool calls). */
  content: string;
  /** Thinking text of an assistant message, kept for rendering only when thinking is enabled. */
  reasoning_content?: string;
  /** Tool calls of an assistant message, as in the data file (cleaned before rendering). */
  tool_calls?: unknown;
  /** Any other keys of the stored message, kept as they are. */
  [key: string]: unknown;
}

/** Options of the preprocessor. */
export interface PreprocessOptions {
  /** Keep the first `maxLength` tokens (SpecForge default 2048). */
  maxLength: number;
  /** Supervise only the last assistant turn (`--train-only-last-turn`). */
  trainOnlyLastTurn?: boolean;
}

/** One tokenized sample. */
export interface TokenizedSample {
  /** Token ids of the rendered conversation, at most maxLength of them. */
  inputIds: Int32Array;
  /** 1 where the token is supervised. */
  lossMask: Uint8Array;
  /** Whether tokens were cut at `maxLength`. */
  truncated: boolean;
}

/** What normalization changed, for counts in the preparation report. */
export interface NormalizeNotes {
  /** The sample's own system message replaced the template's system prompt. */
  systemFromData: boolean;
  /** Leading non-user messages dropped. */
  droppedLeading: number;
  /** Messages cut at the first alternation violation. */
  droppedAfterViolation: number;
}

/** Result of `preprocessConversation`: the sample, its rendered text and the normalization notes. */
export interface PreprocessResult extends TokenizedSample {
  /** The conversation rendered by the chat template, before tokenization and truncation. */
  text: string;
  /** What normalizing the conversation changed. */
  notes: NormalizeNotes;
}

/** SpecForge `Parser._normalize_message`: `from/value` → `role/content`; human → user, gpt → assistant. */
export function normalizeMessage(m: Record<string, unknown>): Message {
  let role = (m.role ?? m.from ?? "") as string;
  const content = (m.content || m.value || "") as string;
  if (role === "human") role = "user";
  else if (role === "gpt") role = "assistant";
  const out: Message = { ...m, role, content };
  delete out.from;
  delete out.value;
  return out;
}

/** SpecForge `_sanitize_message`: keeps role/content/tool_calls (+reasoning_content when thinking); tool_calls cleaned. */
function sanitizeMessage(m: Message, keepReasoning: boolean): ChatMessage {
  const out: ChatMessage = { role: m.role, content: m.content };
  if (keepReasoning && m.reasoning_content !== undefined) out.reasoning_content = m.reasoning_content;
  if (m.tool_calls === undefined) return out;
  let calls = m.tool_calls;
  if (typeof calls === "string") {
    try {
      calls = JSON.parse(calls);
    } catch {
      return out; // SpecForge drops unparsable tool_calls with a warning
    }
  }
  if (!Array.isArray(calls)) {
    out.tool_calls = calls;
    return out;
  }
  out.tool_calls = calls.filter((c) => c && typeof c === "object").map((c: Record<string, unknown>) => {
    const clean: Record<string, unknown> = { id: c.id ?? "", type: c.type ?? "function" };
    const fn = c.function ?? {};
    if (fn && typeof fn === "object" && !Array.isArray(fn)) {
      const f = fn as Record<string, unknown>;
      let args = f.arguments ?? {};
      if (typeof args === "string") {
        try {
          args = JSON.parse(args);
        } catch {
          args = {};
        }
      }
      clean.function = { name: f.name ?? "", arguments: args };
    }
    return clean;
  });
  return out;
}

/** Step 1 of the module comment: the message list that gets rendered, and what was changed. */
export function normalizeConversation(
  conversation: Array<Record<string, unknown>>,
  template: ChatTemplate,
): { messages: ChatMessage[]; notes: NormalizeNotes } {
  let conv = conversation.map(normalizeMessage);
  const keepReasoning = template.parser === "thinking";
  const messages: ChatMessage[] = [];
  const notes: NormalizeNotes = { systemFromData: false, droppedLeading: 0, droppedAfterViolation: 0 };
  if (conv.length > 0 && conv[0].role === "system") {
    messages.push({ role: "system", content: conv[0].content });
    notes.systemFromData = true;
    conv = conv.slice(1);
  } else if (template.systemPrompt) {
    messages.push({ role: "system", content: template.systemPrompt });
  }
  while (conv.length > 0 && conv[0].role !== "user") {
    conv = conv.slice(1);
    notes.droppedLeading++;
  }
  for (let j = 0; j < conv.length; j++) {
    const role = conv[j].role;
    if (j > 0) {
      const prev = conv[j - 1].role;
      const badTool = role === "tool" && prev !== "assistant" && prev !== "tool";
      const badAssistant = role === "assistant" && prev !== "user" && prev !== "tool";
      if (badTool || badAssistant) {
        notes.droppedAfterViolation = conv.length - j;
        break;
      }
    }
    messages.push(sanitizeMessage(conv[j], keepReasoning));
  }
  return { messages, notes };
}

/** SpecForge's fallback renderer for tokenizers without a chat template. */
export function renderFallback(
  messages: ChatMessage[],
  template: ChatTemplate,
  bosToken: string | null,
): string {
  const parts: string[] = [];
  if (bosToken) parts.push(bosToken);
  const user = template.userHeader ?? "";
  const assistant = template.assistantHeader ?? "";
  const eot = template.endOfTurn ?? "";
  for (const m of messages) {
    if (m.role === "system") parts.push(m.content);
    else if (m.role === "user") parts.push(user + m.content);
    else if (m.role === "assistant") parts.push(assistant + m.content + eot);
  }
  return parts.join("");
}

const HARMONY_SYSTEM = (level: string) =>
  "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\n" +
  `Reasoning: ${level.toLowerCase()}\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>`;

/**
 * SpecForge's HarmonyParser text for gpt-oss: a reasoning-effort system block (default "low") unless the
 * first message is `system` or `assistant_reasoning_effort`, then one block per message. Roles:
 * system, assistant_reasoning_effort, user, assistant_analysis, assistant_commentary, assistant_final;
 * Eaglet also accepts plain `assistant` (its `reasoning_content`, if any, as an analysis block, then the
 * content as the final channel), which SpecForge rejects.
 */
export function renderHarmony(messages: Array<Record<string, unknown>>): string {
  let text = "";
  const block = (channel: string, content: string) =>
    `<|start|>assistant<|channel|>${channel}<|message|>${content}<|end|>`;
  messages.forEach((raw, j) => {
    const m = normalizeMessage(raw);
    if (j === 0 && m.role !== "system" && m.role !== "assistant_reasoning_effort") {
      text = HARMONY_SYSTEM("low");
    }
    switch (m.role) {
      case "system":
        text = `<|start|>system<|message|>${m.content}<|end|>`;
        break;
      case "assistant_reasoning_effort":
        text = HARMONY_SYSTEM(m.content);
        break;
      case "user":
        text += `<|start|>user<|message|>${m.content}<|end|>`;
        break;
      case "assistant_analysis":
        text += block("analysis", m.content);
        break;
      case "assistant_commentary":
        text += block("commentary", m.content);
        break;
      case "assistant_final":
        text += block("final", m.content);
        break;
      case "assistant":
        if (typeof m.reasoning_content === "string" && m.reasoning_content) {
          text += block("analysis", m.reasoning_content);
        }
        text += block("final", m.content);
        break;
      default:
        throw new DataError(`gpt-oss (harmony) conversation: unknown role '${m.role}' in message ${j}`);
    }
  });
  return text;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The regex whose capture group 1 is each supervised assistant span of rendered text. */
export function assistantPattern(template: ChatTemplate): RegExp {
  if (template.parser === "openai-harmony") {
    return /<\|start\|>assistant([\s\S]*?)(?=<\|start\|>user<\|message\|>|$)/g;
  }
  const header = escapeRegExp(template.assistantHeader ?? "");
  if (template.endOfTurn) {
    return new RegExp(`${header}([\\s\\S]*?(?:${escapeRegExp(template.endOfTurn)}|$))`, "g");
  }
  // No end-of-turn string: run to the next user header (or the end); see the module note.
  const stop = template.userHeader ? `${escapeRegExp(template.userHeader)}|$` : "$";
  return new RegExp(`${header}([\\s\\S]*?)(?=${stop})`, "g");
}

/** Character spans [start, end) of the supervised assistant text (group 1 of `assistantPattern`). */
export function assistantSpans(
  text: string,
  template: ChatTemplate,
  onlyLast = false,
): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  const re = assistantPattern(template);
  for (const m of text.matchAll(re)) {
    // Every pattern is `literal header` + group 1 (+ a lookahead that consumes nothing).
    const start = m.index! + m[0].length - m[1].length;
    spans.push([start, start + m[1].length]);
  }
  return onlyLast && spans.length > 0 ? [spans[spans.length - 1]] : spans;
}

/**
 * Token index of character position `charPos`: `len(encode(text[:charPos]))`, as SpecForge computes it
 * (results memoized per text by the caller's map).
 */
function prefixTokens(tok: ChatTokenizer, text: string, charPos: number, memo: Map<number, number>): number {
  if (charPos === 0) return 0;
  let n = memo.get(charPos);
  if (n === undefined) {
    n = tok.encode(text.slice(0, charPos)).length;
    memo.set(charPos, n);
  }
  return n;
}

/**
 * The loss mask of rendered `text` whose kept tokens number `n` (step 4 of the module comment): assistant
 * spans set to 1, then the template's ignore tokens set to 0.
 */
export function buildLossMask(
  tok: ChatTokenizer,
  text: string,
  template: ChatTemplate,
  n: number,
  trainOnlyLastTurn = false,
): Uint8Array {
  const mask = new Uint8Array(n);
  const memo = new Map<number, number>();
  for (const [a, b] of assistantSpans(text, template, trainOnlyLastTurn)) {
    const s = Math.min(prefixTokens(tok, text, a, memo), n);
    const e = Math.min(prefixTokens(tok, text, b, memo), n);
    mask.fill(1, s, e);
  }
  for (const ignore of template.ignoreTokens) {
    for (let i = text.indexOf(ignore); i !== -1; i = text.indexOf(ignore, i + ignore.length)) {
      const s = Math.min(prefixTokens(tok, text, i, memo), n);
      const e = Math.min(prefixTokens(tok, text, i + ignore.length, memo), n);
      mask.fill(0, s, e);
    }
  }
  return mask;
}

/** Tokenizes rendered (or preformatted) text and builds its mask: steps 3–4 of the module comment. */
export function preprocessText(
  tok: ChatTokenizer,
  template: ChatTemplate,
  text: string,
  options: PreprocessOptions,
): TokenizedSample {
  const all = tok.encode(text);
  const n = Math.min(all.length, options.maxLength);
  const inputIds = Int32Array.from(all.length > n ? all.slice(0, n) : all);
  const lossMask = buildLossMask(tok, text, template, n, options.trainOnlyLastTurn);
  return { inputIds, lossMask, truncated: all.length > n };
}

/** Renders a normalized message list: harmony, the tokenizer's chat template, or the fallback renderer. */
export function renderConversation(
  tok: ChatTokenizer,
  template: ChatTemplate,
  messages: ChatMessage[],
  tools?: unknown[],
): string {
  if (tok.chatTemplate === null) {
    return renderFallback(messages, template, tok.specialTokens.bos_token ?? null);
  }
  const kwargs: Record<string, unknown> = {};
  if (template.parser === "thinking" && template.enableThinking) kwargs.enable_thinking = true;
  return tok.renderChat(messages, { tools, kwargs });
}

/** A whole conversation → sample (steps 1–4 of the module comment). */
export function preprocessConversation(
  tok: ChatTokenizer,
  template: ChatTemplate,
  conversation: Array<Record<string, unknown>>,
  options: PreprocessOptions,
  tools?: unknown[],
): PreprocessResult {
  if (options.maxLength < 1 || !Number.isInteger(options.maxLength)) {
    throw new DataError(`max_length must be a positive integer, got ${options.maxLength}`);
  }
  let text: string;
  let notes: NormalizeNotes = { systemFromData: false, droppedLeading: 0, droppedAfterViolation: 0 };
  if (template.parser === "openai-harmony") {
    text = renderHarmony(conversation);
  } else {
    const normalized = normalizeConversation(conversation, template);
    notes = normalized.notes;
    text = renderConversation(tok, template, normalized.messages, tools);
  }
  return { ...preprocessText(tok, template, text, options), text, notes };
}
