/**
 * The template registry, and every registered template rendering and masking a two-turn conversation with
 * and without a system prompt: through the fallback renderer (all templates) and through the tokenizer's own
 * Jinja template (Qwen3 for the qwen family, Llama 3 for llama3).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DataError } from "../../lib/data/errors.ts";
import { preprocessConversation } from "../../lib/data/preprocess.ts";
import {
  type ChatTemplate,
  LLAMA3_SYSTEM_PROMPT,
  TemplateRegistry,
  templates,
} from "../../lib/data/templates.ts";
import { type ChatTokenizer, loadTokenizer } from "../../lib/data/tokenizer.ts";
import { LLAMA3_DIR, masked, maskRuns, QWEN3_DIR, tempDir, tokenizer } from "./fixtures.ts";

const SPEC_FORGE_V01 = [
  "llama3",
  "llama4",
  "qwen",
  "qwen2-vl",
  "deepseek",
  "phi3",
  "phi4",
  "phi4-mini",
  "gpt-oss-naive",
  "gpt-oss",
  "deepseek-r1-distill",
  "qwen3-thinking",
  "qwen3-instruct",
];

const TURNS = [
  { role: "user", content: "Hi there" },
  { role: "assistant", content: "Hello, friend." },
  { role: "user", content: "Tell me a joke" },
  { role: "assistant", content: "Why did the chicken cross the road?" },
];
const SYSTEM = { role: "system", content: "Be brief." };
const ASSISTANT = [TURNS[1].content, TURNS[3].content];

Deno.test("registry holds every SpecForge v0.1 template plus qwen3-thinking/instruct", () => {
  for (const name of SPEC_FORGE_V01) assert.ok(templates.has(name), name);
  assert.equal(templates.get("qwen3-instruct").ignoreTokens[0], "<think>\n\n</think>\n\n");
  assert.equal(templates.get("llama3").systemPrompt, LLAMA3_SYSTEM_PROMPT);
  assert.ok(LLAMA3_SYSTEM_PROMPT.includes("safe.  Your"), "double space after 'safe.'");
  assert.equal(templates.get("gpt-oss").parser, "openai-harmony");
  assert.equal(templates.get("qwen3-thinking").enableThinking, true);
});

Deno.test("registry: unknown names list the known ones; register, duplicate and override", () => {
  assert.throws(
    () => templates.get("qwen9"),
    (e: Error) =>
      e instanceof DataError && e.message.includes("unknown chat template 'qwen9'") &&
      e.message.includes("llama3, llama4"),
  );
  const reg = new TemplateRegistry();
  const mine: ChatTemplate = {
    assistantHeader: "<bot>",
    userHeader: "<human>",
    systemPrompt: null,
    endOfTurn: "</s>",
    parser: "general",
    enableThinking: false,
    ignoreTokens: [],
  };
  reg.register("mine", mine);
  assert.equal(reg.get("mine").assistantHeader, "<bot>");
  assert.throws(() => reg.register("mine", mine), /already registered/);
  reg.register("mine", { ...mine, endOfTurn: "<eos>" }, { override: true });
  assert.equal(reg.get("mine").endOfTurn, "<eos>");
  mine.endOfTurn = "changed";
  assert.equal(reg.get("mine").endOfTurn, "<eos>", "registered templates are copies");
  assert.throws(() => reg.register("bad", { ...mine, assistantHeader: null }), /assistantHeader is required/);
  assert.ok(!templates.has("mine"), "a new registry does not touch the global one");
});

/**
 * The Qwen3 tokenizer with every `<|...|>` / `<｜...｜>` string of the registered templates added as a special
 * token, as each template's real tokenizer has them: token boundaries then fall where the target model's
 * would, and the fallback renderer can be checked exactly for every template.
 */
async function tokenizerWithTemplateSpecials(): Promise<ChatTokenizer> {
  const json = JSON.parse(await Deno.readTextFile(join(QWEN3_DIR, "tokenizer.json")));
  const have = new Set<string>(json.added_tokens.map((t: { content: string }) => t.content));
  let next = Math.max(...json.added_tokens.map((t: { id: number }) => t.id)) + 1;
  for (const name of templates.names()) {
    const t = templates.get(name);
    const strings = [t.assistantHeader, t.userHeader, t.endOfTurn, "<|start|>", "<|message|>", "<|channel|>"];
    for (const s of strings) {
      // Plain-text headers ("User:") are added whole: BPE would otherwise merge "." + "User" across the span
      // end, which moves the boundary by a token (in SpecForge too; a property of prefix-length masks).
      const pieces = s && !s.includes("<") ? [s] : (s ?? "").match(/<[|｜][^|｜]*[|｜]>/g) ?? [];
      for (const special of pieces) {
        if (have.has(special)) continue;
        have.add(special);
        json.added_tokens.push({
          id: next++,
          content: special,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
          special: true,
        });
      }
    }
  }
  const dir = await tempDir();
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(json));
  const config = JSON.parse(await Deno.readTextFile(join(QWEN3_DIR, "tokenizer_config.json")));
  delete config.chat_template;
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
  return await loadTokenizer(dir);
}

/** What the fallback renderer's mask must cover, per assistant turn. */
function expectedFallbackSpans(name: string): string[] {
  const t = templates.get(name);
  if (t.parser === "openai-harmony") return ASSISTANT.map((c) => `<|channel|>final<|message|>${c}<|end|>`);
  return ASSISTANT.map((c) => c + (t.endOfTurn ?? ""));
}

Deno.test("every template: fallback renderer masks exactly the assistant turns, with and without system", async () => {
  const tok = await tokenizerWithTemplateSpecials();
  assert.equal(tok.chatTemplate, null);
  for (const name of templates.names()) {
    const template = templates.get(name);
    for (const withSystem of [false, true]) {
      const conv = withSystem ? [SYSTEM, ...TURNS] : TURNS;
      const r = preprocessConversation(tok, template, conv, { maxLength: 4096 });
      const what = `${name} ${withSystem ? "with" : "without"} system`;
      assert.equal(tok.decode(masked(r.inputIds, r.lossMask)), expectedFallbackSpans(name).join(""), what);
      assert.equal(maskRuns(r.lossMask).length, 2, `${what}: one supervised run per assistant turn`);
      for (const u of [TURNS[0].content, TURNS[2].content]) {
        assert.ok(r.text.includes(u), `${what}: user text rendered`);
      }
      if (template.parser === "openai-harmony") {
        if (withSystem) assert.ok(r.text.startsWith("<|start|>system<|message|>Be brief.<|end|>"), what);
        else assert.ok(r.text.includes("Reasoning: low"), what);
      } else if (withSystem) {
        assert.ok(r.text.includes("Be brief."), what);
        if (template.systemPrompt) {
          assert.ok(!r.text.includes(template.systemPrompt), `${what}: data system replaces template's`);
        }
        assert.equal(r.notes.systemFromData, true);
      } else if (template.systemPrompt) {
        assert.ok(r.text.includes(template.systemPrompt), `${what}: template system prompt prepended`);
      }
    }
  }
});

Deno.test("qwen family with Qwen3's own chat template: masks, think block, system prompt", async () => {
  const tok = await tokenizer(QWEN3_DIR);
  const think = "<think>\n\n</think>\n\n";
  const cases: Record<string, string> = {
    // Qwen3's template inserts an empty think block before the LAST assistant turn only.
    "qwen": `${ASSISTANT[0]}<|im_end|>\n${think}${ASSISTANT[1]}<|im_end|>\n`,
    "qwen2-vl": `${ASSISTANT[0]}<|im_end|>\n${think}${ASSISTANT[1]}<|im_end|>\n`,
    "qwen3-thinking": `${ASSISTANT[0]}<|im_end|>\n${think}${ASSISTANT[1]}<|im_end|>\n`,
    // ...which qwen3-instruct's ignore_token removes from the mask.
    "qwen3-instruct": `${ASSISTANT[0]}<|im_end|>\n${ASSISTANT[1]}<|im_end|>\n`,
  };
  for (const [name, expected] of Object.entries(cases)) {
    for (const withSystem of [false, true]) {
      const r = preprocessConversation(tok, templates.get(name), withSystem ? [SYSTEM, ...TURNS] : TURNS, {
        maxLength: 4096,
      });
      const what = `${name} ${withSystem ? "with" : "without"} system`;
      assert.equal(tok.decode(masked(r.inputIds, r.lossMask)), expected, what);
      const sys = withSystem ? "Be brief." : "You are a helpful assistant.";
      assert.ok(r.text.startsWith(`<|im_start|>system\n${sys}<|im_end|>\n`), what);
    }
  }
});

Deno.test("llama3 with Llama 3's own chat template: masks and the Llama-3 system prompt", async () => {
  const tok = await tokenizer(LLAMA3_DIR);
  for (const withSystem of [false, true]) {
    const r = preprocessConversation(tok, templates.get("llama3"), withSystem ? [SYSTEM, ...TURNS] : TURNS, {
      maxLength: 4096,
    });
    assert.equal(tok.decode(masked(r.inputIds, r.lossMask)), ASSISTANT.map((c) => `${c}<|eot_id|>`).join(""));
    assert.equal(maskRuns(r.lossMask).length, 2);
    assert.ok(r.text.startsWith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"));
    assert.equal(r.text.includes(LLAMA3_SYSTEM_PROMPT), !withSystem);
    // This template always appends an assistant header; its empty span supervises nothing.
    assert.ok(r.text.endsWith("<|start_header_id|>assistant<|end_header_id|>\n\n"));
  }
});
