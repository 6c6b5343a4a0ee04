/**
 * The settings of an online training run: SpecForge's flags (reference/specforge-spec.md §7.1, defaults
 * §4.7) and the same settings from a YAML file (§7.6). One table, {@link TRAIN_OPTIONS}, lists every
 * setting with its flag, its YAML key, its type, its default and its help; the CLI's --help, the flag parser
 * and the YAML reader are all derived from it, so they cannot drift apart.
 *
 * Precedence: defaults < YAML file < command-line flags. An unknown YAML key, a value of the wrong type, or a
 * missing required setting is an error naming the key (and the file).
 *
 * YAML layout: either flat (`target_model_path: ...`, the flag names with underscores, or with dashes), or
 * SpecForge's sectioned layout (`model:`, `data:`, `training:` plus top-level `output_dir`), where each
 * setting sits in its section; SpecForge's own names `accumulation_steps`, `prompts_path`, `resume_from` and
 * `aux_hidden_state_layer_ids` are accepted for ours.
 */
import { parseArgs } from "node:util";
import { parse as parseYaml } from "yaml";

/** An invalid setting (flag, YAML key or value); the message names it. */
export class TrainConfigError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "TrainConfigError";
}

type Kind = "string" | "int" | "float" | "bool" | "ints";
type Section = "model" | "data" | "training" | "top";

interface OptionSpec {
  kind: Kind;
  section: Section;
  help: string;
  default?: string | number | boolean | number[] | null;
  required?: boolean;
  /** Accepted so SpecForge command lines run unchanged; has no effect here (said in --help). */
  compat?: boolean;
  /** Other YAML names (SpecForge [H] schema). */
  aliases?: string[];
  /** Allowed values of a string setting. */
  choices?: string[];
}

/** Every setting of `train-online`, by flag name. */
export const TRAIN_OPTIONS = {
  "target-model-path": {
    kind: "string",
    section: "model",
    required: true,
    help: "target: HF model dir or hub id",
  },
  "draft-model-config": {
    kind: "string",
    section: "model",
    default: null,
    help: "draft config.json (LlamaForCausalLMEagle3); absent: derived from the target (§6.3)",
  },
  "embedding-key": {
    kind: "string",
    section: "model",
    default: "model.embed_tokens.weight",
    help:
      "target tensor used as the draft's frozen embedding (the target's own embedding when the checkpoint lacks the default key, e.g. tied models)",
  },
  "aux-layers": {
    kind: "ints",
    section: "model",
    default: null,
    aliases: ["aux_hidden_state_layer_ids"],
    help:
      "three target layer ids to capture, e.g. 1,15,28 (default: the draft config's eagle_config, else [1, N/2-1, N-4])",
  },
  "draft-vocab-size": {
    kind: "int",
    section: "model",
    default: null,
    help: "draft vocabulary size (default: the draft config's, else min(32000, target vocab))",
  },
  "vocab-mapping-path": {
    kind: "string",
    section: "model",
    default: null,
    aliases: ["vocab_mapping_path"],
    help: "use this d2t/t2d mapping (.safetensors or .json) instead of computing one from the data",
  },
  "train-data-path": {
    kind: "string",
    section: "data",
    default: null,
    aliases: ["prompts_path"],
    help:
      "training data: conversations / preformatted text / pre-tokenized {input_ids, loss_mask} (.jsonl, .json, .parquet); required online",
  },
  "train-hidden-states-path": {
    kind: "string",
    section: "data",
    default: null,
    help: "offline: features directory written by prepare-hidden-states (train-offline requires it)",
  },
  "eval-hidden-states-path": {
    kind: "string",
    section: "data",
    default: null,
    help: "offline: held-out features directory",
  },
  "eval-data-path": { kind: "string", section: "data", default: null, help: "held-out data, same formats" },
  "chat-template": { kind: "string", section: "data", default: "llama3", help: "chat template name" },
  "is-preformatted": {
    kind: "bool",
    section: "data",
    default: false,
    help: 'records are {"text": ...}, already rendered',
  },
  "train-only-last-turn": {
    kind: "bool",
    section: "data",
    default: false,
    help: "supervise only the last assistant turn",
  },
  "max-length": {
    kind: "int",
    section: "data",
    default: 2048,
    help: "tokens kept per sample (right truncation)",
  },
  "cache-dir": { kind: "string", section: "data", default: "./cache", help: "preprocessing cache directory" },
  "output-dir": {
    kind: "string",
    section: "top",
    required: true,
    help: "checkpoints, exports, metrics and plots",
  },
  "num-epochs": { kind: "int", section: "training", default: 10, help: "passes over the training data" },
  "batch-size": { kind: "int", section: "training", default: 1, help: "samples per micro-batch" },
  "learning-rate": { kind: "float", section: "training", default: 1e-4, help: "peak learning rate" },
  "warmup-ratio": {
    kind: "float",
    section: "training",
    default: 0.015,
    help: "linear warmup share of the updates",
  },
  "total-steps": {
    kind: "int",
    section: "training",
    default: null,
    help: "optimizer updates of the schedule (default: num_epochs · ceil(batches per epoch / accumulation))",
  },
  "max-num-steps": {
    kind: "int",
    section: "training",
    default: null,
    aliases: ["max_steps"],
    help: "stop after this many updates (the schedule keeps --total-steps)",
  },
  "max-grad-norm": {
    kind: "float",
    section: "training",
    default: 0.5,
    help: "global grad-norm clipping (0: off)",
  },
  "ttt-length": { kind: "int", section: "training", default: 7, help: "test-time-training unroll steps K" },
  "draft-accumulation-steps": {
    kind: "int",
    section: "training",
    default: 1,
    aliases: ["accumulation_steps"],
    help: "micro-batches per optimizer update",
  },
  "seed": { kind: "int", section: "training", default: 0, help: "seed of the draft init and the data order" },
  "log-interval": {
    kind: "int",
    section: "training",
    default: 50,
    help: "updates between progress lines and train metrics",
  },
  "eval-interval": {
    kind: "int",
    section: "training",
    default: 5000,
    help: "updates between evaluations (0: only at the end)",
  },
  "save-interval": {
    kind: "int",
    section: "training",
    default: 5000,
    help: "updates between checkpoints (0: only at the end)",
  },
  "resume": {
    kind: "bool",
    section: "training",
    default: false,
    help: "continue from the latest checkpoint in --output-dir",
  },
  "resume-from": {
    kind: "string",
    section: "training",
    default: null,
    aliases: ["resume_from"],
    help: "continue from this checkpoint directory",
  },
  "export-dtype": {
    kind: "string",
    section: "training",
    default: "bf16",
    choices: ["bf16", "f16", "f32"],
    help: "dtype of the exported SGLang weights",
  },
  "eval-batches": {
    kind: "int",
    section: "training",
    default: null,
    help: "evaluate on at most this many batches (default: the whole eval set)",
  },
  "eval-spec-samples": {
    kind: "int",
    section: "training",
    default: 0,
    help: "at each eval, also run greedy speculative decoding on this many eval prompts and log tau (0: off)",
  },
  "eval-spec-steps": {
    kind: "int",
    section: "training",
    default: 3,
    help: "draft steps (chain) of that speculative decoding",
  },
  "eval-spec-new-tokens": {
    kind: "int",
    section: "training",
    default: 32,
    help: "new tokens per prompt of that speculative decoding",
  },
  "tp-size": {
    kind: "int",
    section: "training",
    default: 1,
    compat: true,
    help: "target tensor parallelism (must be 1)",
  },
  "attention-backend": {
    kind: "string",
    section: "training",
    default: "flex_attention",
    compat: true,
    choices: ["sdpa", "flex_attention", "fa", "eager"],
    help: "SpecForge's attention backend (all give the same math here)",
  },
  "target-model-backend": {
    kind: "string",
    section: "model",
    default: "sglang",
    compat: true,
    choices: ["sglang", "hf", "custom"],
    help: "SpecForge's target backend (the target always runs on WebGPU here)",
  },
  "build-dataset-num-proc": {
    kind: "int",
    section: "data",
    default: 8,
    compat: true,
    help: "SpecForge's tokenizer workers",
  },
  "dist-timeout": {
    kind: "int",
    section: "training",
    default: 20,
    compat: true,
    help: "SpecForge's NCCL timeout (minutes)",
  },
  "report-to": {
    kind: "string",
    section: "training",
    default: "none",
    compat: true,
    choices: ["none"],
    help: "experiment tracker (metrics go to <output-dir>/metrics.jsonl)",
  },
  "cache-key": {
    kind: "string",
    section: "data",
    default: null,
    compat: true,
    help: "unused, as in SpecForge",
  },
  "verbose": { kind: "bool", section: "top", default: false, compat: true, help: "more messages" },
} satisfies Record<string, OptionSpec>;

/** A flag name of {@link TRAIN_OPTIONS}. */
export type TrainOptionName = keyof typeof TRAIN_OPTIONS;

/** The resolved settings of a run (camelCase of the flag names). */
export interface TrainSettings {
  /** `--target-model-path`: target: HF model dir or hub id. */
  targetModelPath: string;
  /** `--draft-model-config`: draft config.json (LlamaForCausalLMEagle3); absent: derived from the target (§6.3). */
  draftModelConfig: string | null;
  /** `--embedding-key`: target tensor used as the draft's frozen embedding (the target's own embedding when the checkpoint lacks the default key, e.g. tied models). */
  embeddingKey: string;
  /** `--aux-layers`: three target layer ids to capture, e.g. 1,15,28 (default: the draft config's eagle_config, else [1, N/2-1, N-4]). */
  auxLayers: number[] | null;
  /** `--draft-vocab-size`: draft vocabulary size (default: the draft config's, else min(32000, target vocab)). */
  draftVocabSize: number | null;
  /** `--vocab-mapping-path`: use this d2t/t2d mapping (.safetensors or .json) instead of computing one from the data. */
  vocabMappingPath: string | null;
  /** `--train-data-path`: training data: conversations / preformatted text / pre-tokenized {input_ids, loss_mask} (.jsonl, .json, .parquet); required online. */
  trainDataPath: string | null;
  /** `--train-hidden-states-path`: offline: features directory written by prepare-hidden-states. */
  trainHiddenStatesPath: string | null;
  /** `--eval-hidden-states-path`: offline: held-out features directory. */
  evalHiddenStatesPath: string | null;
  /** `--eval-data-path`: held-out data, same formats. */
  evalDataPath: string | null;
  /** `--chat-template`: chat template name. */
  chatTemplate: string;
  /** `--is-preformatted`: records are {"text": ...}, already rendered. */
  isPreformatted: boolean;
  /** `--train-only-last-turn`: supervise only the last assistant turn. */
  trainOnlyLastTurn: boolean;
  /** `--max-length`: tokens kept per sample (right truncation). */
  maxLength: number;
  /** `--cache-dir`: preprocessing cache directory. */
  cacheDir: string;
  /** `--output-dir`: checkpoints, exports, metrics and plots. */
  outputDir: string;
  /** `--num-epochs`: passes over the training data. */
  numEpochs: number;
  /** `--batch-size`: samples per micro-batch. */
  batchSize: number;
  /** `--learning-rate`: peak learning rate. */
  learningRate: number;
  /** `--warmup-ratio`: linear warmup share of the updates. */
  warmupRatio: number;
  /** `--total-steps`: optimizer updates of the schedule (default: num_epochs · ceil(batches per epoch / accumulation)). */
  totalSteps: number | null;
  /** `--max-num-steps`: stop after this many updates (the schedule keeps --total-steps). */
  maxNumSteps: number | null;
  /** `--max-grad-norm`: global grad-norm clipping (0: off). */
  maxGradNorm: number;
  /** `--ttt-length`: test-time-training unroll steps K. */
  tttLength: number;
  /** `--draft-accumulation-steps`: micro-batches per optimizer update. */
  draftAccumulationSteps: number;
  /** `--seed`: seed of the draft init and the data order. */
  seed: number;
  /** `--log-interval`: updates between progress lines and train metrics. */
  logInterval: number;
  /** `--eval-interval`: updates between evaluations (0: only at the end). */
  evalInterval: number;
  /** `--save-interval`: updates between checkpoints (0: only at the end). */
  saveInterval: number;
  /** `--resume`: continue from the latest checkpoint in --output-dir. */
  resume: boolean;
  /** `--resume-from`: continue from this checkpoint directory. */
  resumeFrom: string | null;
  /** `--export-dtype`: dtype of the exported SGLang weights. */
  exportDtype: "bf16" | "f16" | "f32";
  /** `--eval-batches`: evaluate on at most this many batches (default: the whole eval set). */
  evalBatches: number | null;
  /** `--eval-spec-samples`: at each eval, also run greedy speculative decoding on this many eval prompts and log tau (0: off). */
  evalSpecSamples: number;
  /** `--eval-spec-steps`: draft steps (chain) of that speculative decoding. */
  evalSpecSteps: number;
  /** `--eval-spec-new-tokens`: new tokens per prompt of that speculative decoding. */
  evalSpecNewTokens: number;
  /** `--tp-size`: target tensor parallelism (must be 1). */
  tpSize: number;
  /** `--attention-backend`: SpecForge's attention backend (all give the same math here). */
  attentionBackend: string;
  /** `--target-model-backend`: SpecForge's target backend (the target always runs on WebGPU here). */
  targetModelBackend: string;
  /** `--build-dataset-num-proc`: SpecForge's tokenizer workers. */
  buildDatasetNumProc: number;
  /** `--dist-timeout`: SpecForge's NCCL timeout (minutes). */
  distTimeout: number;
  /** `--report-to`: experiment tracker (metrics go to <output-dir>/metrics.jsonl). */
  reportTo: string;
  /** `--cache-key`: unused, as in SpecForge. */
  cacheKey: string | null;
  /** `--verbose`: more messages. */
  verbose: boolean;
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

const SPECS = TRAIN_OPTIONS as Record<string, OptionSpec>;

/** Converts a raw value (string from a flag, or any YAML value) to the setting's kind. */
function convert(name: string, spec: OptionSpec, raw: unknown, where: string): unknown {
  const bad = (what: string) =>
    new TrainConfigError(`${where}: ${name} must be ${what}, got ${JSON.stringify(raw)}`);
  if (raw === null) {
    if (spec.default === null) return null;
    throw bad(`a ${spec.kind}`);
  }
  switch (spec.kind) {
    case "string": {
      if (typeof raw !== "string" && typeof raw !== "number") throw bad("a string");
      const s = String(raw);
      if (spec.choices && !spec.choices.includes(s)) throw bad(`one of ${spec.choices.join(", ")}`);
      return s;
    }
    case "bool":
      if (typeof raw === "boolean") return raw;
      if (raw === "true" || raw === "false") return raw === "true";
      throw bad("true or false");
    case "int": {
      const n = typeof raw === "string" ? Number(raw.trim()) : raw;
      if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw bad("a non-negative integer");
      return n;
    }
    case "float": {
      const n = typeof raw === "string" ? Number(raw.trim()) : raw;
      if (typeof n !== "number" || !Number.isFinite(n) || (typeof raw === "string" && raw.trim() === "")) {
        throw bad("a number");
      }
      return n;
    }
    case "ints": {
      const list = typeof raw === "string" ? raw.split(",").map((s) => s.trim()) : raw;
      if (!Array.isArray(list)) throw bad("a list of integers (e.g. 1,15,28)");
      return list.map((x) => {
        const n = typeof x === "string" ? Number(x) : x;
        if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0 || x === "") {
          throw bad("a list of non-negative integers");
        }
        return n;
      });
    }
  }
}

/** Finds the flag name of a YAML key (underscores or dashes, or a SpecForge alias); null when unknown. */
function flagOfKey(key: string): string | null {
  const dashed = key.replace(/_/g, "-");
  if (dashed in SPECS) return dashed;
  for (const [flag, spec] of Object.entries(SPECS)) {
    if (spec.aliases?.includes(key)) return flag;
  }
  return null;
}

/**
 * Reads the settings of a YAML file (flat or sectioned, see the module note) as flag name → value. Unknown
 * keys, keys in the wrong section and bad values are errors naming the key and the file.
 */
export function readYamlSettings(text: string, file: string): Map<string, unknown> {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new TrainConfigError(`${file}: not valid YAML (${(e as Error).message.split("\n")[0]})`);
  }
  const out = new Map<string, unknown>();
  if (doc === null || doc === undefined) return out;
  if (typeof doc !== "object" || Array.isArray(doc)) {
    throw new TrainConfigError(`${file}: expected a mapping of settings`);
  }
  const put = (key: string, value: unknown, section: Section | null) => {
    const where = section && section !== "top" ? `${section}.${key}` : key;
    const flag = flagOfKey(key);
    if (!flag) throw new TrainConfigError(`${file}: unknown setting '${where}'`);
    const spec = SPECS[flag];
    if (section !== null && spec.section !== section) {
      throw new TrainConfigError(`${file}: '${where}' belongs in section '${spec.section}'`);
    }
    if (out.has(flag)) throw new TrainConfigError(`${file}: '${where}' is set twice`);
    out.set(flag, convert(where, spec, value, file));
  };
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    if (key === "model" || key === "data" || key === "training") {
      if (value === null) continue;
      if (typeof value !== "object" || Array.isArray(value)) {
        throw new TrainConfigError(`${file}: section '${key}' must be a mapping`);
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) put(k, v, key);
    } else {
      put(key, value, null);
    }
  }
  return out;
}

/** The parseArgs option table of {@link TRAIN_OPTIONS} plus --config, --help and --debug. */
function parseArgsOptions() {
  const o: Record<string, { type: "string" | "boolean" }> = {
    config: { type: "string" },
    help: { type: "boolean" },
    debug: { type: "boolean" },
  };
  for (const [flag, spec] of Object.entries(SPECS)) {
    o[flag] = { type: spec.kind === "bool" ? "boolean" : "string" };
  }
  return o;
}

/** What {@link parseTrainArgs} returns: the settings, or a request for help. */
export type ParsedTrainArgs =
  | { help: true; debug: boolean }
  | { help: false; debug: boolean; settings: TrainSettings; configFile: string | null };

/**
 * Parses command-line arguments: `--config run.yaml` is read first, flags override it, defaults fill the
 * rest; required settings must be given by one of the two. `readText` reads the YAML file (injectable for
 * tests).
 */
export async function parseTrainArgs(
  argv: string[],
  readText: (path: string) => Promise<string> = (p) => Deno.readTextFile(p),
): Promise<ParsedTrainArgs> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: parseArgsOptions(), strict: true, allowPositionals: false });
  } catch (e) {
    throw new TrainConfigError((e as Error).message.split("\n")[0]);
  }
  const v = parsed.values as Record<string, string | boolean | undefined>;
  const debug = v.debug === true;
  if (v.help) return { help: true, debug };
  const values = new Map<string, unknown>();
  const configFile = typeof v.config === "string" ? v.config : null;
  if (configFile) {
    let text: string;
    try {
      text = await readText(configFile);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new TrainConfigError(`config file not found: ${configFile}`);
      }
      throw new TrainConfigError(`cannot read config file ${configFile}: ${(e as Error).message}`);
    }
    for (const [k, x] of readYamlSettings(text, configFile)) values.set(k, x);
  }
  for (const [flag, spec] of Object.entries(SPECS)) {
    const raw = v[flag];
    if (raw === undefined) continue;
    values.set(flag, convert(`--${flag}`, spec, raw, "command line"));
  }
  const settings: Record<string, unknown> = {};
  for (const [flag, spec] of Object.entries(SPECS)) {
    if (values.has(flag)) settings[camel(flag)] = values.get(flag);
    else if (spec.required) {
      throw new TrainConfigError(`--${flag} is required (or ${flag.replace(/-/g, "_")} in --config)`);
    } else settings[camel(flag)] = spec.default ?? null;
  }
  const s = settings as unknown as TrainSettings;
  checkSettings(s);
  return { help: false, debug, settings: s, configFile };
}

/** Range checks that need more than a type. */
export function checkSettings(s: TrainSettings): void {
  const positive: Array<[string, number | null]> = [
    ["num-epochs", s.numEpochs],
    ["batch-size", s.batchSize],
    ["max-length", s.maxLength],
    ["ttt-length", s.tttLength],
    ["draft-accumulation-steps", s.draftAccumulationSteps],
    ["log-interval", s.logInterval],
    ["total-steps", s.totalSteps],
    ["max-num-steps", s.maxNumSteps],
    ["draft-vocab-size", s.draftVocabSize],
    ["eval-batches", s.evalBatches],
    ["eval-spec-steps", s.evalSpecSteps],
    ["eval-spec-new-tokens", s.evalSpecNewTokens],
  ];
  if (s.evalSpecSamples < 0) {
    throw new TrainConfigError(`--eval-spec-samples must be >= 0, got ${s.evalSpecSamples}`);
  }
  for (const [name, n] of positive) {
    if (n !== null && n < 1) throw new TrainConfigError(`--${name} must be at least 1, got ${n}`);
  }
  if (!(s.learningRate > 0)) {
    throw new TrainConfigError(`--learning-rate must be positive, got ${s.learningRate}`);
  }
  if (!(s.warmupRatio >= 0 && s.warmupRatio < 1)) {
    throw new TrainConfigError(`--warmup-ratio must be within [0, 1), got ${s.warmupRatio}`);
  }
  if (s.maxGradNorm < 0) throw new TrainConfigError(`--max-grad-norm must be ≥ 0, got ${s.maxGradNorm}`);
  if (s.tpSize !== 1) {
    throw new TrainConfigError(`--tp-size ${s.tpSize}: Eaglet runs the target on one device`);
  }
  if (s.auxLayers !== null && s.auxLayers.length !== 3) {
    throw new TrainConfigError(`--aux-layers needs 3 layer ids, got [${s.auxLayers}]`);
  }
  if (s.resume && s.resumeFrom) throw new TrainConfigError("give --resume or --resume-from, not both");
  if (!s.trainDataPath && !s.trainHiddenStatesPath) {
    throw new TrainConfigError(
      "--train-data-path is required (or train_data_path in --config; --train-hidden-states-path for train-offline)",
    );
  }
}

/** The --help text: every flag with its default, then the YAML layout. */
export function trainUsage(task: "train-online" | "train-offline" = "train-online"): string {
  const data = task === "train-online" ? "--train-data-path <file>" : "--train-hidden-states-path <dir>";
  const lines = [
    `usage: deno task ${task} --target-model-path <dir|hub id> ${data} ` +
    `--output-dir <dir> [options]\n       deno task ${task} --config run.yaml [flags that override it]\n`,
  ];
  lines.push("  --config <file>\n      YAML file with any of the settings below (flags override it)");
  for (const [flag, spec] of Object.entries(SPECS)) {
    const arg = spec.kind === "bool" ? "" : spec.kind === "ints" ? " <a,b,c>" : ` <${spec.kind}>`;
    const def = spec.required
      ? " (required)"
      : spec.default === null || spec.default === undefined
      ? ""
      : ` (default: ${Array.isArray(spec.default) ? spec.default.join(",") : spec.default})`;
    const compat = spec.compat ? " [accepted for SpecForge compatibility]" : "";
    const choices = spec.choices && !spec.compat ? ` {${spec.choices.join(", ")}}` : "";
    lines.push(`  --${flag}${arg}\n      ${spec.help}${choices}${def}${compat}`);
  }
  lines.push("  --debug\n      print stack traces");
  lines.push("  --help\n      this text");
  lines.push(
    "\nYAML: flat keys (target_model_path: ..., the flag names with underscores) or SpecForge's sections\n" +
      "model: {target_model_path, draft_model_config, embedding_key, aux_hidden_state_layer_ids, ...},\n" +
      "data: {train_data_path | prompts_path, eval_data_path, max_length, chat_template, cache_dir, ...},\n" +
      "training: {num_epochs, batch_size, learning_rate, accumulation_steps, ttt_length, seed, ...}, output_dir.\n" +
      "Unknown keys are errors.",
  );
  return lines.join("\n") + "\n";
}

/** The settings as the snake_case mapping saved in checkpoints (and accepted back as YAML). */
export function settingsToJson(s: TrainSettings): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const flag of Object.keys(SPECS)) {
    out[flag.replace(/-/g, "_")] = (s as unknown as Record<string, unknown>)[camel(flag)];
  }
  return out;
}
