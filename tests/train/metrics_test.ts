/** Metrics JSONL (resume truncation), simulated acceptance length, progress line, SVG plot. */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  formatDuration,
  formatProgress,
  MetricsLog,
  type MetricsRecord,
  ProgressPrinter,
  recordToJson,
  simulatedAcceptanceLength,
  tensorboardScalars,
} from "../../lib/train/metrics.ts";
import { renderTrainingPlot } from "../../lib/train/plot.ts";

function rec(step: number, split: "train" | "eval" = "train"): MetricsRecord {
  return {
    split,
    step,
    epoch: 0,
    loss: 3 - step / 10,
    ploss: [2, 3, 4],
    acc: [0.5, 0.4, 0.2],
    lr: 1e-3,
    elapsed: step,
  };
}

Deno.test("simulated acceptance length is Σ_k Π_{j≤k} acc_j", () => {
  assert.equal(simulatedAcceptanceLength([]), 0);
  assert.equal(simulatedAcceptanceLength([1, 1, 1]), 3);
  assert.ok(Math.abs(simulatedAcceptanceLength([0.5, 0.4, 0.2]) - (0.5 + 0.2 + 0.04)) < 1e-15);
});

Deno.test("metrics record JSON uses SpecForge's names", () => {
  const o = recordToJson(rec(5));
  assert.equal(o.ploss_2, 4);
  assert.equal(o.acc_1, 0.4);
  assert.ok(Math.abs((o.acc as number) - 1.1 / 3) < 1e-12);
  assert.ok(Math.abs((o.simulated_acc_len as number) - 0.74) < 1e-12);
});

Deno.test("metrics log: resuming drops the records after the checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "metrics.jsonl");
    const a = await MetricsLog.open(path, null);
    for (const s of [10, 20, 30]) await a.append(rec(s));
    await a.append(rec(20, "eval"));
    a.close();
    await Deno.writeTextFile(path, '{"split":"train","step":4', { append: true }); // a line cut by a kill
    const b = await MetricsLog.open(path, 20);
    assert.deepEqual(b.records.map((r) => [r.split, r.step]), [["train", 10], ["train", 20], ["eval", 20]]);
    await b.append(rec(30));
    b.close();
    const lines = (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.step), [10, 20, 20, 30]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("progress: plain lines off a terminal, a redrawn bar on one", () => {
  const s = {
    step: 120,
    totalSteps: 1000,
    epoch: 1,
    loss: 2.34567,
    acc: 0.4123,
    tokensPerSec: 1234.4,
    lr: 9.87e-4,
    eta: 185,
  };
  assert.equal(formatProgress(s), "step 120/1000 ep 1 loss 2.3457 acc 0.412 lr 9.87e-4 1234 tok/s ETA 3m05s");
  assert.equal(formatDuration(3725), "1h02m");
  const out: string[] = [];
  new ProgressPrinter((t) => out.push(t), false).show(s);
  assert.deepEqual(out, [formatProgress(s) + "\n"]);
  const tty: string[] = [];
  const p = new ProgressPrinter((t) => tty.push(t), true, 10);
  p.show(s);
  p.note("saved");
  assert.ok(tty[0].startsWith("\r\x1b[2K█░░░░░░░░░  12% step 120/1000"));
  assert.deepEqual(tty.slice(1), ["\n", "saved\n"]);
});

Deno.test("plot: a self-contained SVG with loss and every acc_k", () => {
  const svg = renderTrainingPlot([rec(10), rec(20), rec(20, "eval"), rec(30)], "run <a>");
  assert.ok(svg.startsWith("<?xml") && svg.trimEnd().endsWith("</svg>"));
  assert.ok(!svg.includes("<script") && !svg.includes("href="));
  for (const label of ["train loss", "eval loss", "acc_0", "acc_1", "acc_2", "eval acc_2", "run &lt;a&gt;"]) {
    assert.ok(svg.includes(label), label);
  }
  assert.equal((svg.match(/<path /g) ?? []).length, 4, "one train loss line + 3 acc lines");
});

Deno.test("metrics log: --report-to tensorboard mirrors each record as scalars in an event file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = { ...rec(10), lr: 1e-3, tokensPerSec: 250 };
    const tags = tensorboardScalars(r);
    assert.equal(tags["train/loss"], r.loss);
    assert.equal(tags["train/ploss_1"], r.ploss[1]);
    assert.equal(tags["train/acc_0"], r.acc[0]);
    assert.equal(tags["train/lr"], 1e-3);
    assert.equal(tags["train/tokens_per_s"], 250);
    const log = await MetricsLog.open(join(dir, "metrics.jsonl"), null, {
      tensorboardDir: join(dir, "runs"),
    });
    await log.append(r);
    log.close();
    const bytes = await Deno.readFile(log.tensorboardPath!);
    const text = new TextDecoder().decode(bytes);
    assert.ok(text.includes("brain.Event:2") && text.includes("train/ploss_1"), "version + scalar events");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
