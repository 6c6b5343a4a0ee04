/** Checkpoint directories: atomic save, latest lookup, round trip, re-export in another dtype, bad files. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tinyExport } from "./fixtures.ts";
import {
  CHECKPOINT_VERSION,
  type CheckpointContents,
  exportCheckpoint,
  findLatestCheckpoint,
  loadCheckpoint,
  saveCheckpoint,
  TRAINING_STATE_DIR,
} from "../../lib/train/checkpoint.ts";
import { checkDraftExport } from "../../lib/models/export.ts";
import { fromFloat32, SafetensorsFile, toFloat32 } from "../../lib/io/safetensors.ts";

function contents(step: number): CheckpointContents {
  const exp = tinyExport(step);
  const weights = new Map([...exp.weights].map(([n, w]) => [n, fromFloat32(w.values, w.shape)]));
  const optimizer = new Map(
    [...exp.weights].map(([n, w]) => [`${n}.exp_avg`, fromFloat32(w.values.map((x) => x / 10), w.shape)]),
  );
  return {
    state: {
      version: CHECKPOINT_VERSION,
      globalStep: step,
      microSteps: 2 * step,
      position: { epoch: 1, step: 3 },
      totalSteps: 100,
      warmupSteps: 1,
      rng: { seed: 4 },
      settings: { batch_size: 2 },
      elapsed: 12.5,
    },
    weights,
    optimizer,
    export: exp,
    exportDtype: "bf16",
  };
}

Deno.test("checkpoint: save, find the latest, load back exactly", async () => {
  const out = await Deno.makeTempDir({ prefix: "eaglet-ckpt-" });
  try {
    assert.equal(await findLatestCheckpoint(join(out, "none")), null);
    await saveCheckpoint(out, 0, contents(5));
    await saveCheckpoint(out, 1, contents(12));
    await Deno.mkdir(join(out, ".epoch_2_step_20.tmp-1-1-x")); // an interrupted save's temporary
    await Deno.mkdir(join(out, "epoch_1_step_9"));
    const latest = await findLatestCheckpoint(out);
    assert.equal(latest, join(out, "epoch_1_step_12"));
    const c = await loadCheckpoint(latest!);
    const want = contents(12);
    assert.deepEqual(c.state, want.state);
    for (const [name, t] of want.weights) {
      assert.deepEqual(toFloat32(c.weights.get(name)!), toFloat32(t), name);
    }
    assert.equal(c.optimizer.size, want.optimizer.size);
    assert.deepEqual(Array.from(c.mapping.d2t), Array.from(want.export.mapping.d2t));
    await checkDraftExport(latest!);
    // A checkpoint without its state file is named.
    await assert.rejects(
      () => loadCheckpoint(join(out, "epoch_1_step_9")),
      /epoch_1_step_9\/training_state\.json: missing/,
    );
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("checkpoint: re-export from the f32 master weights in another dtype", async () => {
  const out = await Deno.makeTempDir({ prefix: "eaglet-ckpt-" });
  try {
    const c = contents(3);
    const dir = await saveCheckpoint(out, 0, c);
    const target = join(out, "sglang-f32");
    await exportCheckpoint(dir, target, { dtype: "f32" });
    const checked = await checkDraftExport(target);
    assert.equal(checked.dtype, "f32");
    assert.deepEqual(checked.json.eagle_config, {
      eagle_aux_hidden_state_layer_ids: [0, 1, 1],
      use_aux_hidden_state: true,
    });
    const f = await SafetensorsFile.open(join(target, "model.safetensors"));
    assert.deepEqual(
      toFloat32(await f.read("fc.weight")),
      Float32Array.from(c.export.weights.get("fc.weight")!.values),
    );
    f.close();
    await assert.rejects(() => exportCheckpoint(dir, target), /already exists/);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("checkpoint: only the servable weights are *.safetensors beside config.json; old flat layout loads", async () => {
  const out = await Deno.makeTempDir({ prefix: "eaglet-ckpt-" });
  try {
    const dir = await saveCheckpoint(out, 0, contents(3));
    const top = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(
      top,
      ["config.json", "model.safetensors", TRAINING_STATE_DIR, "training_state.json"].sort(),
    );
    const inner = [...Deno.readDirSync(join(dir, TRAINING_STATE_DIR))].map((e) => e.name).sort();
    assert.deepEqual(inner, ["optimizer.safetensors", "training_weights.safetensors"]);
    const want = await loadCheckpoint(dir);
    // A checkpoint written before training_state/ existed (files at the top) still resumes, same tensors.
    for (const f of inner) await Deno.rename(join(dir, TRAINING_STATE_DIR, f), join(dir, f));
    await Deno.remove(join(dir, TRAINING_STATE_DIR));
    const flat = await loadCheckpoint(dir);
    assert.deepEqual(flat.state, want.state);
    for (const [name, t] of want.weights) assert.deepEqual(toFloat32(flat.weights.get(name)!), toFloat32(t));
    assert.equal(flat.optimizer.size, want.optimizer.size);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
