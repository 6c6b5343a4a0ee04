/** Tokenization and loss masks (SpecForge `specforge/data/parse.py` `GeneralParser`): SpecForge's Qwen reference, normalization, truncation. */

import assert from "node:assert/strict";
import {
  assistantSpans,
  normalizeConversation,
  preprocessConversation,
  preprocessText,
  renderHarmony,
} from "../../lib/data/preprocess.ts";
import { templates } from "../../lib/data/templates.ts";
import { DataError } from "../../lib/data/errors.ts";
import { hasTinyStories, masked, maskRuns, QWEN3_DIR, TINYSTORIES_DIR, tokenizer } from "./fixtures.ts";

const QWEN_REFERENCE_MASK = [5050, 829, 374, 1207, 16948, 17, 13, 151645, 198];
const NAME = [{ role: "user", content: "What is your name?" }, {
  role: "assistant",
  content: "My name is Qwen2.",
}];

Deno.test("SpecForge's Qwen reference: qwen3-instruct on Qwen3's tokenizer masks exactly the reference ids", async () => {
  const tok = await tokenizer(QWEN3_DIR);
  const r = preprocessConversation(tok, templates.get("qwen3-instruct"), NAME, { maxLength: 2048 });
  assert.deepEqual(masked(r.inputIds, r.lossMask), QWEN_REFERENCE_MASK);
  assert.ok(r.text.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\nMy name is Qwen2.<|im_end|>\n"));
  // Header tokens (<|im_start|> assistant \n) and the think block are unsupervised; the run is contiguous.
  assert.equal(maskRuns(r.lossMask).length, 1);
  assert.equal(r.lossMask[r.lossMask.length - 1], 1, "the trailing newline of <|im_end|>\\n is supervised");
  // With plain `qwen` the think block Qwen3's template inserts would be supervised too.
  const plain = preprocessConversation(tok, templates.get("qwen"), NAME, { maxLength: 2048 });
  assert.deepEqual(masked(plain.inputIds, plain.lossMask), [
    151667,
    271,
    151668,
    271,
    ...QWEN_REFERENCE_MASK,
  ]);
});

Deno.test("the same reference as preformatted text through the fallback renderer (no chat template)", async () => {
  const tok = await tokenizer(QWEN3_DIR, true);
  const r = preprocessConversation(tok, templates.get("qwen"), NAME, { maxLength: 2048 });
  assert.equal(
    r.text,
    "You are a helpful assistant.<|im_start|>user\nWhat is your name?<|im_start|>assistant\nMy name is Qwen2.<|im_end|>\n",
  );
  assert.deepEqual(masked(r.inputIds, r.lossMask), QWEN_REFERENCE_MASK);
  const pre = preprocessText(
    tok,
    templates.get("qwen"),
    "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\nMy name is Qwen2.<|im_end|>\n",
    { maxLength: 2048 },
  );
  assert.deepEqual(masked(pre.inputIds, pre.lossMask), QWEN_REFERENCE_MASK);
});

Deno.test("right truncation to max_length keeps the first tokens and clips the mask", async () => {
  const tok = await tokenizer(QWEN3_DIR);
  const full = preprocessConversation(tok, templates.get("qwen3-instruct"), NAME, { maxLength: 2048 });
  const n = full.inputIds.length;
  for (const maxLength of [n, n - 1, n - 5, 3]) {
    const r = preprocessConversation(tok, templates.get("qwen3-instruct"), NAME, { maxLength });
    assert.equal(r.inputIds.length, Math.min(n, maxLength));
    assert.equal(r.truncated, maxLength < n);
    assert.deepEqual([...r.inputIds], [...full.inputIds.subarray(0, maxLength)]);
    assert.deepEqual([...r.lossMask], [...full.lossMask.subarray(0, maxLength)]);
  }
  assert.throws(() => preprocessConversation(tok, templates.get("qwen"), NAME, { maxLength: 0 }), DataError);
});

Deno.test("train-only-last-turn supervises the last assistant turn only", async () => {
  const tok = await tokenizer(QWEN3_DIR);
  const conv = [...NAME, { role: "user", content: "Again?" }, { role: "assistant", content: "Still Qwen2." }];
  const all = preprocessConversation(tok, templates.get("qwen3-instruct"), conv, { maxLength: 2048 });
  const last = preprocessConversation(tok, templates.get("qwen3-instruct"), conv, {
    maxLength: 2048,
    trainOnlyLastTurn: true,
  });
  assert.equal(maskRuns(all.lossMask).length, 2);
  assert.equal(tok.decode(masked(last.inputIds, last.lossMask)), "Still Qwen2.<|im_end|>\n");
});

Deno.test("normalization: system handling, from/value, leading non-user dropped, alternation cut", () => {
  const t = templates.get("qwen");
  let r = normalizeConversation([{ from: "human", value: "a" }, { from: "gpt", value: "b" }], t);
  assert.deepEqual(r.messages, [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "a" },
    { role: "assistant", content: "b" },
  ]);
  r = normalizeConversation([{ role: "system", content: "S" }, { role: "user", content: "a" }], t);
  assert.deepEqual(r.messages[0], { role: "system", content: "S" });
  assert.equal(r.notes.systemFromData, true);
  // No template system prompt: nothing prepended.
  r = normalizeConversation([{ role: "user", content: "a" }], templates.get("deepseek-r1-distill"));
  assert.deepEqual(r.messages, [{ role: "user", content: "a" }]);
  // Leading assistant messages are dropped.
  r = normalizeConversation([{ role: "assistant", content: "x" }, { role: "user", content: "a" }, {
    role: "assistant",
    content: "b",
  }], t);
  assert.equal(r.notes.droppedLeading, 1);
  assert.deepEqual(r.messages.slice(1).map((m) => m.role), ["user", "assistant"]);
  // assistant after assistant cuts the conversation there; tool after assistant is allowed.
  r = normalizeConversation([
    { role: "user", content: "a" },
    {
      role: "assistant",
      content: "b",
      tool_calls: '[{"function": {"name": "f", "arguments": "{\\"x\\": 1}"}}]',
    },
    { role: "tool", content: "r" },
    { role: "assistant", content: "c" },
    { role: "assistant", content: "d" },
    { role: "user", content: "e" },
  ], t);
  assert.deepEqual(r.messages.slice(1).map((m) => m.content), ["a", "b", "r", "c"]);
  assert.equal(r.notes.droppedAfterViolation, 2);
  assert.deepEqual(r.messages[2].tool_calls, [{
    id: "",
    type: "function",
    function: { name: "f", arguments: { x: 1 } },
  }]);
  // tool right after user cuts.
  r = normalizeConversation([{ role: "user", content: "a" }, { role: "tool", content: "r" }], t);
  assert.equal(r.messages.length, 2);
  // reasoning_content survives only for thinking templates.
  const withReasoning = [{ role: "user", content: "a" }, {
    role: "assistant",
    content: "b",
    reasoning_content: "hmm",
  }];
  assert.equal(normalizeConversation(withReasoning, t).messages[2].reasoning_content, undefined);
  assert.equal(
    normalizeConversation(withReasoning, templates.get("qwen3-thinking")).messages[2].reasoning_content,
    "hmm",
  );
});

Deno.test("qwen3-thinking renders reasoning_content through Qwen3's template and supervises it", async () => {
  const tok = await tokenizer(QWEN3_DIR);
  const r = preprocessConversation(tok, templates.get("qwen3-thinking"), [
    { role: "user", content: "2+2?" },
    { role: "assistant", content: "4", reasoning_content: "Add them." },
  ], { maxLength: 2048 });
  assert.equal(tok.decode(masked(r.inputIds, r.lossMask)), "<think>\nAdd them.\n</think>\n\n4<|im_end|>\n");
});

Deno.test("harmony (gpt-oss): SpecForge's text, roles and spans", () => {
  const text = renderHarmony([
    { role: "user", content: "Q" },
    { role: "assistant_analysis", content: "think" },
    { role: "assistant_final", content: "A" },
  ]);
  assert.ok(text.startsWith("<|start|>system<|message|>You are ChatGPT"));
  assert.ok(text.includes("Reasoning: low\n\n# Valid channels"));
  assert.ok(text.endsWith(
    "<|start|>user<|message|>Q<|end|><|start|>assistant<|channel|>analysis<|message|>think<|end|>" +
      "<|start|>assistant<|channel|>final<|message|>A<|end|>",
  ));
  const spans = assistantSpans(text, templates.get("gpt-oss")).map(([a, b]) => text.slice(a, b));
  // The span runs to the next user message, so consecutive assistant blocks form one span (as in SpecForge).
  assert.deepEqual(spans, [
    "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>A<|end|>",
  ]);
  assert.ok(
    renderHarmony([{ role: "assistant_reasoning_effort", content: "High" }, { role: "user", content: "Q" }])
      .includes("Reasoning: high"),
  );
  assert.throws(
    () => renderHarmony([{ role: "user", content: "Q" }, { role: "bot", content: "A" }]),
    /unknown role 'bot'/,
  );
});

Deno.test("templates without an end-of-turn string span to the next user header", () => {
  const text = "User:hiAssistant:helloUser:moreAssistant:bye";
  const spans = assistantSpans(text, templates.get("deepseek")).map(([a, b]) => text.slice(a, b));
  assert.deepEqual(spans, ["hello", "bye"]);
});

Deno.test({
  name: "tinystories' Llama tokenizer (no chat template) renders through the fallback with BOS",
  ignore: !hasTinyStories(),
  fn: async () => {
    const tok = await tokenizer(TINYSTORIES_DIR);
    assert.equal(tok.chatTemplate, null);
    assert.equal(tok.vocabSize, 2048);
    const r = preprocessConversation(tok, templates.get("phi4-mini"), [
      { role: "user", content: "Tell me a story." },
      { role: "assistant", content: "Once upon a time there was a cat." },
    ], { maxLength: 256 });
    assert.ok(r.text.startsWith("<|start_story|>You are a helpful assistant.<|user|>"));
    assert.ok(tok.decode(masked(r.inputIds, r.lossMask)).includes("Once upon a time there was a cat."));
    assert.ok(!tok.decode(masked(r.inputIds, r.lossMask)).includes("story."));
  },
});
if (!hasTinyStories()) console.log(`skipping the tinystories test: ${TINYSTORIES_DIR} is absent`);
