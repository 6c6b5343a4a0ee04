/**
 * report.html (lib/eval/report.ts renderReportHtml): its parts in the markup, and rendered by a real headless
 * Chromium (the DOM it builds has the three inline SVG charts; a screenshot is taken). The browser part skips,
 * with a printed reason, where no Chromium is installed (Debian: apt-get install chromium).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { evalSummary, renderReportHtml, samplesHtml } from "../../lib/eval/report.ts";
import type { SpeculativeEvalResult } from "../../lib/eval/speculative.ts";
import { renderTrainingPlot } from "../../lib/train/plot.ts";
import type { MetricsRecord } from "../../lib/train/metrics.ts";

const rec = (step: number, split: "train" | "eval"): MetricsRecord => ({
  split,
  step,
  epoch: 0,
  loss: 3 / step,
  ploss: [3 / step, 3.2 / step],
  acc: [0.1 * step, 0.05 * step],
  elapsed: step,
});

const PAGE = renderReportHtml({
  title: "Eaglet <test> run",
  headline: { "acceptance length τ": "1.750 (12 rounds)", speedup: "0.40×" },
  curvesSvg: renderTrainingPlot([rec(1, "train"), rec(2, "train"), rec(2, "eval")], "curves"),
  histogram: [3, 5, 4],
  acceptedAtPosition: [0.75, 0.33],
  settings: { target_model_path: "models/stories260K", ttt_length: 2 },
  links: [{ label: "speculative rounds", href: "samples.html" }],
});

Deno.test("report page: headline, curves, histogram, per-position acceptance, links, settings; escaped", () => {
  for (const id of ["headline", "curves", "histogram", "positions", "links", "settings"]) {
    assert.ok(PAGE.includes(`<section id="${id}">`), id);
  }
  assert.equal(PAGE.match(/<svg /g)?.length, 3);
  assert.ok(PAGE.includes("Eaglet &lt;test&gt; run") && !PAGE.includes("<test>"));
  assert.ok(PAGE.includes('href="samples.html"') && PAGE.includes("0.75"));
  assert.ok(
    !/<script|https?:\/\/(?!www\.w3\.org)/.test(PAGE),
    "self-contained: no script, no remote resource",
  );
});

function chromium(): string | null {
  for (const c of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      const r = new Deno.Command("which", { args: [c], stdout: "piped", stderr: "null" }).outputSync();
      if (r.success) return new TextDecoder().decode(r.stdout).trim();
    } catch { /* no `which` */ }
  }
  return null;
}

const CHROMIUM = chromium();
if (!CHROMIUM) {
  console.log("report page: browser test skipped: no chromium on PATH (apt-get install chromium)");
}

Deno.test({
  name: "report page: a headless Chromium renders it (DOM with the 3 charts, a screenshot)",
  ignore: CHROMIUM === null,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const html = join(dir, "report.html"), png = join(dir, "report.png");
      await Deno.writeTextFile(html, PAGE);
      const flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        `--user-data-dir=${join(dir, "profile")}`,
      ];
      const run = async (extra: string[]) => {
        const r = await new Deno.Command(CHROMIUM!, {
          args: [...flags, ...extra, `file://${html}`],
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert.ok(r.success, new TextDecoder().decode(r.stderr).slice(-500));
        return new TextDecoder().decode(r.stdout);
      };
      const dom = await run(["--dump-dom"]);
      assert.equal(dom.match(/<svg /g)?.length, 3, "the three inline charts are in the rendered DOM");
      assert.ok(dom.includes("acceptance length τ"));
      await run([`--screenshot=${png}`, "--window-size=1100,1800"]);
      const bytes = await Deno.readFile(png);
      assert.deepEqual([...bytes.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG");
      assert.ok(bytes.length > 5000, `screenshot of ${bytes.length} bytes`);
      const keep = Deno.env.get("EAGLET_REPORT_SCREENSHOT");
      if (keep) await Deno.copyFile(png, keep);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("samples page: opens with the headline figures in words, not a JSON dump", () => {
  const result = {
    config: { numSteps: 3, topk: 1, numDraftTokens: 4 },
    temperature: 0,
    stats: {
      rounds: 2,
      tau: 1.5,
      acceptedAtPosition: [0.5],
      conditionalAcceptance: [0.5],
      histogram: [1, 1],
    },
    targetTokensPerSecond: null,
    speculativeTokensPerSecond: null,
    speedup: null,
    matchesTargetGreedy: true,
    samples: [],
  } as unknown as SpeculativeEvalResult;
  const page = samplesHtml(result, evalSummary(result));
  assert.ok(page.includes("<th>accept length τ (tokens per target forward)</th><td>1.500</td>"), page);
  assert.ok(page.includes("<td>not measured</td>") && page.includes('href="eval.json"'));
  assert.ok(!page.includes("<pre>") && !page.includes('"tau"'));
});
