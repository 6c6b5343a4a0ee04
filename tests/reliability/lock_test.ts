/**
 * Reliability: the output-directory lock (lib/io/lock.ts) within and across processes, the take-over of a
 * lock whose process was killed with -9, the clean-up of stale temporary files, and negative numbers after a
 * space on the command line (lib/flags.ts).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { claimOutputDir, LOCK_FILE, LockError, lockOutputDir, removeStaleTemps } from "../../lib/io/lock.ts";
import { type FlagTable, readArgs } from "../../lib/flags.ts";

/** A PID that no process has: above the kernel's pid_max. */
const DEAD_PID = 1 << 23;

Deno.test("a second writer of an output directory fails at once, naming the directory and the holder", async () => {
  const dir = await Deno.makeTempDir();
  const a = await lockOutputDir(dir, "train");
  await assert.rejects(lockOutputDir(dir, "train"), (e: Error) => {
    assert.ok(e instanceof LockError);
    assert.match(e.message, new RegExp(`${dir} is in use by PID ${Deno.pid} on .*started .*\\(train\\)`));
    assert.ok(!e.message.includes("\n"));
    return true;
  });
  await a.release();
  const b = await lockOutputDir(dir, "train");
  await b.release();
  assert.deepEqual([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir);
});

Deno.test("another process's lock holds; after kill -9 it is taken over with a note", async () => {
  const dir = await Deno.makeTempDir();
  const code = `import { lockOutputDir } from ${
    JSON.stringify(new URL("../../lib/io/lock.ts", import.meta.url).href)
  };
await lockOutputDir(${JSON.stringify(dir)}, "child"); console.log("locked"); setInterval(() => {}, 1000);`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "piped",
    stderr: "inherit",
  })
    .spawn();
  const reader = child.stdout.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  assert.match(first, /locked/);
  await assert.rejects(lockOutputDir(dir, "train"), new RegExp(`PID ${child.pid} .*\\(child\\)`));
  child.kill("SIGKILL");
  await child.status;
  reader.releaseLock();
  await child.stdout.cancel();
  const notes: string[] = [];
  const lock = await lockOutputDir(dir, "train", { note: (m) => notes.push(m) });
  assert.equal(notes.length, 1);
  assert.match(notes[0], new RegExp(`took over the lock of PID ${child.pid}`));
  const owner = JSON.parse(await Deno.readTextFile(join(dir, LOCK_FILE)));
  assert.equal(owner.pid, Deno.pid);
  await lock.release();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("stale temporary files of dead processes are removed with their bytes; live ones are kept", async () => {
  const dir = await Deno.makeTempDir();
  const stale = join(dir, `.epoch_0_step_2.tmp-${DEAD_PID}-1-abc`);
  await Deno.mkdir(stale);
  await Deno.writeFile(join(stale, "model.safetensors"), new Uint8Array(1000));
  await Deno.mkdir(join(dir, "group_0"));
  await Deno.writeFile(
    join(dir, "group_0", `.sample_3.safetensors.tmp-${DEAD_PID}-7-z9`),
    new Uint8Array(24),
  );
  const live = join(dir, `.metrics.jsonl.tmp-${Deno.pid}-1-x`);
  await Deno.writeFile(live, new Uint8Array(5));
  await Deno.writeFile(join(dir, "metrics.jsonl"), new Uint8Array(5));
  const notes: string[] = [];
  const lock = await claimOutputDir(dir, "train", { note: (m) => notes.push(m) });
  assert.match(notes.join("\n"), /removed 2 stale temporary file\(s\) of killed runs, 1024 bytes freed/);
  const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  assert.deepEqual(left, [LOCK_FILE, live.slice(dir.length + 1), "group_0", "metrics.jsonl"].sort());
  assert.deepEqual([...Deno.readDirSync(join(dir, "group_0"))], []);
  await lock.release();
  assert.deepEqual(await removeStaleTemps(dir), { count: 0, bytes: 0 });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("an empty output path is refused; a directory the lock created is removed when left empty", async () => {
  await assert.rejects(lockOutputDir("", "train"), /^LockError: --output-dir is empty/m);
  await assert.rejects(lockOutputDir("  ", "eval", { flag: "--output-dir" }), /--output-dir is empty/);
  const parent = await Deno.makeTempDir();
  const file = join(parent, "f");
  await Deno.writeTextFile(file, "x");
  await assert.rejects(
    lockOutputDir(file, "train"),
    new RegExp(`--output-dir ${file}: exists and is not a dir`),
  );
  const dir = join(parent, "new", "out");
  const lock = await lockOutputDir(dir, "train");
  await lock.release();
  assert.equal([...Deno.readDirSync(join(parent, "new"))].length, 0);
  await Deno.remove(parent, { recursive: true });
});

const TABLE = {
  "batch-size": { kind: "int", default: 1, min: 1, help: "samples per micro-batch" },
  "learning-rate": { kind: "float", default: 1e-4, above: 0, help: "peak learning rate" },
  "verbose": { kind: "bool", help: "more" },
} as const satisfies FlagTable;

Deno.test("a negative number after a space reaches the flag's range check", () => {
  for (const argv of [["--batch-size", "-4"], ["--batch-size=-4"]]) {
    assert.throws(() => readArgs(TABLE, argv), (e: Error) => {
      assert.match(e.message, /--batch-size/);
      assert.match(e.message, /-4/);
      assert.doesNotMatch(e.message, /ambiguous/);
      return true;
    });
  }
  assert.throws(() => readArgs(TABLE, ["--learning-rate", "-1e-3"]), /--learning-rate/);
  assert.equal(readArgs(TABLE, ["--batch-size", "4"]).given.get("batch-size"), 4);
  assert.throws(() => readArgs(TABLE, ["--verbose", "-4"]));
});
