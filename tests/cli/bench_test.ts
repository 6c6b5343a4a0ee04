/**
 * `deno task bench --device-report`: the JSON report a run on a new machine brings back (adapter, limits, bench
 * rows, the training-step profile, peaks), made here on whatever adapter the tests run on.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { main } from "../../tasks/bench.ts";
import type { DeviceReport } from "../../lib/bench/device_report.ts";

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
