/**
 * `deno task demo`: the whole mission end to end on a real tiny target, tinystories-656K (the local copy in
 * ../shared/models when present, else the Hugging Face id raincandy-u/TinyStories-656K through the hub
 * code, else, with no network, the stories260K shipped in models/stories260K):
 *
 * 1. self-distilled data: story openings the target samples, continued greedily by the target itself;
 * 2. preparation: tokenized through the preprocessing cache, one sample rendered as an HTML view;
 * 3. online training of an EAGLE-3 draft (checkpoints, metrics.jsonl, training_curves.svg, TensorBoard events);
 * 4. export for SGLang (bf16), checked after writing;
 * 5. evaluation by speculative decoding with the target: acceptance length and speedup.
 *
 * Everything goes into one folder (--output-dir, default out/demo); the summary names every file.
 * `--self-check` instead runs the forward kernel of ten op families against its CPU reference on this device
 * (lib/bench/self_check.ts).
 */
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Gpu } from "../lib/gpu/device.ts";
import { selfCheck } from "../lib/bench/self_check.ts";
import { HubError, type HubOptions, hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { pathExists, writeFileAtomic, writeJsonAtomic } from "../lib/io/atomic.ts";
import { checkDraftExport } from "../lib/models/export.ts";
import { TargetModel } from "../lib/models/target.ts";
import { buildTokenizedDataset } from "../lib/data/build.ts";
import { inspectSample, renderHtml } from "../lib/data/inspect.ts";
import { templates } from "../lib/data/templates.ts";
import { type ChatTokenizer, loadTokenizer } from "../lib/data/tokenizer.ts";
import { type SelfDistilledSample, writeSelfDistilledSplit } from "../lib/train/selfdistill.ts";
import { trainSettings } from "../lib/train/config.ts";
import { RUN_FILES, trainOnline } from "../lib/train/trainer.ts";
import { exportCheckpoint } from "../lib/train/checkpoint.ts";
import { formatDuration, simulatedAcceptanceLength } from "../lib/train/metrics.ts";
import { loadDraftDirectory } from "../lib/eval/draft_dir.ts";
import {
  promptsFromSamples,
  runSpeculativeEval,
  type SpeculativeEvalResult,
} from "../lib/eval/speculative.ts";
import {
  type EvalReportFiles,
  evalSummary,
  type SpeedupProjection,
  speedupProjection,
  writeEvalReport,
} from "../lib/eval/report.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand, type Settings } from "../lib/flags.ts";
import { ProgressBar } from "../lib/cli/progress.ts";

/** The local copy of the demo's target, relative to the repository root. */
const LOCAL_TARGET = "../shared/models/tinystories-656K";
/** The same model on the Hugging Face hub. */
const HUB_TARGET = "raincandy-u/TinyStories-656K";
/**
 * The target shipped in the repository (Karpathy's stories260K, converted by convert-llama2c; provenance and
 * license in its PROVENANCE.md): used when neither the local copy nor the hub is reachable.
 */
export const EMBEDDED_TARGET = fileURLToPath(new URL("../models/stories260K", import.meta.url));
/** The chat template of the demo's data (pre-tokenized: it only names the cache entry). */
const TEMPLATE = "llama3";

/** Every flag of the demo. Defaults are sized for about 5 minutes on 2 CPU cores. */
export const DEMO_FLAGS = {
  "target-model-path": {
    kind: "string",
    help:
      `target checkpoint (default: ${LOCAL_TARGET} if present, else ${HUB_TARGET}, else the embedded models/stories260K)`,
  },
  "output-dir": {
    kind: "string",
    default: "out/demo",
    help: "where every output goes (its demo subfolders are replaced)",
  },
  "train-samples": { kind: "int", default: 64, min: 1, help: "self-distilled training samples" },
  "eval-samples": {
    kind: "int",
    default: 8,
    min: 1,
    help: "held-out samples (training eval and speculative-decoding prompts)",
  },
  "opening-tokens": {
    kind: "int",
    default: 16,
    min: 1,
    help: "tokens of each sampled story opening, BOS included",
  },
  "continuation-tokens": {
    kind: "int",
    default: 48,
    min: 1,
    help: "greedy target tokens after the opening (the supervised part)",
  },
  "num-epochs": { kind: "int", default: 14, min: 0, help: "passes over the training samples" },
  "batch-size": { kind: "int", default: 4, min: 1, help: "samples per update" },
  "learning-rate": {
    kind: "float",
    default: 5e-3,
    min: 0,
    help: "peak learning rate (warmup then cosine decay)",
  },
  "ttt-length": {
    kind: "int",
    default: 4,
    min: 0,
    help: "test-time-training unroll depth (SpecForge's default is 7)",
  },
  "draft-vocab-size": {
    kind: "int",
    default: 512,
    min: 1,
    help: "draft vocabulary: the most frequent supervised target tokens",
  },
  "num-steps": {
    kind: "int",
    default: 3,
    min: 0,
    help: "draft tokens per speculative round (SGLang's --speculative-num-steps)",
  },
  "max-new-tokens": { kind: "int", default: 48, min: 0, help: "tokens generated per evaluation prompt" },
  "seed": {
    kind: "int",
    default: 0,
    min: 0,
    help: "seed of the openings, the draft's initialisation and the data order",
  },
  "self-check": {
    kind: "bool",
    help: "only check the engine: ten op families' forward kernels vs. their CPU references",
  },
} as const satisfies FlagTable;

/** The demo's settings, parsed from {@link DEMO_FLAGS}. */
type DemoSettings = Settings<typeof DEMO_FLAGS>;

const USAGE = "deno task demo [options]";
const ABOUT =
  `End to end on tinystories-656K (else the embedded stories260K): self-distilled data → preparation →
online EAGLE-3 training → SGLang export → speculative-decoding evaluation (acceptance length, speedup). About 5 minutes on 2 CPU cores.`;

/** Runs `demo` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("demo", args, async (argv) => {
    const cmd = parseCommand(DEMO_FLAGS, argv);
    if (cmd.help) console.log(flagHelp(DEMO_FLAGS, USAGE, ABOUT));
    else if (cmd.settings.selfCheck) return await engineSelfCheck();
    else await runDemo(cmd.settings);
  });
}

/** `--self-check`: the adapter, its limits and ten op families' forward kernels vs. their CPU references. */
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

/** The layout of the demo's outputs. */
type Paths = ReturnType<typeof layout>;

/** What every phase of the demo needs. */
interface Demo {
  /** The settings. */
  o: DemoSettings;
  /** Where the outputs go. */
  paths: Paths;
  /** The WebGPU device. */
  gpu: Gpu;
  /** How hub ids are resolved. */
  hub: HubOptions;
  /** The target as given (a directory or a hub id). */
  spec: string;
  /** The target's local directory. */
  targetDir: string;
}

async function runDemo(o: DemoSettings): Promise<void> {
  const t0 = performance.now();
  const step = (n: number, title: string) =>
    console.log(`\n[${n}/5 · ${formatDuration((performance.now() - t0) / 1000)}] ${title}`);
  if (o.trainSamples < o.batchSize) {
    throw new Error(`--train-samples ${o.trainSamples} makes no full batch of ${o.batchSize}`);
  }
  const paths = layout(o.outputDir);
  await clearOutputs(paths);
  const hub = hubOptionsFromEnv(Deno.env.toObject());
  const { spec, targetDir, source, note } = await resolveDemoTarget(o.targetModelPath, hub);
  const gpu = await Gpu.create();
  console.log(
    `Eaglet demo on ${gpu.describe()}\ntarget: ${spec}${spec === targetDir ? "" : ` (${targetDir})`} ` +
      `[${source}${note ? `: ${note}` : ""}]`,
  );
  const d: Demo = { o, paths, gpu, hub, spec, targetDir };
  try {
    const total = o.trainSamples + o.evalSamples;
    step(
      1,
      `self-distilled data: ${total} story openings of ${o.openingTokens} tokens sampled by the target, ` +
        `each continued by ${o.continuationTokens} greedy target tokens`,
    );
    const samples = await selfDistilledData(d);
    step(2, "prepare: tokenized samples and loss masks into the preprocessing cache");
    const tokenizer = await prepareSamples(d);
    const updates = Math.floor(o.trainSamples / o.batchSize) * o.numEpochs;
    step(3, `online training: ${updates} updates (batch ${o.batchSize}, TTT ${o.tttLength})`);
    const run = await trainDraft(d, tokenizer, updates);
    if (!run.checkpoint) throw new Error("training wrote no checkpoint");
    // Every checkpoint already is an SGLang directory; this writes the serving copy on its own.
    step(4, "export for SGLang (bf16)");
    await exportCheckpoint(run.checkpoint, paths.export, { dtype: "bf16", overwrite: true });
    const checked = await checkDraftExport(paths.export);
    console.log(
      `  ${paths.export}: ${checked.names.length} tensors, ${checked.dtype}, checked (keys, shapes, config)`,
    );
    step(
      5,
      `evaluate: speculative decoding of ${o.evalSamples} held-out openings, ${o.maxNewTokens} tokens each, ` +
        `${o.numSteps} draft tokens per round`,
    );
    const evaluated = await evaluateDraft(d, samples.slice(o.trainSamples), tokenizer);
    await summarize(d, (performance.now() - t0) / 1000, run, evaluated);
  } finally {
    gpu.destroy();
  }
}

/** Removes the demo's own outputs of an earlier run (a stale checkpoint would sit next to the new one). */
async function clearOutputs(paths: Paths): Promise<void> {
  for (const p of [paths.data, paths.cache, paths.train, paths.export, paths.eval, paths.summary]) {
    await Deno.remove(p, { recursive: true }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
  await Deno.mkdir(paths.data, { recursive: true });
}

/** Which target the demo uses and why. */
export interface DemoTarget {
  /** The target as given or chosen (a directory or a hub id). */
  spec: string;
  /** Its local directory. */
  targetDir: string;
  /** "given" (--target-model-path), "local" (../shared), "hub" or "embedded" (models/stories260K). */
  source: "given" | "local" | "hub" | "embedded";
  /** Why the embedded target was chosen (the hub's one-line error), else null. */
  note: string | null;
}

/**
 * The demo's target: the one given, else the local tinystories-656K, else the hub's (downloaded once into the
 * cache), else, when the hub cannot be reached (no network, HF_HUB_OFFLINE without a cached copy), the
 * embedded stories260K. `where` overrides the three candidates (tests).
 */
export async function resolveDemoTarget(
  given: string | null,
  hub: HubOptions,
  where: { local?: string; hubId?: string; embedded?: string } = {},
): Promise<DemoTarget> {
  const local = where.local ?? LOCAL_TARGET, hubId = where.hubId ?? HUB_TARGET;
  const embedded = where.embedded ?? EMBEDDED_TARGET;
  const opts: HubOptions = {
    ...hub,
    onProgress: (p) => {
      if (p.total !== null && p.received === p.total) console.log(`  downloaded ${p.repo}/${p.file}`);
    },
  };
  if (given) {
    return { spec: given, targetDir: await resolveModelPath(given, opts), source: "given", note: null };
  }
  if (await pathExists(join(local, "config.json"))) {
    return { spec: local, targetDir: local, source: "local", note: null };
  }
  try {
    return { spec: hubId, targetDir: await resolveModelPath(hubId, opts), source: "hub", note: null };
  } catch (e) {
    if (!(e instanceof HubError) && !(e instanceof TypeError)) throw e;
    if (!(await pathExists(join(embedded, "config.json")))) throw e;
    const why = (e as Error).message.split("\n")[0];
    return { spec: embedded, targetDir: embedded, source: "embedded", note: `hub unreachable (${why})` };
  }
}

/** 1. Samples the target writes itself; writes train.jsonl and eval.jsonl; returns all of them. */
async function selfDistilledData({ o, gpu, targetDir, paths }: Demo): Promise<SelfDistilledSample[]> {
  const bar = new ProgressBar("  samples", o.trainSamples + o.evalSamples);
  let split;
  try {
    split = await writeSelfDistilledSplit(gpu, targetDir, {
      trainSamples: o.trainSamples,
      evalSamples: o.evalSamples,
      outputDir: paths.data,
      openingTokens: o.openingTokens,
      continuationTokens: o.continuationTokens,
      seed: o.seed,
      batch: 8,
      onProgress: (n) => bar.update(n),
    });
  } finally {
    bar.done();
  }
  console.log(`  wrote ${split.trainJsonl} (${o.trainSamples}) and ${split.evalJsonl} (${o.evalSamples})`);
  return split.samples;
}

/** 2. The same build (and cache entry) the trainer reads next, and an HTML view of one sample. */
async function prepareSamples({ o, paths, targetDir }: Demo): Promise<ChatTokenizer> {
  const maxLength = o.openingTokens + o.continuationTokens;
  const tokenizer = await loadTokenizer(targetDir);
  const built = await buildTokenizedDataset({
    dataPath: paths.trainJsonl,
    tokenizer,
    templateName: TEMPLATE,
    template: templates.get(TEMPLATE),
    maxLength,
    cacheDir: paths.cache,
    log: (l) => console.log(`  ${l}`),
  });
  const st = built.stats;
  console.log(`  ${st.samples} samples, ${st.tokens} tokens, ${st.supervisedTokens} supervised`);
  const first = built.dataset.sample(0);
  await writeFileAtomic(paths.sampleHtml, renderHtml(inspectSample(tokenizer, first, TEMPLATE, maxLength)));
  console.log(`  HTML view of sample ${first.id} (supervised tokens highlighted): ${paths.sampleHtml}`);
  return tokenizer;
}

/** 3. Online training of the draft on the self-distilled samples. */
function trainDraft({ o, paths, gpu, hub, targetDir }: Demo, tokenizer: ChatTokenizer, updates: number) {
  const settings = trainSettings({
    targetModelPath: targetDir,
    trainDataPath: paths.trainJsonl,
    evalDataPath: paths.evalJsonl,
    outputDir: paths.train,
    cacheDir: paths.cache,
    chatTemplate: TEMPLATE,
    maxLength: o.openingTokens + o.continuationTokens,
    numEpochs: o.numEpochs,
    batchSize: o.batchSize,
    learningRate: o.learningRate,
    tttLength: o.tttLength,
    draftVocabSize: Math.min(o.draftVocabSize, tokenizer.vocabSize),
    seed: o.seed,
    warmupRatio: 0.05,
    maxGradNorm: 0.5,
    logInterval: Math.max(1, Math.round(updates / 12)),
    evalInterval: Math.max(1, Math.round(updates / 3)),
    saveInterval: 0,
    reportTo: "tensorboard",
  });
  return trainOnline(gpu, { settings, hub });
}

/** What step 5 measured and wrote. */
interface Evaluated {
  /** The speculative-decoding result. */
  result: SpeculativeEvalResult;
  /** The report's files. */
  files: EvalReportFiles;
}

/** 5. Speculative decoding of the held-out openings with the exported draft: acceptance length, speedup. */
async function evaluateDraft(
  { o, paths, gpu, targetDir }: Demo,
  held: SelfDistilledSample[],
  tokenizer: ChatTokenizer,
): Promise<Evaluated> {
  const loaded = await loadDraftDirectory(gpu, paths.export);
  const evalTarget = await TargetModel.load(gpu, targetDir, {
    auxLayers: loaded.config.auxLayerIds ?? undefined,
  });
  try {
    const evalSet = held.map((s) => ({ inputIds: s.input_ids, lossMask: s.loss_mask }));
    const prompts = promptsFromSamples(evalSet, o.openingTokens);
    const evalBar = new ProgressBar("  prompts", prompts.length);
    let result;
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
    const files = await writeEvalReport(paths.eval, result, summary, (ids) => tokenizer.decode(ids));
    return { result, files };
  } finally {
    loaded.draft.destroy();
    evalTarget.destroy();
  }
}

/** The result of the training phase. */
type TrainRun = Awaited<ReturnType<typeof trainOnline>>;

/** Writes summary.json and prints the closing summary. */
async function summarize(
  d: Demo,
  seconds: number,
  run: TrainRun,
  { result, files }: Evaluated,
): Promise<void> {
  const { o, paths } = d;
  const last = run.lastEval ?? run.lastTrain;
  const simulated = last ? simulatedAcceptanceLength(last.acc) : NaN;
  const report = {
    target: d.spec,
    output_dir: resolve(o.outputDir),
    seconds,
    samples: { train: o.trainSamples, eval: o.evalSamples },
    training: {
      updates: run.updates,
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
      projection: speedupProjection(result),
    },
    files: {
      data: [paths.trainJsonl, paths.evalJsonl],
      sample_view: paths.sampleHtml,
      checkpoint: run.checkpoint,
      metrics: join(paths.train, RUN_FILES.metrics),
      training_plot: join(paths.train, RUN_FILES.plot),
      tensorboard: join(paths.train, RUN_FILES.tensorboard),
      sglang_export: paths.export,
      eval_report: files.json,
      accept_length_histogram: files.svg,
      eval_samples_view: files.html,
      eval_page: files.report,
      training_page: join(paths.train, RUN_FILES.report),
    },
  };
  await writeJsonAtomic(paths.summary, report);
  const fmt = (x: number | null, digits = 2) => x === null ? "n/a" : x.toFixed(digits);
  const slow = result.speedup !== null && result.speedup < 1
    ? "\n                     (a tiny target costs no more per forward than its draft, so the draft's\n" +
      "                     steps and readbacks cost more than the target forwards they save; the speedup\n" +
      "                     comes with targets whose forward is much dearer than the draft's)"
    : "";
  console.log(`
Eaglet demo done in ${formatDuration(seconds)} — all outputs in ${report.output_dir}
  training           ${run.updates} updates; held-out acc per TTT position ${
    last ? last.acc.map((a) => a.toFixed(2)).join(" ") : "n/a"
  } (simulated acceptance length ${fmt(simulated)})
  acceptance length  ${
    fmt(result.stats.tau)
  } tokens per target forward (${result.stats.rounds} rounds, chain of ${o.numSteps})
  speed              ${fmt(result.targetTokensPerSecond, 1)} tokens/s target alone, ${
    fmt(result.speculativeTokensPerSecond, 1)
  } with the draft: speedup ${fmt(result.speedup)}×${
    result.matchesTargetGreedy ? " (outputs identical to the target's greedy ones)" : ""
  }${slow}
${projectionLines(report.eval.projection, o.numSteps)}
  SGLang draft       ${paths.export}
  training plot      ${report.files.training_plot}
  TensorBoard        tensorboard --logdir ${report.files.tensorboard}
  HTML views         ${paths.sampleHtml} (a training sample), ${files.html} (speculative rounds)
  eval report        ${files.json}, ${files.svg}
  report pages       ${report.files.training_page} (training), ${files.report} (evaluation)
  summary            ${paths.summary}

Serve it: python3 -m sglang.launch_server --model ${d.targetDir} --speculative-algorithm EAGLE3 \\
  --speculative-draft-model-path ${paths.export} --speculative-num-steps ${o.numSteps} \\
  --speculative-eagle-topk 1 --speculative-num-draft-tokens ${o.numSteps + 1}`);
}

/** The summary's lines on the measured time split and the labelled projection to dearer targets. */
function projectionLines(p: SpeedupProjection | null, k: number): string {
  if (!p) return "  projection         n/a (speed not measured)";
  const ms = (s: number) => `${(s * 1000).toFixed(2)} ms`;
  const at = p.projected.map((x) => `N=${x.factor}: ${x.speedup.toFixed(2)}×`).join(", ");
  return `  measured split     target forward ${ms(p.targetForwardSeconds)}, speculative round ${
    ms(p.roundSeconds)
  } (${k} draft forwards at ${ms(p.draftForwardSeconds)} each, draft-side overheads included), ` +
    `${p.tokensPerRound.toFixed(2)} tokens per round; here the target costs ${
      p.measuredRatio.toFixed(2)
    } draft forwards
  PROJECTION         (a model, not a measurement) for a target N× dearer per forward than the draft, verify
                     ≈ one forward: speedup = tokens per round × N / (N + ${k}) → ${at}`;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
