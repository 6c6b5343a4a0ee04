/**
 * `deno task export`: writes the SGLang serving directory of a training checkpoint (reference/specforge-spec.md
 * §6.2: config.json + model.safetensors with midlayer.*, fc, norm, lm_head, d2t, t2d; no embedding), in bf16
 * by default or f16/f32, checked after writing. Every checkpoint train-online saves already is such a
 * directory in the run's --export-dtype; this task re-exports it (another dtype, another place, another
 * vocab mapping) from the f32 master weights, or just checks a directory with --check.
 */
import { parseArgs } from "node:util";
import { checkDraftExport } from "../lib/io/export.ts";
import { exportCheckpoint, findLatestCheckpoint } from "../lib/train/checkpoint.ts";
import { loadVocabMapping } from "../lib/data/vocab.ts";
import { runTask } from "../lib/cli/run.ts";

const HELP = `deno task export --checkpoint <dir> --output-dir <dir> [options]
deno task export --check <dir>

  --checkpoint <dir>     a checkpoint (epoch_E_step_S) or a run's --output-dir (its latest checkpoint)
  --output-dir <dir>     the SGLang directory to write (atomically)
  --dtype <d>            bf16 (default), f16 or f32
  --vocab-mapping <file> replace d2t/t2d with this mapping (.safetensors or .json)
  --overwrite            replace --output-dir if it exists
  --check <dir>          only check an SGLang draft directory (keys, shapes, dtypes, config) and describe it
  --debug                print stack traces
  --help                 this text`;

/** Runs `export` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("export", args, exportTask);
}

async function exportTask(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: {
      checkpoint: { type: "string" },
      "output-dir": { type: "string" },
      dtype: { type: "string", default: "bf16" },
      "vocab-mapping": { type: "string" },
      overwrite: { type: "boolean", default: false },
      check: { type: "string" },
      debug: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (v.help) return console.log(HELP);
  if (v.check) {
    const c = await checkDraftExport(v.check);
    const cfg = c.config;
    console.log(
      `${v.check}: OK — ${c.dtype}, hidden ${cfg.hiddenSize}, intermediate ${cfg.intermediateSize}, heads ` +
        `${cfg.numHeads}/${cfg.numKvHeads}, draft vocab ${cfg.draftVocabSize} of ${cfg.vocabSize}, aux layers ` +
        `${cfg.auxLayerIds ? `[${cfg.auxLayerIds}]` : "default"}, ${c.names.length} tensors`,
    );
    return;
  }
  if (!v.checkpoint || !v["output-dir"]) {
    throw new Error("--checkpoint and --output-dir are required (see --help)");
  }
  const dtype = v.dtype;
  if (dtype !== "bf16" && dtype !== "f16" && dtype !== "f32") {
    throw new Error(`--dtype must be bf16, f16 or f32, got ${dtype}`);
  }
  const dir = (await findLatestCheckpoint(v.checkpoint)) ?? v.checkpoint;
  const vocabMapping = v["vocab-mapping"] ? await loadVocabMapping(v["vocab-mapping"]) : undefined;
  await exportCheckpoint(dir, v["output-dir"], { dtype, overwrite: v.overwrite, vocabMapping });
  console.log(`exported ${dir} → ${v["output-dir"]} (${dtype}, checked)`);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
