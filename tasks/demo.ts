/**
 * `deno task demo`: the whole mission end to end on a real tiny target, tinystories-656K (the local copy in
 * ../shared/models when present, else the Hugging Face id raincandy-u/TinyStories-656K through the hub
 * code):
 *
 * 1. self-distilled data: story openings the target samples, continued greedily by the target itself;
 * 2. preparation: tokenized through the preprocessing cache, one sample rendered as an HTML view;
 * 3. online training of an EAGLE-3 draft (checkpoints, metrics.jsonl, training_curves.svg);
 * 4. export for SGLang (bf16), checked after writing;
 * 5. evaluation by speculative decoding with the target: acceptance length and speedup.
 *
 * Everything goes into one folder (--output-dir, default out/demo); the summary names every file.
 * `--self-check` instead runs each kernel family against its CPU reference on this device.
 */
import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { Gpu } from "../lib/gpu/device.ts";
import { selfCheck } from "../lib/gpu/self_check.ts";
import { hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { pathExists, writeFileAtomic, writeJsonAtomic } from "../lib/io/atomic.ts";
import { checkDraftExport } from "../lib/io/export.ts";
import { TargetModel } from "../lib/models/target.ts";
import { buildTokenizedDataset } from "../lib/data/build.ts";
import { inspectSample, renderHtml } from "../lib/data/inspect.ts";
import { templates } from "../lib/data/templates.ts";
import { loadTokenizer } from "../lib/data/tokenizer.ts";
import { selfDistilledSamples, writeJsonl } from "../lib/train/selfdistill.ts";
import { parseTrainArgs } from "../lib/train/config.ts";
import { RUN_FILES, trainOnline } from "../lib/train/trainer.ts";
import { exportCheckpoint } from "../lib/train/checkpoint.ts";
import { formatDuration, simulatedAcceptanceLength } from "../lib/train/metrics.ts";
import { loadDraftDirectory } from "../lib/eval/draft_dir.ts";
import { promptsFromSamples, runSpeculativeEval } from "../lib/eval/speculative.ts";
import { evalSummary, writeEvalReport } from "../lib/eval/report.ts";
import { runTask } from "../lib/cli/run.ts";
import { ProgressBar } from "../lib/cli/progress.ts";

/** The local copy of the demo's target, relative to the repository root. */
const LOCAL_TARGET = "../shared/models/tinystories-656K";
/** The same model on the Hugging Face hub. */
const HUB_TARGET = "raincandy-u/TinyStories-656K";

/** Every flag: name → [kind, default, help]. Defaults are sized for about 5 minutes on 2 CPU cores. */
const FLAGS = {
  "target-model-path": [
    "string",
    "",
    `target checkpoint (default: ${LOCAL_TARGET} if present, else ${HUB_TARGET})`,
  ],
  "output-dir": ["string", "out/demo", "where every output goes (its demo subfolders are replaced)"],
  "train-samples": ["int", 64, "self-distilled training samples"],
  "eval-samples": ["int", 8, "held-out samples (training eval and speculative-decoding prompts)"],
  "opening-tokens": ["int", 16, "tokens of each sampled story opening, BOS included"],
  "continuation-tokens": ["int", 48, "greedy target tokens after the opening (the supervised part)"],
  "num-epochs": ["int", 14, "passes over the training samples"],
  "batch-size": ["int", 4, "samples per update"],
  "learning-rate": ["float", 5e-3, "peak learning rate (warmup then cosine decay)"],
  "ttt-length": ["int", 4, "training-time-test unroll depth (SpecForge's default is 7)"],
  "draft-vocab-size": ["int", 512, "draft vocabulary: the most frequent supervised target tokens"],
  "num-steps": ["int", 3, "draft tokens per speculative round (SGLang's --speculative-num-steps)"],
  "max-new-tokens": ["int", 48, "tokens generated per evaluation prompt"],
  "seed": ["int", 0, "seed of the openings, the draft's initialisation and the data order"],
  "self-check": ["bool", false, "only check the WebGPU engine: each kernel family against its CPU reference"],
  "debug": ["bool", false, "print stack traces on errors"],
  "help": ["bool", false, "this text"],
} as const;

type Flag = keyof typeof FLAGS;

function usage(): string {
  const lines = Object.entries(FLAGS).map(([name, [kind, def, help]]) => {
    const arg = kind === "bool" ? "" : ` <${kind}>`;
    const d = kind === "bool" || def === "" ? "" : ` (default: ${def})`;
    return `  --${name}${arg}\n      ${help}${d}`;
  });
  return `deno task demo [options]

End to end on tinystories-656K: self-distilled data → preparation → online EAGLE-3 training → SGLang
export → speculative-decoding evaluation (acceptance length, speedup). About 5 minutes on 2 CPU cores.

${lines.join("\n")}`;
}

/** The demo's settings, resolved from the flags. */
interface DemoOptions {
  target: string;
  outputDir: string;
  trainSamples: number;
  evalSamples: number;
  openingTokens: number;
  continuationTokens: number;
  numEpochs: number;
  batchSize: number;
  learningRate: number;
  tttLength: number;
  draftVocabSize: number;
  numSteps: number;
  maxNewTokens: number;
  seed: number;
}

function parseDemoArgs(args: string[]): { help: boolean; selfCheck: boolean; options: DemoOptions } {
  const { values } = parseArgs({
    args,
    options: Object.fromEntries(
      Object.entries(FLAGS).map(([k, [kind]]) => [k, { type: kind === "bool" ? "boolean" : "string" }]),
    ) as Record<Flag, { type: "string" | "boolean" }>,
    strict: true,
    allowPositionals: false,
  });
  const v = values as Record<string, string | boolean | undefined>;
  const num = (name: Flag): number => {
    const [kind, def] = FLAGS[name];
    const raw = v[name];
    if (raw === undefined) return def as number;
    const n = Number(raw);
    if (
      String(raw).trim() === "" || !Number.isFinite(n) || (kind === "int" && !Number.isInteger(n)) || n < 0
    ) {
      throw new Error(
        `--${name} must be a non-negative ${kind === "int" ? "integer" : "number"}, got "${raw}"`,
      );
    }
    return n;
  };
  const options: DemoOptions = {
    target: (v["target-model-path"] as string | undefined) ?? "",
    outputDir: (v["output-dir"] as string | undefined) ?? FLAGS["output-dir"][1],
    trainSamples: num("train-samples"),
    evalSamples: num("eval-samples"),
    openingTokens: num("opening-tokens"),
    continuationTokens: num("continuation-tokens"),
    numEpochs: num("num-epochs"),
    batchSize: num("batch-size"),
    learningRate: num("learning-rate"),
    tttLength: num("ttt-length"),
    draftVocabSize: num("draft-vocab-size"),
    numSteps: num("num-steps"),
    maxNewTokens: num("max-new-tokens"),
    seed: num("seed"),
  };
  for (
    const k of [
      "trainSamples",
      "evalSamples",
      "openingTokens",
      "continuationTokens",
      "batchSize",
      "draftVocabSize",
    ] as const
  ) {
    if (options[k] < 1) throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be ≥ 1`);
  }
  if (options.trainSamples < options.batchSize) {
    throw new Error(`--train-samples ${options.trainSamples} makes no full batch of ${options.batchSize}`);
  }
  return { help: v.help === true, selfCheck: v["self-check"] === true, options };
}

/** Runs `demo` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("demo", args, async (argv) => {
    const parsed = parseDemoArgs(argv);
    if (parsed.help) console.log(usage());
    else if (parsed.selfCheck) return await engineSelfCheck();
    else await runDemo(parsed.options);
  });
}

/** `--self-check`: the adapter, its limits and every kernel family against its CPU reference. */
async function engineSelfCheck(): Promise<number> {
  const gpu = await Gpu.create();
  try {
    console.log(`adapter: ${gpu.describe()}`);
    const l = gpu.limits;
    console.log(
      `limits: binding ${l.maxStorageBufferBindingSize / 2 ** 20} MiB, workgroup memory ` +
        `${
          l.maxComputeWorkgroupStorageSize / 1024
        } KiB, ${l.maxComputeInvocationsPerWorkgroup} invocations, ` +
        `${l.maxStorageBuffersPerShaderStage} storage buffers per stage`,
    );
    const results = await selfCheck(gpu);
    for (const r of results) console.log(`  ${r.ok ? "ok  " : "FAIL"} ${r.name}: ${r.detail}`);
    const ok = results.every((r) => r.ok);
    console.log(ok ? "\nengine OK" : "\nengine check FAILED");
    return ok ? 0 : 1;
  } finally {
    gpu.destroy();
  }
}

/** The demo's output layout under --output-dir. */
function layout(out: string) {
  return {
    data: join(out, "data"),
    trainJsonl: join(out, "data", "train.jsonl"),
    evalJsonl: join(out, "data", "eval.jsonl"),
    sampleHtml: join(out, "data", "sample_0.html"),
    cache: join(out, "cache"),
    train: join(out, "train"),
    export: join(out, "sglang-draft"),
    eval: join(out, "eval"),
    summary: join(out, "summary.json"),
  };
}

async function runDemo(o: DemoOptions): Promise<void> {
  const t0 = performance.now();
  const clock = () => formatDuration((performance.now() - t0) / 1000);
  const step = (n: number, title: string) => console.log(`\n[${n}/5 · ${clock()}] ${title}`);
  const paths = layout(o.outputDir);
  // A rerun replaces the demo's own outputs (a stale checkpoint would otherwise sit next to the new one).
  for (const p of [paths.data, paths.cache, paths.train, paths.export, paths.eval, paths.summary]) {
    await Deno.remove(p, { recursive: true }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
  await Deno.mkdir(paths.data, { recursive: true });

  // The target: the local copy, else the hub (downloaded once into the cache).
  const hub = hubOptionsFromEnv(Deno.env.toObject());
  const spec = o.target ||
    ((await pathExists(join(LOCAL_TARGET, "config.json"))) ? LOCAL_TARGET : HUB_TARGET);
  const targetDir = await resolveModelPath(spec, {
    ...hub,
    onProgress: (p) => {
      if (p.total !== null && p.received === p.total) console.log(`  downloaded ${p.repo}/${p.file}`);
    },
  });
  const gpu = await Gpu.create();
  console.log(
    `Eaglet demo on ${gpu.describe()}\ntarget: ${spec}${spec === targetDir ? "" : ` (${targetDir})`}`,
  );
  try {
    // 1. Self-distilled data.
    const total = o.trainSamples + o.evalSamples;
    step(
      1,
      `self-distilled data: ${total} story openings of ${o.openingTokens} tokens sampled by the target, ` +
        `each continued by ${o.continuationTokens} greedy target tokens`,
    );
    const target = await TargetModel.load(gpu, targetDir);
    const bar = new ProgressBar("  samples", total);
    let samples;
    try {
      samples = await selfDistilledSamples(target, {
        count: total,
        openingTokens: o.openingTokens,
        continuationTokens: o.continuationTokens,
        seed: o.seed,
        batch: 8,
        onProgress: (n) => bar.update(n),
      });
    } finally {
      bar.done();
      target.destroy();
    }
    await writeJsonl(paths.trainJsonl, samples.slice(0, o.trainSamples));
    await writeJsonl(paths.evalJsonl, samples.slice(o.trainSamples));
    console.log(`  wrote ${paths.trainJsonl} (${o.trainSamples}) and ${paths.evalJsonl} (${o.evalSamples})`);

    // 2. Preparation: the same build (and cache entry) the trainer reads next.
    step(2, "prepare: tokenized samples and loss masks into the preprocessing cache");
    const maxLength = o.openingTokens + o.continuationTokens;
    const tokenizer = await loadTokenizer(targetDir);
    const templateName = "llama3";
    const built = await buildTokenizedDataset({
      dataPath: paths.trainJsonl,
      tokenizer,
      templateName,
      template: templates.get(templateName),
      maxLength,
      cacheDir: paths.cache,
      log: (l) => console.log(`  ${l}`),
    });
    const st = built.stats;
    console.log(`  ${st.samples} samples, ${st.tokens} tokens, ${st.supervisedTokens} supervised`);
    const first = built.dataset.sample(0);
    await writeFileAtomic(
      paths.sampleHtml,
      renderHtml(inspectSample(tokenizer, first, templateName, maxLength)),
    );
    console.log(`  HTML view of sample ${first.id} (supervised tokens highlighted): ${paths.sampleHtml}`);

    // 3. Online training.
    const batches = Math.floor(o.trainSamples / o.batchSize);
    const updates = batches * o.numEpochs;
    step(3, `online training: ${updates} updates (batch ${o.batchSize}, TTT ${o.tttLength})`);
    const parsed = await parseTrainArgs([
      ...["--target-model-path", targetDir, "--train-data-path", paths.trainJsonl],
      ...["--eval-data-path", paths.evalJsonl, "--output-dir", paths.train, "--cache-dir", paths.cache],
      ...["--chat-template", templateName, "--max-length", String(maxLength)],
      ...["--num-epochs", String(o.numEpochs), "--batch-size", String(o.batchSize)],
      ...["--learning-rate", String(o.learningRate), "--ttt-length", String(o.tttLength)],
      ...[
        "--draft-vocab-size",
        String(Math.min(o.draftVocabSize, tokenizer.vocabSize)),
        "--seed",
        String(o.seed),
      ],
      ...["--warmup-ratio", "0.05", "--max-grad-norm", "0.5"],
      ...["--log-interval", String(Math.max(1, Math.round(updates / 12)))],
      ...["--eval-interval", String(Math.max(1, Math.round(updates / 3))), "--save-interval", "0"],
    ]);
    if (parsed.help) throw new Error("unreachable: --help was not given");
    const run = await trainOnline(gpu, { settings: parsed.settings, hub });
    if (!run.checkpoint) throw new Error("training wrote no checkpoint");
    const last = run.lastEval ?? run.lastTrain;
    const simulated = last ? simulatedAcceptanceLength(last.acc) : NaN;

    // 4. Export for SGLang (every checkpoint already is one; this writes the serving copy on its own).
    step(4, "export for SGLang (bf16)");
    await exportCheckpoint(run.checkpoint, paths.export, { dtype: "bf16", overwrite: true });
    const checked = await checkDraftExport(paths.export);
    console.log(
      `  ${paths.export}: ${checked.names.length} tensors, ${checked.dtype}, checked (keys, shapes, config)`,
    );

    // 5. Speculative decoding with the exported draft: acceptance length and speedup.
    step(
      5,
      `evaluate: speculative decoding of ${o.evalSamples} held-out openings, ${o.maxNewTokens} tokens each, ` +
        `${o.numSteps} draft tokens per round`,
    );
    const loaded = await loadDraftDirectory(gpu, paths.export);
    const evalTarget = await TargetModel.load(gpu, targetDir, {
      auxLayers: loaded.config.auxLayerIds ?? undefined,
    });
    let files, result;
    try {
      const evalSet = samples.slice(o.trainSamples).map((s) => ({
        inputIds: s.input_ids,
        lossMask: s.loss_mask,
      }));
      const prompts = promptsFromSamples(evalSet, o.openingTokens);
      const evalBar = new ProgressBar("  prompts", prompts.length);
      try {
        result = await runSpeculativeEval(evalTarget, loaded.draft, prompts, {
          numSteps: o.numSteps,
          topk: 1,
          maxNewTokens: o.maxNewTokens,
          temperature: 0,
          draftToTarget: loaded.draftToTarget,
          eosTokenIds: [],
          onSample: (i, s) => {
            const r = s.output.rounds;
            evalBar.update(i + 1, `(last: ${s.output.tokens.length} tokens in ${r.length} rounds)`);
          },
        });
      } finally {
        evalBar.done();
      }
      const summary = evalSummary(result, {
        target_model_path: targetDir,
        draft_model_path: paths.export,
        data_path: paths.evalJsonl,
        device: gpu.info.description || gpu.info.vendor || "WebGPU",
      });
      files = await writeEvalReport(paths.eval, result, summary, (ids) => tokenizer.decode(ids));
    } finally {
      loaded.draft.destroy();
      evalTarget.destroy();
    }

    // Summary.
    const seconds = (performance.now() - t0) / 1000;
    const fmt = (x: number | null, d = 2) => x === null ? "n/a" : x.toFixed(d);
    const report = {
      target: spec,
      output_dir: resolve(o.outputDir),
      seconds,
      samples: { train: o.trainSamples, eval: o.evalSamples },
      training: {
        updates: run.globalStep,
        last_eval_acc: last?.acc ?? null,
        simulated_acceptance_length: simulated,
      },
      eval: {
        acceptance_length: result.stats.tau,
        accepted_at_position: result.stats.acceptedAtPosition,
        target_tokens_per_second: result.targetTokensPerSecond,
        speculative_tokens_per_second: result.speculativeTokensPerSecond,
        speedup: result.speedup,
        matches_target_greedy: result.matchesTargetGreedy,
      },
      files: {
        data: [paths.trainJsonl, paths.evalJsonl],
        sample_view: paths.sampleHtml,
        checkpoint: run.checkpoint,
        metrics: join(paths.train, RUN_FILES.metrics),
        training_plot: join(paths.train, RUN_FILES.plot),
        sglang_export: paths.export,
        eval_report: files.json,
        accept_length_histogram: files.svg,
        eval_samples_view: files.html,
      },
    };
    await writeJsonAtomic(paths.summary, report);
    console.log(`
Eaglet demo done in ${formatDuration(seconds)} — all outputs in ${report.output_dir}
  training           ${run.globalStep} updates; held-out acc per TTT position ${
      last ? last.acc.map((a) => a.toFixed(2)).join(" ") : "n/a"
    } (simulated acceptance length ${fmt(simulated)})
  acceptance length  ${
      fmt(result.stats.tau)
    } tokens per target forward (${result.stats.rounds} rounds, chain of ${o.numSteps})
  speed              ${fmt(result.targetTokensPerSecond, 1)} tokens/s target alone, ${
      fmt(result.speculativeTokensPerSecond, 1)
    } with the draft: speedup ${fmt(result.speedup)}×${
      result.matchesTargetGreedy ? " (outputs identical to the target's greedy ones)" : ""
    }${
      result.speedup !== null && result.speedup < 1
        ? "\n                     (a 656K-parameter target costs no more per forward than its draft, so the draft's\n" +
          "                     steps and readbacks cost more than the target forwards they save; the speedup\n" +
          "                     comes with targets whose forward is much dearer than the draft's)"
        : ""
    }
  SGLang draft       ${paths.export}
  training plot      ${report.files.training_plot}
  HTML views         ${paths.sampleHtml} (a training sample), ${files.html} (speculative rounds)
  eval report        ${files.json}, ${files.svg}
  summary            ${paths.summary}

Serve it: python3 -m sglang.launch_server --model <tinystories-656K dir> --speculative-algorithm EAGLE3 \\
  --speculative-draft-model-path ${paths.export} --speculative-num-steps ${o.numSteps} \\
  --speculative-eagle-topk 1 --speculative-num-draft-tokens ${o.numSteps + 1}`);
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
