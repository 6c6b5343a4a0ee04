/**
 * Reliability of prepare-data: a second run with other inputs into the same --output-path is refused instead
 * of reusing the first run's conversion; the output path's lock holds against a concurrent writer; the
 * temporary files a killed run left in --cache-dir are removed at the next start.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { main } from "../../tasks/prepare_data.ts";
import { lockOutputDir } from "../../lib/io/lock.ts";
import { fixture } from "../data/fixtures.ts";
import { runMain } from "./run_main.ts";

/** A PID that no process has: above the kernel's pid_max. */
const DEAD_PID = 1 << 23;

/** Runs prepare-data's `main` in-process; returns the exit code and every line it printed. */
async function prepare(args: string[]): Promise<{ code: number; lines: string[] }> {
  const r = await runMain(main, args);
  return { code: r.code, lines: [...r.errors, ...r.output] };
}

Deno.test("prepare-data: other inputs into an existing output are refused; the same input is reused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-prep-" });
  try {
    const out = join(dir, "out");
    const other = join(dir, "other.jsonl");
    const original = await Deno.readTextFile(fixture("sharegpt.jsonl"));
    await Deno.writeTextFile(other, original.replace("Hello", "Howdy"));
    const args = (input: string) => ["--dataset", "sharegpt", "--input", input, "--output-path", out];
    assert.equal((await prepare(args(fixture("sharegpt.jsonl")))).code, 0);
    const converted = join(out, "sharegpt_train.jsonl");
    const first = await Deno.readTextFile(converted);

    const same = await prepare(args(fixture("sharegpt.jsonl")));
    assert.equal(same.code, 0);
    assert.ok(same.lines.some((l) => l.includes("exists; skipping")), same.lines.join("\n"));

    const changed = await prepare(args(other));
    assert.equal(changed.code, 1);
    assert.deepEqual(changed.lines, [
      `prepare-data: ${converted} exists but was converted from other inputs (${converted}.source.json); ` +
      "pass --overwrite to convert again, or choose another --output-path",
    ]);
    assert.equal(await Deno.readTextFile(converted), first, "the first conversion is untouched");
    assert.equal((await prepare([...args(other), "--overwrite"])).code, 0);
    assert.notEqual(await Deno.readTextFile(converted), first);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prepare-data: a held --output-path fails at once; a killed run's temp cache file is removed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-prep-" });
  try {
    const out = join(dir, "out"), cache = join(dir, "cache");
    const args = ["--dataset", "sharegpt", "--input", fixture("sharegpt.jsonl"), "--output-path", out];
    const lock = await lockOutputDir(out, "another prepare-data");
    const busy = await prepare(args);
    await lock.release();
    assert.equal(busy.code, 1);
    assert.equal(busy.lines.length, 1);
    assert.match(
      busy.lines[0],
      new RegExp(`^prepare-data: ${out} is in use by PID ${Deno.pid} .*another prepare-data`),
    );

    await Deno.mkdir(cache);
    const stale = join(cache, `.abc.eaglet-tok.tmp-${DEAD_PID}-0-x1y2`);
    await Deno.writeFile(stale, new Uint8Array(1000));
    const ok = await prepare([...args, "--cache-dir", cache]);
    assert.equal(ok.code, 0, ok.lines.join("\n"));
    assert.ok(
      ok.lines.some((l) =>
        l.includes(`${cache}: removed 1 stale temporary file(s) of killed runs, 1000 bytes`)
      ),
    );
    assert.deepEqual([...Deno.readDirSync(cache)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
