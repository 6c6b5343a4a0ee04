/**
 * `deno task readme-flags`: rewrites the flag tables of README.md from the tasks' flag declarations
 * (lib/flags.ts `flagMarkdown` of each task's table in tasks/eaglet.ts `TASKS`), then formats README.md with
 * `deno fmt`. Each table sits between `<!-- flags: <task> -->` and `<!-- /flags -->`;
 * tests/cli/flags_test.ts fails when one differs from its declarations.
 */
import { flagMarkdown } from "../lib/flags.ts";
import { TASKS } from "./eaglet.ts";

/** Marks the start of a task's table: `<!-- flags: train-online -->`. */
const START = /^<!-- flags: ([a-z0-9-]+) -->$/;
/** Marks the end of a table. */
const END = "<!-- /flags -->";

/** A task's flag table as README.md holds it. */
export interface ReadmeTable {
  /** The task. */
  task: string;
  /** The lines between the markers. */
  lines: string[];
}

/** The flag tables of `readme`, in order. */
export function readmeTables(readme: string): ReadmeTable[] {
  const out: ReadmeTable[] = [];
  let current: ReadmeTable | null = null;
  for (const line of readme.split("\n")) {
    const start = START.exec(line);
    if (start) current = { task: start[1], lines: [] };
    else if (line === END && current) {
      out.push(current);
      current = null;
    } else if (current) current.lines.push(line);
  }
  return out;
}

/** The table of `task` as its declarations render it. */
export function renderedTable(task: string): string {
  const entry = TASKS[task];
  if (!entry) throw new Error(`README.md: <!-- flags: ${task} --> names no task`);
  return flagMarkdown(entry.flags);
}

/** `readme` with every table between markers replaced by the one its declarations render. */
export function rewriteTables(readme: string): string {
  const out: string[] = [];
  let inside = false;
  for (const line of readme.split("\n")) {
    const start = START.exec(line);
    if (start) {
      out.push(line, "", renderedTable(start[1]), "");
      inside = true;
    } else if (line === END) {
      out.push(line);
      inside = false;
    } else if (!inside) out.push(line);
  }
  return out.join("\n");
}

if (import.meta.main) {
  const path = new URL("../README.md", import.meta.url).pathname;
  await Deno.writeTextFile(path, rewriteTables(await Deno.readTextFile(path)));
  const fmt = await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", path] }).output();
  if (!fmt.success) throw new Error(`deno fmt ${path} failed`);
  console.log(`rewrote the flag tables of ${path}`);
}
