/**
 * Data-parallel training under Open MPI (lib/dist/world.ts, lib/train/data_parallel.ts): `mpirun -np 2` with
 * batch 2 per rank against one process with batch 4 on the same data logs the same losses and ends with the
 * same weights up to f32 summation order; only rank 0 writes; a checkpoint of 2 ranks resumes in one process
 * at the same global position; a rank killed with -9 stops the job, and the last checkpoint stays intact;
 * prepare-hidden-states splits its rows across the ranks; eval decodes a share of the prompts on each rank and
 * writes one process's report.
 * Skipped, saying why, where Open MPI's mpirun is not installed (.ci/run installs openmpi-bin).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu, rng } from "../gpu.ts";
import { TARGET, trainCliArgs } from "../train/fixtures.ts";
import { wordLevelTokenizerJson } from "../../lib/data/tokenizer.ts";
import { parseSafetensors, toFloat32 } from "../../lib/io/safetensors.ts";
import { CHECKPOINT_FILES, listCheckpoints, loadCheckpoint } from "../../lib/train/checkpoint.ts";
import { openFeatureSet } from "../../lib/offline/dataset.ts";

const TASK = new URL("../../tasks/train_online.ts", import.meta.url).pathname;
const ENV = { NODEVICE_SELECT: "1", OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1" };
/** Whether `mpirun --version` runs (Deno.Command throws at once, not in the promise, when it is absent). */
async function mpirunRuns(): Promise<boolean> {
  try {
    const r = await new Deno.Command("mpirun", { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
    return r.code === 0;
  } catch {
    return false;
  }
}
const hasMpirun = await mpirunRuns();
if (!hasMpirun) {
  console.log("tests/dist: skipped, Open MPI's mpirun is not installed (apt-get install openmpi-bin)");
}
const needsMpi = { ...needsGpu, ignore: needsGpu.ignore || !hasMpirun };

/** A target copy with a word-level tokenizer and 8 samples of 16 tokens (equal lengths: equal padding). */
async function fixture(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "eaglet-mpi-" });
  await Deno.mkdir(join(root, "target"));
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(join(TARGET, f), join(root, "target", f));
  }
  await Deno.writeTextFile(join(root, "target", "tokenizer.json"), wordLevelTokenizerJson(256));
  const r = rng(5);
  const rows = Array.from({ length: 8 }, (_, i) => {
    const ids = Array.from({ length: 16 }, () => 3 + Math.floor(r() * 60));
    return JSON.stringify({ id: `s${i}`, input_ids: ids, loss_mask: ids.map((_, t) => (t >= 4 ? 1 : 0)) });
  });
  await Deno.writeTextFile(join(root, "train.jsonl"), rows.join("\n") + "\n");
  return root;
}

/** train-online's arguments: 2 epochs of 8 samples, `batch` per rank, into `out`. */
/**
 * train-online's command line at `batch` per rank. SpecForge's KL loss (--draft-preset eagle3): it is a mean over
 * rows, so N ranks × batch b equal one process × N·b. The LK losses normalise the acceptance over each rank's
 * own rows (as DDP does in SpecForge), which a single larger batch does not.
 */
function trainArgs(root: string, out: string, batch: number, extra: string[] = []): string[] {
  const settings = trainCliArgs(root, out, { "batch-size": batch, "draft-preset": "eagle3" });
  return ["run", "-A", TASK, ...settings, ...extra];
}

async function run(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  const r = await new Deno.Command(cmd, { args, env: ENV, stdout: "null", stderr: "piped" }).output();
  return { code: r.code, stderr: new TextDecoder().decode(r.stderr) };
}

const mpirun = (args: string[]) => run("mpirun", ["--oversubscribe", "-np", "2", Deno.execPath(), ...args]);

function losses(root: string, out: string): number[] {
  return Deno.readTextFileSync(join(root, out, "metrics.jsonl")).trim().split("\n").map((l) =>
    JSON.parse(l).loss
  );
}

/** Asserts the master weights of two checkpoints agree within `tol` of each tensor's largest magnitude. */
function assertWeightsClose(a: string, b: string, tol: number): void {
  const read = (dir: string) =>
    parseSafetensors(Deno.readFileSync(join(dir, CHECKPOINT_FILES.weights)), dir).tensors;
  const [x, y] = [read(a), read(b)];
  for (const [name, t] of x) {
    const [u, v] = [toFloat32(t), toFloat32(y.get(name)!)];
    const scale = u.reduce((m, w) => Math.max(m, Math.abs(w)), 0);
    const worst = u.reduce((m, w, i) => Math.max(m, Math.abs(w - v[i])), 0);
    assert.ok(worst <= tol * scale, `${name}: worst difference ${worst} of scale ${scale}`);
  }
}

Deno.test({
  name: "mpirun -np 2 × batch 2 equals one process × batch 4; resumes on one process",
  ...needsMpi,
}, async () => {
  const root = await fixture();
  try {
    assert.equal((await run(Deno.execPath(), trainArgs(root, "single", 4))).code, 0);
    const dp = await mpirun(trainArgs(root, "dp", 2));
    assert.equal(dp.code, 0, dp.stderr);
    const [a, b] = [losses(root, "single"), losses(root, "dp")];
    assert.equal(a.length, 4);
    a.forEach((l, i) =>
      assert.ok(Math.abs(l - b[i]) <= 1e-5 * Math.abs(l), `update ${i + 1}: ${l} vs ${b[i]}`)
    );
    // Adam divides by √v: gradients that differ in the last f32 bits can move a weight by up to lr·(a few
    // ulp-scale ratios), so the weights agree to 1e-3 of each tensor's scale, not bit for bit.
    assertWeightsClose(join(root, "single", "epoch_1_step_4"), join(root, "dp", "epoch_1_step_4"), 1e-3);
    const listing = (out: string) => [...Deno.readDirSync(join(root, out))].map((e) => e.name).sort();
    assert.deepEqual(listing("dp"), listing("single"), "rank 0 alone writes, the same files");

    // Two ranks for 2 updates, then one process with the same global batch from that checkpoint.
    const half = await mpirun(trainArgs(root, "switch", 2, ["--max-num-steps", "2", "--save-interval", "2"]));
    assert.equal(half.code, 0, half.stderr);
    assert.equal((await loadCheckpoint(join(root, "switch", "epoch_0_step_2"))).state.worldSize, 2);
    assert.equal((await run(Deno.execPath(), trainArgs(root, "switch", 4, ["--resume"]))).code, 0);
    assert.deepEqual(losses(root, "switch").map((l) => l.toFixed(4)), a.map((l) => l.toFixed(4)));
    assertWeightsClose(join(root, "single", "epoch_1_step_4"), join(root, "switch", "epoch_1_step_4"), 1e-3);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({
  name: "mpirun -np 2 prepare-hidden-states: each rank writes its shard, together every row",
  ...needsMpi,
}, async () => {
  const root = await fixture();
  try {
    const out = join(root, "features");
    const task = new URL("../../tasks/prepare_hidden_states.ts", import.meta.url).pathname;
    const r = await mpirun([
      "run",
      "-A",
      task,
      "--target-model-path",
      join(root, "target"),
      "--data-path",
      join(root, "train.jsonl"),
      "--output-path",
      out,
      "--chat-template",
      "llama3",
      "--batch-size",
      "2",
      "--cache-dir",
      "",
    ]); // deno-fmt-ignore
    assert.equal(r.code, 0, r.stderr);
    const set = await openFeatureSet(out);
    assert.equal(set.dataset.length, 8);
    assert.equal(set.missing, 0, "rows of both shards are there");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({
  name: "mpirun -np 2 eval: the ranks' prompts gathered give one process's eval.json",
  ...needsMpi,
}, async () => {
  const root = await fixture();
  try {
    const task = new URL("../../tasks/eval.ts", import.meta.url).pathname;
    const args = (out: string) => [
      "run",
      "-A",
      task,
      "--target-model-path",
      join(root, "target"),
      "--draft-model-path",
      "random",
      "--data-path",
      join(root, "train.jsonl"),
      "--num-samples",
      "8",
      "--max-new-tokens",
      "8",
      "--num-steps",
      "3",
      "--temperature",
      "0.7",
      "--no-speed",
      "--output-dir",
      join(root, out),
    ]; // deno-fmt-ignore
    assert.equal((await run(Deno.execPath(), args("one"))).code, 0);
    const two = await mpirun(args("two"));
    assert.equal(two.code, 0, two.stderr);
    const summary = (out: string) => {
      const j = JSON.parse(Deno.readTextFileSync(join(root, out, "eval.json")));
      delete j.settings; // names the output directory
      return j;
    };
    assert.deepEqual(summary("two"), summary("one"));
    assert.equal(
      Deno.readTextFileSync(join(root, "two", "samples.html")),
      Deno.readTextFileSync(join(root, "one", "samples.html")).replaceAll(
        join(root, "one"),
        join(root, "two"),
      ),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** The PID of the rank-`rank` process whose command line names `marker` (from /proc). */
function rankPid(rank: number, marker: string): number | null {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      const env = Deno.readTextFileSync(`/proc/${e.name}/environ`);
      if (cmd.includes(marker) && env.includes(`OMPI_COMM_WORLD_RANK=${rank}\0`)) return Number(e.name);
    } catch { /* gone or not ours */ }
  }
  return null;
}

Deno.test(
  { name: "a rank killed with -9 stops every rank; the last checkpoint stays intact", ...needsMpi },
  async () => {
    const root = await fixture();
    try {
      const out = join(root, "killed");
      const child = new Deno.Command("mpirun", {
        args: [
          "--oversubscribe",
          "-np",
          "2",
          Deno.execPath(),
          ...trainArgs(root, "killed", 2, ["--save-interval", "1"]),
        ],
        env: ENV,
        stdout: "null",
        stderr: "null",
      }).spawn();
      const t0 = Date.now();
      while ((await listCheckpoints(out)).length === 0 && Date.now() - t0 < 120_000) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const pid = rankPid(1, out);
      assert.ok(pid !== null, "rank 1's process");
      Deno.kill(pid!, "SIGKILL");
      const status = await child.status;
      assert.notEqual(status.code, 0, "the job fails");
      const newest = (await listCheckpoints(out))[0];
      await loadCheckpoint(newest); // intact
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
