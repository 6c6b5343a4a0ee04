/** SGLang export (SGLang `python/sglang/srt/models/llama_eagle3.py` `load_weights`): keys, shapes, dtypes, config.json fields, and the checks on write. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tinyExport } from "./fixtures.ts";
import { checkDraftExport, checkVllmExport, exportDraft } from "../../lib/models/export.ts";
import { checkSpeculatorsExport } from "../../lib/models/export_speculators.ts";
import { fromFloat32, SafetensorsFile, toFloat32, toNumbers } from "../../lib/io/safetensors.ts";
import { CHECKPOINT_VERSION, saveCheckpoint } from "../../lib/train/checkpoint.ts";
import { roundBf16 } from "../../lib/tensor.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-export-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("export: exactly the keys SGLang loads, bf16 weights, int64 d2t, bool t2d, no embedding", async () => {
  await withTempDir(async (root) => {
    const exp = tinyExport();
    const dir = join(root, "draft");
    await exportDraft(dir, exp);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "config.json",
      "model.safetensors",
    ]);
    const f = await SafetensorsFile.open(join(dir, "model.safetensors"));
    const expected = [
      "fc.weight",
      "midlayer.hidden_norm.weight",
      "midlayer.input_layernorm.weight",
      "midlayer.post_attention_layernorm.weight",
      "midlayer.self_attn.q_proj.weight",
      "midlayer.self_attn.k_proj.weight",
      "midlayer.self_attn.v_proj.weight",
      "midlayer.self_attn.o_proj.weight",
      "midlayer.mlp.gate_proj.weight",
      "midlayer.mlp.up_proj.weight",
      "midlayer.mlp.down_proj.weight",
      "norm.weight",
      "lm_head.weight",
      "d2t",
      "t2d",
    ];
    assert.deepEqual([...f.names].sort(), [...expected].sort());
    const shapes: Record<string, number[]> = {
      "fc.weight": [32, 96],
      "midlayer.self_attn.q_proj.weight": [32, 64],
      "midlayer.self_attn.k_proj.weight": [16, 64],
      "midlayer.self_attn.o_proj.weight": [32, 32],
      "midlayer.mlp.down_proj.weight": [32, 48],
      "lm_head.weight": [12, 32],
      "d2t": [12],
      "t2d": [50],
    };
    for (const [name, shape] of Object.entries(shapes)) assert.deepEqual(f.info(name).shape, shape, name);
    assert.equal(f.info("fc.weight").dtype, "BF16");
    assert.equal(f.info("d2t").dtype, "I64");
    assert.equal(f.info("t2d").dtype, "BOOL");
    const fc = toFloat32(await f.read("fc.weight"));
    const src = exp.weights.get("fc.weight")!.values;
    assert.ok(fc.every((x, i) => x === roundBf16(src[i])), "bf16 rounding to nearest even");
    const d2t = toNumbers(await f.read("d2t"));
    assert.deepEqual(d2t, Array.from(exp.mapping.d2t, Number));
    assert.deepEqual(toNumbers(await f.read("t2d")), Array.from(exp.mapping.t2d));
    f.close();
    const json = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    assert.deepEqual(json.architectures, ["LlamaForCausalLMEagle3"]);
    assert.equal(json.draft_vocab_size, 12);
    assert.equal(json.vocab_size, 50);
    assert.equal(json.tie_word_embeddings, false);
    assert.equal(json.num_hidden_layers, 1);
    assert.equal(json.torch_dtype, "bfloat16");
    // Not SpecForge's default ids for this target, so SGLang must be told.
    assert.deepEqual(json.eagle_config, {
      eagle_aux_hidden_state_layer_ids: [0, 1, 1],
      use_aux_hidden_state: true,
    });
    const checked = await checkDraftExport(dir);
    assert.equal(checked.dtype, "bf16");
  });
});

Deno.test("export: f16 and f32 on request; default aux ids leave eagle_config out", async () => {
  await withTempDir(async (root) => {
    for (const dtype of ["f16", "f32"] as const) {
      const exp = { ...tinyExport(), defaultAuxLayers: [0, 1, 1] };
      const dir = join(root, dtype);
      await exportDraft(dir, exp, { dtype });
      const f = await SafetensorsFile.open(join(dir, "model.safetensors"));
      assert.equal(f.info("lm_head.weight").dtype, dtype === "f16" ? "F16" : "F32");
      if (dtype === "f32") {
        assert.deepEqual(
          toFloat32(await f.read("norm.weight")),
          Float32Array.from(exp.weights.get("norm.weight")!.values),
        );
      }
      f.close();
      const json = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
      assert.equal(json.torch_dtype, dtype === "f16" ? "float16" : "float32");
      assert.equal(json.eagle_config, undefined);
    }
  });
});

Deno.test("export: missing, extra and misshapen tensors are refused and nothing is written", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "bad");
    const missing = tinyExport();
    missing.weights.delete("midlayer.mlp.up_proj.weight");
    await assert.rejects(
      () => exportDraft(dir, missing),
      /required tensor midlayer\.mlp\.up_proj\.weight is missing/,
    );
    const extra = tinyExport();
    extra.weights.set("embed_tokens.weight", { values: new Float32Array(50 * 32), shape: [50, 32] });
    await assert.rejects(
      () => exportDraft(dir, extra),
      /unexpected tensor embed_tokens\.weight \(the embedding is never exported/,
    );
    const misshapen = tinyExport();
    misshapen.weights.set("lm_head.weight", { values: new Float32Array(13 * 32), shape: [13, 32] });
    await assert.rejects(
      () => exportDraft(dir, misshapen),
      /lm_head\.weight has shape \[13, 32\], the config needs \[12, 32\]/,
    );
    assert.deepEqual([...Deno.readDirSync(root)], [], "no directory or temporary left behind");
  });
});

Deno.test("export check: a tampered directory is named", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "draft");
    await exportDraft(dir, tinyExport());
    const json = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    json.draft_vocab_size = 13;
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(json));
    await assert.rejects(
      () => checkDraftExport(dir),
      /lm_head\.weight has shape \[12, 32\], config\.json needs \[13, 32\]/,
    );
    await Deno.remove(join(dir, "config.json"));
    await assert.rejects(() => checkDraftExport(dir), /config\.json: missing/);
  });
});

Deno.test("export --format vllm: same tensors, aux ids top-level in vLLM's convention (+1), checked", async () => {
  await withTempDir(async (root) => {
    const exp = tinyExport();
    const sglang = join(root, "sglang"), vllm = join(root, "vllm");
    await exportDraft(sglang, exp);
    await exportDraft(vllm, exp, { format: "vllm" });
    const ids = exp.config.auxLayerIds!;
    assert.ok(ids && ids.length === 3, "the fixture pins aux ids");
    const json = JSON.parse(await Deno.readTextFile(join(vllm, "config.json")));
    assert.deepEqual(json.eagle_aux_hidden_state_layer_ids, ids.map((l) => l + 1));
    assert.equal(json.eagle_config.eagle_aux_hidden_state_layer_ids, undefined);
    assert.equal(json.eagle_config.use_aux_hidden_state, true);
    assert.deepEqual(json.architectures, ["LlamaForCausalLMEagle3"]);
    const checked = await checkVllmExport(vllm);
    assert.deepEqual(checked.auxLayerIds, ids.map((l) => l + 1));
    assert.deepEqual(
      await Deno.readFile(join(vllm, "model.safetensors")),
      await Deno.readFile(join(sglang, "model.safetensors")),
    );
    // An SGLang directory is not a vLLM one (its ids sit in eagle_config, in SGLang's convention).
    await assert.rejects(() => checkVllmExport(sglang), /eagle_config\.eagle_aux_hidden_state_layer_ids/);
  });
});

Deno.test("export --format speculators: Eagle3Speculator config and names, verifier inside, checked", async () => {
  await withTempDir(async (root) => {
    const exp = tinyExport();
    const sglang = join(root, "sglang"), spec = join(root, "spec");
    await exportDraft(sglang, exp);
    const verifier = { nameOrPath: "org/target", architectures: ["LlamaForCausalLM"] };
    await exportDraft(spec, exp, { format: "speculators", speculators: { verifier, speculativeTokens: 5 } });
    const json = JSON.parse(await Deno.readTextFile(join(spec, "config.json")));
    assert.deepEqual(json.architectures, ["Eagle3Speculator"]);
    assert.equal(json.speculators_model_type, "eagle3");
    assert.equal(json.norm_before_residual, false, "SpecForge's residual is the un-normed fc output");
    assert.equal(json.draft_vocab_size, 12);
    assert.equal(json.target_hidden_size, 32);
    assert.deepEqual(json.eagle_aux_hidden_state_layer_ids, [1, 2, 2], "vLLM's convention: SGLang's + 1");
    assert.equal(json.transformer_layer_config.model_type, "llama");
    assert.equal(json.transformer_layer_config.hidden_size, 32);
    assert.equal(json.transformer_layer_config.vocab_size, 50);
    assert.equal(json.transformer_layer_config.num_hidden_layers, 1);
    assert.deepEqual(json.speculators_config.proposal_methods[0].speculative_tokens, 5);
    assert.deepEqual(json.speculators_config.verifier, {
      name_or_path: "org/target",
      architectures: ["LlamaForCausalLM"],
    });
    const checked = await checkSpeculatorsExport(spec);
    assert.equal(checked.speculativeTokens, 5);
    // Same tensors as the SGLang export, midlayer.* named layers.0.* (Eagle3Speculator's modules).
    const a = await SafetensorsFile.open(join(sglang, "model.safetensors"));
    const b = await SafetensorsFile.open(join(spec, "model.safetensors"));
    try {
      assert.deepEqual(b.names.sort(), a.names.map((n) => n.replace(/^midlayer\./, "layers.0.")).sort());
      assert.ok(b.names.includes("layers.0.self_attn.q_proj.weight"));
      for (const name of a.names) {
        const other = await b.read(name.replace(/^midlayer\./, "layers.0."));
        const mine = await a.read(name);
        assert.deepEqual([other.dtype, other.shape, other.bytes], [mine.dtype, mine.shape, mine.bytes], name);
      }
    } finally {
      a.close();
      b.close();
    }
    await assert.rejects(() => checkSpeculatorsExport(sglang), /speculators_model_type must be "eagle3"/);
    await assert.rejects(
      () => exportDraft(join(root, "nov"), exp, { format: "speculators" }),
      /needs the verifier/,
    );
    assert.equal(pathExistsSync(join(root, "nov")), false, "nothing written");
  });
});

Deno.test("export --format speculators refuses an EAGLE-3.1 draft (no fc_norm in Eagle3SpeculatorConfig)", async () => {
  await withTempDir(async (root) => {
    const base = tinyExport();
    const config = { ...base.config, fcNorm: true };
    const weights = new Map(base.weights);
    for (let i = 0; i < 3; i++) {
      weights.set(`fc_norm.${i}.weight`, { values: new Float32Array(32).fill(1), shape: [32] });
    }
    const out = join(root, "spec");
    await assert.rejects(
      () =>
        exportDraft(out, { ...base, config, weights }, {
          format: "speculators",
          speculators: { verifier: { nameOrPath: "t" } },
        }),
      /EAGLE-3\.1 draft \(fc_norm\) has no speculators form/,
    );
    assert.equal(pathExistsSync(out), false, "nothing half-written");
  });
});

function pathExistsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("deno task export --format speculators: the checkpoint's target is the verifier; --check reads it", async () => {
  await withTempDir(async (root) => {
    const exp = tinyExport(3);
    const target = join(root, "target");
    await Deno.mkdir(target);
    await Deno.writeTextFile(
      join(target, "config.json"),
      JSON.stringify({ architectures: ["LlamaForCausalLM"] }),
    );
    const weights = new Map([...exp.weights].map(([n, w]) => [n, fromFloat32(w.values, w.shape)]));
    const ckpt = await saveCheckpoint(join(root, "run"), 0, {
      state: {
        version: CHECKPOINT_VERSION,
        globalStep: 3,
        microSteps: 3,
        position: { epoch: 1, step: 0 },
        totalSteps: 3,
        warmupSteps: 0,
        rng: { seed: 0 },
        settings: { target_model_path: target },
        elapsed: 1,
      },
      weights,
      optimizer: new Map(),
      export: exp,
      exportDtype: "bf16",
    });
    const task = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../../tasks/export.ts", import.meta.url).pathname, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const out = join(root, "spec");
    const made = await task(["--checkpoint", ckpt, "--output-dir", out, "--format", "speculators"]);
    assert.equal(made.code, 0, new TextDecoder().decode(made.stderr));
    const json = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    assert.deepEqual(json.speculators_config.verifier, {
      name_or_path: target,
      architectures: ["LlamaForCausalLM"],
    });
    assert.equal(json.speculators_config.proposal_methods[0].speculative_tokens, 3);
    const check = await task(["--check", out]);
    assert.equal(check.code, 0, new TextDecoder().decode(check.stderr));
    assert.match(new TextDecoder().decode(check.stdout), /OK — speculators EAGLE-3, 3 tokens per round/);
  });
});
