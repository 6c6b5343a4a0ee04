/**
 * `deno task bench`: prints a table of speed figures (ms, GFLOP/s, tokens/s) for the engine's kernels and the
 * parts built on them, and writes the same rows as JSON. Figures only: nothing here is a test.
 */
import { dirname } from "node:path";
import { Gpu } from "../lib/gpu/device.ts";
import type { BenchOptions, BenchRow } from "../lib/bench/types.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand } from "../lib/flags.ts";
import { benchDispatch } from "../lib/bench/dispatch.ts";
import { benchMatmul } from "../lib/bench/matmul.ts";
import { benchAttention } from "../lib/bench/attention.ts";
import { benchLoss } from "../lib/bench/loss.ts";
import { benchData } from "../lib/bench/data.ts";
import { benchTarget } from "../lib/bench/target.ts";
import { benchEagle3 } from "../lib/bench/eagle3.ts";
import { benchTrain } from "../lib/bench/train.ts";
import { benchSpeculative } from "../lib/bench/speculative.ts";
import { benchScale } from "../lib/bench/scale.ts";
import { formatStepProfile, profileTrainingStep, type StepProfile } from "../lib/bench/profile_train.ts";
import { deviceReport } from "../lib/bench/device_report.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { enableMatmulAutotune } from "../lib/ops/matmul_autotune.ts";

type Bench = (gpu: Gpu, opts: BenchOptions) => Promise<BenchRow[]>;

/** Bench modules by group, in the order they run. */
const BENCHES: Record<string, Bench> = {
  dispatch: benchDispatch,
  matmul: benchMatmul,
  attention: benchAttention,
  loss: benchLoss,
  data: benchData,
  target: benchTarget,
  eagle3: benchEagle3,
  train: benchTrain,
  speculative: benchSpeculative,
  scale: benchScale,
};

/** The flags of `bench`. */
export const BENCH_FLAGS = {
  quick: { kind: "bool", help: "smaller shapes and fewer repetitions" },
  only: {
    kind: "string",
    arg: "list",
    help: `comma-separated groups to run, e.g. matmul,attention (default: all of ${
      Object.keys(BENCHES).join(", ")
    })`,
  },
  json: { kind: "string", default: "out/bench.json", arg: "file", help: "where to write the rows as JSON" },
  profile: {
    kind: "bool",
    help: "profile one online training step per kernel (time, share, GFLOP/s, GB/s, host time between " +
      "programs); runs no bench group unless --only names some",
  },
  autotune: {
    kind: "bool",
    help: "time the matmul register tiles per shape class once per adapter and use the fastest (CPU " +
      "adapters; same results bit for bit); choices cached in $XDG_CACHE_HOME/eaglet/matmul-autotune.json, " +
      "EAGLET_MATMUL_AUTOTUNE_CACHE=<file> relocates it, =none keeps it in memory",
  },
  "device-report": {
    kind: "string",
    arg: "file",
    help:
      "write a JSON report of the adapter (info, features, limits), the bench groups (all, or --only's), " +
      "the training-step profile and the buffer pool's peak: the run to make on a new machine",
  },
} as const satisfies FlagTable;

const USAGE =
  "deno task bench [--quick] [--only <groups>] [--json <file>] [--profile] [--autotune] [--device-report <file>]";

function formatTable(rows: BenchRow[]): string {
  const head = ["group", "name", "shape", "ms", "GFLOP/s", "tokens/s", "note"];
  const body = rows.map((r) => [
    r.group,
    r.name,
    r.shape,
    r.ms < 0.1 ? r.ms.toFixed(4) : r.ms.toFixed(2),
    r.gflops === undefined ? "" : r.gflops.toFixed(2),
    r.tokensPerSec === undefined ? "" : r.tokensPerSec.toFixed(0),
    r.note ?? "",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/** Runs `bench` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("bench", args, benchTask);
}

async function benchTask(args: string[]): Promise<void> {
  const cmd = parseCommand(BENCH_FLAGS, args);
  if (cmd.help) return console.log(flagHelp(BENCH_FLAGS, USAGE));
  const values = cmd.settings;
  const report = values.deviceReport;
  const groups = values.only
    ? values.only.split(",").map((s) => s.trim())
    : values.profile && !report
    ? []
    : Object.keys(BENCHES);
  for (const g of groups) {
    if (!(g in BENCHES)) {
      throw new Error(`unknown bench group ${g}; known: ${Object.keys(BENCHES).join(", ")}`);
    }
  }
  const gpu = await Gpu.create();
  try {
    console.log(`adapter: ${gpu.describe()}`);
    if (values.autotune) {
      const t = await enableMatmulAutotune(gpu);
      console.log(
        t
          ? `matmul autotune: ${t.choices.size} shape classes cached in ${t.cachePath ?? "memory"}`
          : "matmul autotune: not a CPU adapter, default tiles",
      );
    }
    const rows: BenchRow[] = [];
    for (const g of groups) {
      const got = await BENCHES[g](gpu, { quick: values.quick, explicit: values.only !== undefined });
      console.log(`\n${formatTable(got)}`);
      rows.push(...got);
    }
    let profile: StepProfile | null = null;
    if (values.profile || report) {
      profile = await profileTrainingStep(gpu, {
        seqLen: values.quick ? 64 : 128,
        reps: values.quick ? 1 : 2,
      });
      console.log(`\n${formatStepProfile(profile)}`);
    }
    const date = new Date().toISOString();
    if (rows.length > 0) {
      await writeJson(values.json, { adapter: gpu.describe(), date, rows });
      console.log(`\nwrote ${values.json}`);
    }
    if (report) {
      await writeJson(report, deviceReport(gpu, { date, quick: values.quick, rows, profile: profile! }));
      console.log(`wrote ${report}`);
    }
  } finally {
    gpu.destroy();
  }
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await Deno.mkdir(dirname(file), { recursive: true });
  await writeFileAtomic(file, JSON.stringify(value, null, 2) + "\n");
}

if (import.meta.main) Deno.exit(await main(Deno.args));
