/**
 * The demo's target on a fresh clone: with no ../shared and the hub unreachable (no network, or
 * HF_HUB_OFFLINE with an empty cache) it falls back to the embedded models/stories260K, says so, and that
 * directory is a complete target. Also the summary's labelled speedup projection.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { EMBEDDED_TARGET, main as demo, resolveDemoTarget } from "../../tasks/demo.ts";
import { needsGpu } from "../gpu.ts";
import { speedupProjection } from "../../lib/eval/report.ts";
import type { SpeculativeEvalResult } from "../../lib/eval/speculative.ts";
import { hubOptionsFromEnv } from "../../lib/io/hub.ts";

const NO_LOCAL = "/nonexistent/eaglet/tinystories-656K";

Deno.test("demo target: HF_HUB_OFFLINE, no local copy, empty cache → the embedded stories260K", async () => {
  const cache = await Deno.makeTempDir();
  try {
    const hub = hubOptionsFromEnv({ HOME: cache, HF_HUB_OFFLINE: "1" });
    const t = await resolveDemoTarget(null, hub, { local: NO_LOCAL });
    assert.deepEqual(t.source, "embedded");
    assert.deepEqual(t.targetDir, EMBEDDED_TARGET);
    assert.match(t.note ?? "", /HF_HUB_OFFLINE/);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("demo target: the hub unreachable (fetch fails) → the embedded stories260K", async () => {
  const cache = await Deno.makeTempDir();
  let calls = 0;
  try {
    const hub = {
      ...hubOptionsFromEnv({ HOME: cache }),
      fetch: () => {
        calls++;
        return Promise.reject(new TypeError("error sending request: dns error"));
      },
    };
    const t = await resolveDemoTarget(null, hub, { local: NO_LOCAL });
    assert(calls > 0, "the hub was tried first");
    assert.deepEqual(t.source, "embedded");
    assert.match(t.note ?? "", /cannot reach/);
    // No fallback when the embedded copy is missing too: the hub's error.
    await assert.rejects(() => resolveDemoTarget(null, hub, { local: NO_LOCAL, embedded: NO_LOCAL }));
    // A given target is used as given, never replaced.
    await assert.rejects(() => resolveDemoTarget(NO_LOCAL, hub));
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("demo target: the embedded directory is a complete HF Llama target", async () => {
  for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
    assert((await Deno.stat(join(EMBEDDED_TARGET, f))).size > 0, f);
  }
  const config = JSON.parse(await Deno.readTextFile(join(EMBEDDED_TARGET, "config.json")));
  assert.deepEqual([config.hidden_size, config.num_hidden_layers, config.vocab_size], [64, 5, 512]);
  assert.match(await Deno.readTextFile(join(EMBEDDED_TARGET, "PROVENANCE.md")), /MIT/);
});

Deno.test("speedupProjection: splits the measured time and projects L·N/(N+k)", () => {
  // 2 prompts; target: 10 tokens after the first in 0.1 s each (10 ms per forward); speculative: 10 tokens
  // after the first in 4 rounds taking 0.08 s (20 ms per round: 10 ms verify + 3 draft forwards of 3.33 ms).
  const sample = {
    prompt: [1],
    output: { tokens: new Array(11).fill(0), rounds: new Array(4).fill({}), decodeSeconds: 0.08 },
    targetTokens: new Array(11).fill(0),
    targetDecodeSeconds: 0.1,
  };
  const result = { config: { numSteps: 3 }, samples: [sample, sample] } as unknown as SpeculativeEvalResult;
  const p = speedupProjection(result, [1, 10, 100])!;
  const near = (a: number, b: number) => assert(Math.abs(a - b) < 1e-9, `${a} vs ${b}`);
  near(p.targetForwardSeconds, 0.01);
  near(p.roundSeconds, 0.02);
  near(p.draftForwardSeconds, 0.01 / 3);
  near(p.tokensPerRound, 2.5);
  near(p.measuredRatio, 3);
  near(p.projected[1].speedup, 2.5 * 10 / 13);
  near(p.projected[2].speedup, 2.5 * 100 / 103);
  const unmeasured = { ...result, samples: [{ ...sample, targetDecodeSeconds: null }] };
  assert.deepEqual(speedupProjection(unmeasured as unknown as SpeculativeEvalResult), null);
});

Deno.test({
  name: "demo: a tiny end-to-end run on the embedded target (no network, no ../shared)",
  ...needsGpu,
  fn: async () => {
    const out = await Deno.makeTempDir();
    try {
      const code = await demo([
        ...["--target-model-path", EMBEDDED_TARGET, "--output-dir", out, "--train-samples", "4"],
        ...["--batch-size", "4", "--eval-samples", "1", "--num-epochs", "1", "--continuation-tokens", "8"],
        ...["--max-new-tokens", "8", "--ttt-length", "2"],
      ]);
      assert.equal(code, 0);
      const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
      assert.equal(summary.target, EMBEDDED_TARGET);
      assert.equal(summary.training.updates, 1);
      const p = summary.eval.projection;
      assert.ok(p.targetForwardSeconds > 0 && p.draftForwardSeconds > 0, JSON.stringify(p));
      assert.deepEqual(p.projected.map((x: { factor: number }) => x.factor), [1, 10, 100]);
      assert.ok((await Deno.stat(join(out, "sglang-draft", "model.safetensors"))).size > 0);
      const events = [...Deno.readDirSync(summary.files.tensorboard)].map((e) => e.name);
      assert.equal(events.length, 1);
      assert.match(events[0], /^events\.out\.tfevents\./);
      const bytes = await Deno.readFile(join(summary.files.tensorboard, events[0]));
      assert.ok(new TextDecoder().decode(bytes).includes("train/acc_0"), "scalar events written");
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
