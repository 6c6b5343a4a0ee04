/**
 * `deno task bench --device-report`: the JSON report a run on a new machine brings back (adapter, limits, bench
 * rows, the training-step profile, peaks), made here on whatever adapter the tests run on; and the target
 * group's GPT-OSS rows on a tiny random GPT-OSS.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { main } from "../../tasks/bench.ts";
import type { DeviceReport } from "../../lib/bench/device_report.ts";
import { benchGptOss, GPT_OSS_BENCH } from "../../lib/bench/target.ts";
import { writeRandomGptOss } from "../../lib/bench/random_targets.ts";
import { TargetModel } from "../../lib/models/target.ts";

Deno.test(
  { name: "bench --device-report: adapter, rows, step profile and peak as JSON", ...needsGpu },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "eaglet-bench-report-" });
    try {
      const file = join(dir, "report.json"), rowsFile = join(dir, "rows.json");
      const rc = await main(["--quick", "--only", "dispatch", "--device-report", file, "--json", rowsFile]);
      assert.equal(rc, 0);
      const report: DeviceReport = JSON.parse(await Deno.readTextFile(file));
      assert.equal(report.version, 1);
      assert.match(report.adapter.description, /\S/);
      assert.ok(report.adapter.limits.maxStorageBufferBindingSize > 0);
      assert.ok(report.adapter.limits.maxComputeWorkgroupsPerDimension > 0);
      assert.ok(report.rows.length > 0 && report.rows.every((r) => r.group === "dispatch"));
      assert.deepEqual(JSON.parse(await Deno.readTextFile(rowsFile)).rows, report.rows);

      const p = report.profile;
      assert.equal(p.shape, "B4 T64 ttt7 Vd2048");
      assert.deepEqual(p.parts.map((x) => x.name), [
        "target forward (aux, draft logits, argmax)",
        "draft TTT forward + backward",
        "optimizer update",
      ]);
      assert.ok(p.stepMs > 0 && p.tokensPerSec > 0);
      assert.ok(Math.abs(p.hostGapMs - (p.stepMs - p.programsMs)) < 1e-6);
      for (const { name, profile } of p.parts) {
        assert.ok(profile.dispatches.length > 0, name);
        assert.ok(Number.isFinite(profile.wallMs) && profile.wallMs >= 0, name);
        const summed = profile.rows.reduce((s, r) => s + r.ms, 0);
        assert.ok(Math.abs(summed - profile.totalMs) < 1e-6 * Math.max(1, summed), name);
      }
      // The draft step's products state their FLOPs: 2·M·N·K each, summed per kernel.
      const step = p.parts[1].profile;
      const flops = step.rows.filter((r) => r.label.startsWith("matmul.") && r.flops > 0);
      assert.ok(flops.length > 0);
      for (const r of flops) {
        const own = step.dispatches.filter((d) => d.label === r.label).reduce(
          (s, d) => s + (d.flops ?? 0),
          0,
        );
        assert.equal(r.flops, own);
      }
      assert.ok(report.peakBytes >= p.peakBytes && p.peakBytes > 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test("bench: an unknown group is refused in one line", async () => {
  const errors: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => errors.push(args.join(" "));
  try {
    assert.equal(await main(["--only", "nosuch"]), 1);
  } finally {
    console.error = original;
  }
  assert.match(errors.join("\n"), /unknown bench group nosuch; known: dispatch, matmul/);
});

Deno.test({
  name: "bench target: a random GPT-OSS (MXFP4 experts) beside its dense twin, prefill and decode rows",
  ...needsGpu,
}, async () => {
  const dims = {
    ...GPT_OSS_BENCH,
    hidden: 64,
    layers: 2,
    heads: 2,
    kvHeads: 1,
    headDim: 32,
    vocab: 256,
    experts: 8,
    topK: 2,
    expertIntermediate: 64,
    slidingWindow: 8,
  };
  const sizes = { seqLen: 16, reps: 1, promptLen: 4, newTokens: 3, batches: [1, 2] };
  const rows = await benchGptOss(gpu!, dims, sizes);
  const gptOss = "random GPT-OSS (MXFP4 experts, E8 top-2 I64, 2/1 heads, window 8 on every other layer)";
  const dense = "random Llama, the GPT-OSS's active width (I128)";
  assert.deepEqual(rows.map((r) => `${r.name} | ${r.shape}`), [
    `${gptOss} prefill forward | B1 T16 H64 L2 V256`,
    `${gptOss} decode (KV cache) | B1 prompt 4 +3 H64 L2 V256`,
    `${gptOss} decode (KV cache) | B2 prompt 4 +3 H64 L2 V256`,
    `${dense} prefill forward | B1 T16 H64 L2 V256`,
    `${dense} decode (KV cache) | B1 prompt 4 +3 H64 L2 V256`,
    `${dense} decode (KV cache) | B2 prompt 4 +3 H64 L2 V256`,
  ]);
  for (const r of rows) {
    assert.ok(r.ms > 0 && Number.isFinite(r.tokensPerSec!) && r.tokensPerSec! > 0, r.name);
  }
});

Deno.test({
  name: "bench target: the random GPT-OSS is GPT-OSS-shaped, its residual stream and logits of order one",
  ...needsGpu,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-random-gpt-oss-" });
  try {
    const dims = {
      hidden: 128,
      layers: 4,
      heads: 4,
      kvHeads: 1,
      headDim: 32,
      vocab: 512,
      expertIntermediate: 128,
    };
    await writeRandomGptOss(dir, { ...GPT_OSS_BENCH, ...dims, experts: 16 });
    const model = await TargetModel.load(gpu!, dir, { onMessage: () => {} });
    try {
      const c = model.config;
      assert.equal(c.architecture, "GptOssForCausalLM");
      assert.ok(c.attentionSinks && c.qkvBias && c.oBias);
      assert.deepEqual(c.windowLayers, [true, false, true, false]);
      assert.equal(c.slidingWindow, 128);
      assert.equal(c.ropeScaling.type, "yarn");
      assert.deepEqual([c.moe!.experts, c.moe!.topK, c.moe!.gptOss], [16, 4, { gluLimit: 7, mxfp4: true }]);
      const T = 32, f = await model.forward(1, T, { aux: true, logits: true });
      f.run(Int32Array.from({ length: T }, (_, i) => 3 + i * 13), [T]);
      const [aux, logits] = [await f.aux!.readFloat(), await f.logits!.readFloat()];
      f.destroy();
      // Weights of scale 1/√fan-in (the MXFP4 experts' exponent chosen for it) keep the residual stream (the aux
      // states) and the logits of order one.
      const rms = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
      for (const [what, x] of [["aux states", aux], ["logits", logits]] as const) {
        assert.ok(x.every(Number.isFinite) && rms(x) > 0.05 && rms(x) < 5, `${what}: rms ${rms(x)}`);
      }
    } finally {
      model.destroy();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
