/**
 * Reliability: a disk that fills up during a checkpoint save. Training runs with its output directory on a
 * small tmpfs (mounted by the test where the machine allows it, else the test says why it skips): the run
 * fails with one error naming the path and "No space left on device", and leaves no temporary files behind.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "../train/fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";

/** Mounts a tmpfs of `size` at a fresh directory; null (with the reason printed) when mounting is refused. */
async function smallTmpfs(size: string): Promise<string | null> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-tmpfs-" });
  const r = await new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir] })
    .output().catch((e) => ({ code: -1, stderr: new TextEncoder().encode(String(e)) }));
  if (r.code === 0) return dir;
  console.log(`skipped: cannot mount a tmpfs here (${new TextDecoder().decode(r.stderr).trim()})`);
  await Deno.remove(dir);
  return null;
}

Deno.test({
  name: "disk full during a checkpoint save: one error naming the path, nothing half-written",
  ...needsGpu,
}, async () => {
  const disk = await smallTmpfs("24k");
  if (!disk) return;
  const root = await trainFixture();
  try {
    const out = join(disk, "run");
    const run = trainOnline(gpu!, {
      settings: await trainSettings(root, "unused", { outputDir: out, saveInterval: 2, maxNumSteps: 2 }),
      hub: { cacheDir: join(root, "hub"), offline: true },
      progress: new ProgressPrinter(() => {}, false),
    });
    await assert.rejects(run, (e: Error) => {
      assert.match(e.message, new RegExp(`^${out}/epoch_0_step_2: .*No space left on device`));
      assert.ok(!e.message.includes("\n"));
      return true;
    });
    const left = [...Deno.readDirSync(out)].map((e) => e.name);
    assert.ok(!left.some((n) => n.includes(".tmp-")), `temporary files left: ${left}`);
    assert.ok(!left.some((n) => n.startsWith("epoch_")), `a checkpoint appeared: ${left}`);
  } finally {
    await new Deno.Command("umount", { args: [disk] }).output();
    await Deno.remove(disk, { recursive: true });
    await Deno.remove(root, { recursive: true });
  }
});
