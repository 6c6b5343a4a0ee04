/**
 * The layer-streamed target (lib/models/target_stream.ts) against the resident one on the golden tiny targets
 * (8 layers, bf16; Llama, Qwen3 with its q/k norms, Phi-3 with fused matrices, Gemma 3 with its local and
 * global layers): with one slot, three slots (8 layers do not divide into them) and every layer in a slot,
 * each output (aux states, final hidden, subset logits, full-vocabulary statistics and top-k) equals the
 * resident forward's bit for bit, over two runs of different batches (the slots are rewritten each run); and
 * prepare-hidden-states under a budget of two layers writes the resident run's feature files byte for byte,
 * its memory plan holding two slots and meeting the measured peak; train-online under a budget of three layers
 * trains the resident run's draft bit for bit.
 */
import assert from "node:assert/strict";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { StreamedTarget } from "../../lib/models/target_stream.ts";
import { layerBytes } from "../../lib/models/target_memory.ts";
import { SafetensorsCheckpoint } from "../../lib/io/safetensors.ts";
import { loadTargetConfig, resolveWeightNames } from "../../lib/models/config.ts";
import type { Tensor } from "../../lib/tensor.ts";
import { join } from "node:path";
import { Gpu } from "../../lib/gpu/device.ts";
import { planPrepare, prepareHiddenStates } from "../../lib/offline/prepare.ts";
import { prepareOptions, trainFixture, trainSettings } from "../train/fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { CHECKPOINT_FILES } from "../../lib/train/checkpoint.ts";

const DIR = (arch: string) => new URL(`../golden/targets/${arch}/`, import.meta.url).pathname;
const OUTPUTS = [
  "aux",
  "finalHidden",
  "subsetLogits",
  "vocabMaxSum",
  "vocabArgmax",
  "topkIds",
  "topkValues",
] as const;

async function oneLayerBytes(dir: string, shaderF16: boolean): Promise<number> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    const cfg = await loadTargetConfig(`${dir}config.json`);
    const names = resolveWeightNames(cfg, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, dir);
    return layerBytes((n) => ckpt.info(n), names.layers[0], shaderF16);
  } finally {
    ckpt.close();
  }
}

for (const arch of ["llama", "qwen3", "phi3", "gemma3"]) {
  Deno.test(
    { name: `streamed target ${arch}: every output equals the resident forward's`, ...needsGpu },
    async () => {
      const g = gpu!;
      const auxLayers = [1, 3, 6];
      const resident = await TargetModel.load(g, DIR(arch), { auxLayers });
      const perLayer = await oneLayerBytes(DIR(arch), g.features.shaderF16);
      const B = 2, T = 12, V = resident.config.vocabSize;
      const outputs = {
        aux: true,
        finalHidden: true,
        subsetIds: Int32Array.from([3, 9, 40, 77]),
        vocabStats: true,
        topk: 4,
      };
      const want = await resident.forward(B, T, outputs);
      try {
        for (const slots of [1, 3, 8]) {
          const streamed = await StreamedTarget.load(g, DIR(arch), {
            budgetBytes: slots * perLayer + 7,
            auxLayers,
          });
          assert.equal(streamed.slots.length, slots);
          const got = await streamed.forward(B, T, outputs);
          try {
            for (const seed of [1, 2]) {
              const r = rng(seed);
              const ids = Int32Array.from({ length: B * T }, () => Math.floor(r() * V));
              const lengths = [T, T - 5 + seed];
              want.run(ids, lengths);
              await got.run(ids, lengths);
              for (const name of OUTPUTS) {
                const [a, b] = [await (want[name] as Tensor).read(), await (got[name] as Tensor).read()];
                assert.ok(
                  a.length === b.length && a.every((x, i) => Object.is(x, b[i])),
                  `${slots} slots, ${name}`,
                );
              }
            }
          } finally {
            got.destroy();
            streamed.destroy();
          }
        }
      } finally {
        want.destroy();
        resident.destroy();
      }
    },
  );
}

Deno.test(
  {
    name: "prepare-hidden-states --target-memory-budget writes the resident run's files; plan = peak",
    ...needsGpu,
  },
  async () => {
    const root = await trainFixture();
    try {
      const storage = { auxFormat: "bf16", groupSize: 32, teacherFormat: "hidden-bf16", topk: 16 } as const;
      const options = (out: string, budget: number | null) =>
        prepareOptions(root, out, storage, "train", {
          targetMemoryBudget: budget,
          log: (line) => logs.push(line),
        });
      const logs: string[] = [];
      const perLayer = await oneLayerBytes(join(root, "target/"), gpu!.features.shaderF16);
      await prepareHiddenStates(gpu!, options("resident", null));
      const device = await Gpu.create();
      try {
        const o = options("streamed", 2 * perLayer);
        const { plan } = await planPrepare(device, o);
        assert.ok(
          plan.categories[0].bytes < 3 * perLayer,
          "the plan holds two layer slots, not eight layers",
        );
        await prepareHiddenStates(device, o);
        assert.ok(logs.some((l) => l.includes("stream through 2 slots")), logs.join("\n"));
        const peak = device.pool.peakBytes;
        assert.ok(Math.abs(plan.peakBytes - peak) <= 0.1 * peak, `planned ${plan.peakBytes}, peak ${peak}`);
      } finally {
        device.destroy();
      }
      const files = async (dir: string) => {
        const out: string[] = [];
        for await (const e of Deno.readDir(dir)) {
          if (e.isDirectory) { for (const f of await files(join(dir, e.name))) out.push(join(e.name, f)); }
          else if (!e.name.startsWith(".")) out.push(e.name);
        }
        return out.sort();
      };
      const names = await files(join(root, "resident"));
      assert.deepEqual(await files(join(root, "streamed")), names);
      for (const f of names.filter((n) => n.endsWith(".safetensors"))) {
        const [a, b] = [
          await Deno.readFile(join(root, "resident", f)),
          await Deno.readFile(join(root, "streamed", f)),
        ];
        assert.ok(a.length === b.length && a.every((x, i) => x === b[i]), `${f} identical`);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  {
    name: "train-online --target-memory-budget trains the resident run's draft bit for bit; plan = peak",
    ...needsGpu,
  },
  async () => {
    const root = await trainFixture();
    try {
      const perLayer = await oneLayerBytes(join(root, "target/"), gpu!.features.shaderF16);
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const resident = await trainOnline(gpu!, {
        settings: await trainSettings(root, join(root, "resident")),
        hub,
        progress: new ProgressPrinter(() => {}, false),
      });
      const notes: string[] = [];
      const device = await Gpu.create();
      let streamed;
      try {
        streamed = await trainOnline(device, {
          settings: await trainSettings(root, join(root, "streamed"), {
            targetMemoryBudget: String(3 * perLayer),
          }),
          hub,
          progress: new ProgressPrinter((line) => notes.push(line), false),
        });
      } finally {
        device.destroy();
      }
      assert.ok(notes.some((l) => l.includes("stream through 3 slots")), notes.join("\n"));
      const gap = Math.abs(streamed.plannedPeakBytes - streamed.peakBytes);
      assert.ok(
        gap <= 0.1 * streamed.peakBytes,
        `planned ${streamed.plannedPeakBytes}, peak ${streamed.peakBytes}`,
      );
      for (const f of [CHECKPOINT_FILES.weights, CHECKPOINT_FILES.optimizer]) {
        const a = await Deno.readFile(join(resident.checkpoint!, f));
        const b = await Deno.readFile(join(streamed.checkpoint!, f));
        assert.ok(a.length === b.length && a.every((x, i) => x === b[i]), `${f} identical`);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
