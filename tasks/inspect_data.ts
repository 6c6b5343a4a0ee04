/**
 * `deno task inspect-data`: one sample of a prepared data file, tokenized with its loss mask, shown with
 * supervised tokens highlighted in the terminal, as a standalone HTML page (--html), or as JSON (--json:
 * ids, token strings, mask) for scripts.
 */

import { parseArgs } from "node:util";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { DataError } from "../lib/data/errors.ts";
import { flagUsage, runTask } from "../lib/cli/run.ts";
import { inspectSample, renderHtml, renderTerminal } from "../lib/data/inspect.ts";
import { preprocessConversation, preprocessText } from "../lib/data/preprocess.ts";
import { parseRecord, readRecords } from "../lib/data/records.ts";
import { templates } from "../lib/data/templates.ts";
import { loadTokenizer } from "../lib/data/tokenizer.ts";

const FLAGS = {
  "input": { type: "string", help: "prepared data file (.jsonl/.json/.parquet) (required)" },
  "tokenizer": {
    type: "string",
    help: "tokenizer directory (tokenizer.json [+ tokenizer_config.json]) (required)",
  },
  "chat-template": {
    type: "string",
    default: "llama3",
    help: `template name: ${templates.names().join(", ")}`,
  },
  "chat-template-file": { type: "string", help: "Jinja file replacing the tokenizer's own chat template" },
  "index": { type: "string", default: "0", help: "0-based record index to show" },
  "id": { type: "string", help: "show the record with this id instead of --index" },
  "max-length": { type: "string", default: "2048", help: "tokens kept (right truncation)" },
  "train-only-last-turn": { type: "boolean", default: false, help: "supervise only the last assistant turn" },
  "html": { type: "string", help: "also write a standalone HTML page to this path" },
  "json": {
    type: "boolean",
    default: false,
    help: "print JSON {id, template, max_length, input_ids, tokens, loss_mask, text}",
  },
  "no-color": {
    type: "boolean",
    default: false,
    help: "plain text: supervised tokens in ⟦ ⟧, boundaries as │",
  },
  "debug": { type: "boolean", default: false, help: "print stack traces" },
  "help": { type: "boolean", default: false, help: "show this help" },
} as const;

function usage(): string {
  return flagUsage("usage: deno task inspect-data --input <file> --tokenizer <dir> [options]", FLAGS);
}

async function inspectData(v: ReturnType<typeof parse>["values"]): Promise<void> {
  if (!v.input || !v.tokenizer) throw new DataError("--input and --tokenizer are required (see --help)");
  const maxLength = Number(v["max-length"]);
  const index = Number(v.index);
  if (!(Number.isInteger(maxLength) && maxLength > 0)) {
    throw new DataError(`--max-length must be a positive integer, got '${v["max-length"]}'`);
  }
  if (!(Number.isInteger(index) && index >= 0)) {
    throw new DataError(`--index must be a non-negative integer, got '${v.index}'`);
  }
  const template = templates.get(v["chat-template"]);
  const chatTemplate = v["chat-template-file"] ? await Deno.readTextFile(v["chat-template-file"]) : undefined;
  const tok = await loadTokenizer(v.tokenizer, { chatTemplate });
  let count = 0;
  for await (const raw of readRecords(v.input)) {
    count++;
    const rec = parseRecord(raw, { harmonyRoles: template.parser === "openai-harmony" });
    if (v.id !== undefined ? rec.id !== v.id : raw.index !== index) continue;
    const opts = { maxLength, trainOnlyLastTurn: v["train-only-last-turn"] };
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
    const view = inspectSample(tok, sample, v["chat-template"], maxLength);
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
      console.log(renderTerminal(view, !v["no-color"] && Deno.stdout.isTerminal()));
    }
    if (v.html) {
      await writeFileAtomic(v.html, renderHtml(view));
      if (!v.json) console.log(`wrote ${v.html}`);
    }
    return;
  }
  throw new DataError(
    `${v.input}: no record ${
      v.id !== undefined ? `with id '${v.id}'` : `at index ${index}`
    } (${count} records)`,
  );
}

function parse(argv: string[]) {
  return parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false });
}

/** Runs `inspect-data` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("inspect-data", args, async (argv) => {
    const { values } = parse(argv);
    if (values.help) console.log(usage());
    else await inspectData(values);
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
