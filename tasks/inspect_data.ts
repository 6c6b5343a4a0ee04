/**
 * `deno task inspect-data`: one sample of a prepared data file, tokenized with its loss mask, shown with
 * supervised tokens highlighted in the terminal, as a standalone HTML page (--html), or as JSON (--json:
 * ids, token strings, mask) for scripts.
 */

import { writeFileAtomic } from "../lib/io/atomic.ts";
import { DataError } from "../lib/data/errors.ts";
import { runTask } from "../lib/cli/run.ts";
import { CHAT_TEMPLATE_FLAG } from "../lib/data/prepare.ts";
import { flagHelp, type FlagTable, parseCommand, type Settings } from "../lib/flags.ts";
import { inspectSample, renderHtml, renderTerminal } from "../lib/data/inspect.ts";
import { preprocessConversation, preprocessText } from "../lib/data/preprocess.ts";
import { parseRecord, readRecords } from "../lib/data/records.ts";
import { templates } from "../lib/data/templates.ts";
import { loadTokenizer } from "../lib/data/tokenizer.ts";

/** The flags of `inspect-data`. */
export const INSPECT_DATA_FLAGS = {
  "input": { kind: "string", required: true, help: "prepared data file (.jsonl/.json/.parquet)" },
  "tokenizer": {
    kind: "string",
    required: true,
    help: "tokenizer directory (tokenizer.json [+ tokenizer_config.json])",
  },
  "chat-template": CHAT_TEMPLATE_FLAG,
  "chat-template-file": { kind: "string", help: "Jinja file replacing the tokenizer's own chat template" },
  "index": { kind: "int", default: 0, min: 0, help: "0-based record index to show" },
  "id": { kind: "string", help: "show the record with this id instead of --index" },
  "max-length": { kind: "int", default: 2048, min: 1, help: "tokens kept (right truncation)" },
  "train-only-last-turn": { kind: "bool", help: "supervise only the last assistant turn" },
  "html": { kind: "string", help: "also write a standalone HTML page to this path" },
  "json": { kind: "bool", help: "print JSON {id, template, max_length, input_ids, tokens, loss_mask, text}" },
  "no-color": { kind: "bool", help: "plain text: supervised tokens in ⟦ ⟧, boundaries as │" },
} as const satisfies FlagTable;

const USAGE = "usage: deno task inspect-data --input <file> --tokenizer <dir> [options]";

async function inspectData(v: Settings<typeof INSPECT_DATA_FLAGS>): Promise<void> {
  const { maxLength, index } = v;
  const template = templates.get(v.chatTemplate);
  const chatTemplate = v.chatTemplateFile ? await Deno.readTextFile(v.chatTemplateFile) : undefined;
  const tok = await loadTokenizer(v.tokenizer, { chatTemplate });
  let count = 0;
  for await (const raw of readRecords(v.input)) {
    count++;
    const rec = parseRecord(raw, { harmonyRoles: template.parser === "openai-harmony" });
    if (v.id !== null ? rec.id !== v.id : raw.index !== index) continue;
    const opts = { maxLength, trainOnlyLastTurn: v.trainOnlyLastTurn };
    let sample;
    if (rec.kind === "tokens") {
      sample = {
        id: rec.id,
        inputIds: rec.inputIds.slice(0, maxLength),
        lossMask: rec.lossMask.slice(0, maxLength),
        truncated: rec.inputIds.length > maxLength,
        text: null,
      };
    } else if (rec.kind === "text") {
      sample = { id: rec.id, text: rec.text, ...preprocessText(tok, template, rec.text, opts) };
    } else {
      sample = { id: rec.id, ...preprocessConversation(tok, template, rec.conversations, opts, rec.tools) };
    }
    // Pre-tokenized records go through no chat template: say so rather than name the default one.
    const templateLabel = rec.kind === "tokens" ? "none (pre-tokenized input_ids)" : v.chatTemplate;
    const view = inspectSample(tok, sample, templateLabel, maxLength);
    if (v.json) {
      console.log(JSON.stringify({
        id: view.id,
        template: view.template,
        max_length: view.maxLength,
        truncated: view.truncated,
        input_ids: view.inputIds,
        tokens: view.tokens,
        loss_mask: view.lossMask,
        text: view.text,
      }));
    } else {
      console.log(renderTerminal(view, !v.noColor && Deno.stdout.isTerminal()));
    }
    if (v.html) {
      await writeFileAtomic(v.html, renderHtml(view));
      if (!v.json) console.log(`wrote ${v.html}`);
    }
    return;
  }
  throw new DataError(
    `${v.input}: no record ${v.id !== null ? `with id '${v.id}'` : `at index ${index}`} (${count} records)`,
  );
}

/** Runs `inspect-data` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("inspect-data", args, async (argv) => {
    const cmd = parseCommand(INSPECT_DATA_FLAGS, argv);
    if (cmd.help) console.log(flagHelp(INSPECT_DATA_FLAGS, USAGE));
    else await inspectData(cmd.settings);
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
