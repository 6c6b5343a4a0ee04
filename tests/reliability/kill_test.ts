/**
 * Reliability: `kill -9` of train-online, at random moments and in the middle of checkpoint saves, then
 * `--resume` until the run is done, ends with the same weights and optimizer state, bit for bit, as a run
 * that was never interrupted; no temporary file of the killed saves is left.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu, rng } from "../gpu.ts";
import { trainCliArgs, trainFixture } from "../train/fixtures.ts";
import { CHECKPOINT_FILES } from "../../lib/train/checkpoint.ts";

const TASK = new URL("../../tasks/train_online.ts", import.meta.url).pathname;

/** train-online's command line on a train fixture (batch 2, 4 epochs = 16 updates, a save after each update: long enough for every kill to land mid-run). */
function trainArgs(root: string, out: string): string[] {
  return ["run", "-A", TASK, ...trainCliArgs(root, out, { "num-epochs": 4, "save-interval": 1 })];
}

/** Starts train-online; resolves to its exit code. */
function start(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args,
    stdout: "null",
    stderr: "null",
    env: { NODEVICE_SELECT: "1", HF_HUB_OFFLINE: "1" },
  }).spawn();
}

/** Whether `dir` holds the temporary directory of an unfinished checkpoint (a save in progress). */
function saving(dir: string): boolean {
  try {
    return [...Deno.readDirSync(dir)].some((e) => e.name.startsWith(".epoch_") && e.name.includes(".tmp-"));
  } catch {
    return false;
  }
}

/** Kills `child` with SIGKILL once a save is in progress in `dir` (or after `maxMs`); false if it ended first. */
async function killDuringSave(child: Deno.ChildProcess, dir: string, maxMs: number): Promise<boolean> {
  let ended = false;
  child.status.then(() => ended = true);
  const t0 = Date.now();
  while (!ended && !saving(dir) && Date.now() - t0 < maxMs) await new Promise((r) => setTimeout(r, 1));
  if (ended) return false;
  child.kill("SIGKILL");
  await child.status;
  return true;
}

Deno.test({
  name: "kill -9 during training and during saves, then --resume: bit-identical to a straight run",
  ...needsGpu,
}, async () => {
  const root = await trainFixture();
  try {
    const straight = await start(trainArgs(root, "straight")).status;
    assert.equal(straight.code, 0);

    const args = [...trainArgs(root, "killed"), "--resume"];
    const out = join(root, "killed");
    const random = rng(17);
    let kills = 0, duringSave = 0;
    for (let attempt = 0; attempt < 12 && kills < 6; attempt++) {
      const child = start(args);
      let killed: boolean;
      if (attempt % 2 === 0) {
        killed = await killDuringSave(child, out, 60_000);
        if (killed) duringSave++;
      } else {
        await new Promise((r) => setTimeout(r, 1000 + random() * 2000));
        killed = true;
        try {
          child.kill("SIGKILL");
        } catch {
          killed = false; // it had finished
        }
        await child.status;
      }
      if (killed) kills++;
    }
    assert.ok(kills >= 5 && duringSave >= 2, `${kills} kills, ${duringSave} during a save`);
    const last = await start(args).status;
    assert.equal(last.code, 0);
    for (const f of [CHECKPOINT_FILES.weights, CHECKPOINT_FILES.optimizer, CHECKPOINT_FILES.model]) {
      const a = await Deno.readFile(join(root, "straight", "epoch_3_step_16", f));
      const b = await Deno.readFile(join(out, "epoch_3_step_16", f));
      assert.ok(
        a.length === b.length && a.every((v, i) => v === b[i]),
        `${f} identical after ${kills} kills`,
      );
    }
    const left = [...Deno.readDirSync(out)].map((e) => e.name).filter((n) => n.includes(".tmp-"));
    assert.deepEqual(left, [], "no temporary files of the killed saves are left");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
