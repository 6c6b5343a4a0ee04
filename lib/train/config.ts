/**
 * The settings of a training run: SpecForge's flags (`scripts/train_eagle3_online.py` and
 * `train_eagle3_offline.py` argparse, with their defaults) and the same settings from a YAML file (SpecForge's
 * `specforge/config/schema.py`). One table of flags, {@link TRAIN_OPTIONS} (lib/flags.ts), declares every
 * setting once with its type, default, help, check, YAML section and SpecForge aliases; the settings type,
 * the CLI's parser and --help, the README's table, the YAML reader and the library's {@link trainSettings}
 * all come from it, so they cannot drift apart.
 *
 * Precedence: defaults < YAML file < command-line flags. An unknown YAML key, a value of the wrong type, or a
 * missing required setting is an error naming the key (and the file).
 *
 * YAML layout: either flat (`target_model_path: ...`, the flag names with underscores, or with dashes), or
 * SpecForge's sectioned layout (`model:`, `data:`, `training:` plus top-level `output_dir`), where each
 * setting sits in its section; SpecForge's own names `accumulation_steps`, `prompts_path`, `resume_from` and
 * `aux_hidden_state_layer_ids` are accepted for ours.
 */
import { DEVICE_MEMORY_FLAG, TARGET_MEMORY_BUDGET_FLAG } from "../gpu/device_memory.ts";
import { MATMUL_AUTOTUNE_FLAG } from "../ops/matmul_autotune.ts";
import { parseYaml } from "../npm.ts";
import { MUON_DEFAULTS } from "../ops/muon.ts";
import { listedNames, RESUME_CHANGEABLE } from "./fingerprint.ts";
import {
  camelCase,
  FlagError,
  flagHelp,
  type FlagTable,
  parseValue,
  readArgs,
  resolveSettings,
  type Settings,
  type SettingsInput,
  settingsOf,
} from "../flags.ts";

/** `--resume-from latest-good`: the newest checkpoint of the output directory that loads. */
export const RESUME_LATEST_GOOD = "latest-good";

/** An invalid setting (flag, YAML key or value); the message names it. */
export class TrainConfigError extends FlagError {
  /** Error name shown in stack traces and messages. */
  override name = "TrainConfigError";
}

/** The YAML sections of SpecForge's schema (`specforge/config/schema.py`); "top" is the top level. */
type Section = "model" | "data" | "training" | "top";
const SECTIONS: readonly Section[] = ["model", "data", "training"];

/** The target tensor the draft's frozen embedding is copied from, unless --embedding-key says otherwise. */
export const DEFAULT_EMBEDDING_KEY = "model.embed_tokens.weight";

/**
 * The draft presets of `--draft-preset`. "eagle3.1-lk" (the default) is the combination that measured best on
 * the learning-check recipe (README, "Online training"): EAGLE-3.1 (SpecForge `specforge/modeling/draft/llama3_eagle.py`
 * with `fc_norm` and `norm_output`), the lm_head started from the target's, the LK lambda loss (arXiv
 * 2602.23881) and the Muon optimizer for the hidden matrices. "eagle3" is SpecForge v0.1's EAGLE-3 exactly
 * (AdamW).
 */
export const DRAFT_PRESETS = ["eagle3.1-lk", "eagle3"] as const;

/** One of {@link DRAFT_PRESETS}. */
export type DraftPreset = typeof DRAFT_PRESETS[number];

/**
 * The settings each preset gives when they are not set otherwise (flag name → value); the table's defaults
 * are the default preset's. The derived draft's architecture follows the preset in the run's setup.
 */
const PRESET_SETTINGS: Record<DraftPreset, Record<string, unknown>> = {
  "eagle3.1-lk": { "init-head-from-target": true, "lk-loss-type": "lambda", "optimizer": "muon" },
  "eagle3": { "init-head-from-target": false, "lk-loss-type": "none", "optimizer": "adamw" },
};

/** The settings of `preset` (the default one when not given; none for an unknown name, refused later). */
function presetSettings(preset: unknown): [string, unknown][] {
  return Object.entries(PRESET_SETTINGS[(preset ?? DRAFT_PRESETS[0]) as DraftPreset] ?? {});
}

/** `given` (flag name → value) with the chosen preset's settings added where not given. */
function withPreset(given: Map<string, unknown>): Map<string, unknown> {
  const out = new Map(given);
  for (const [flag, value] of presetSettings(given.get("draft-preset"))) {
    if (out.get(flag) === undefined) out.set(flag, value);
  }
  return out;
}

/** Every setting of `train-online` and `train-offline`, by flag name. */
export const TRAIN_OPTIONS = {
  "target-model-path": {
    kind: "string",
    required: true,
    section: "model",
    help: "target: HF model dir or hub id",
  },
  "draft-preset": {
    kind: "choice",
    choices: DRAFT_PRESETS,
    default: "eagle3.1-lk",
    section: "model",
    help:
      "eagle3.1-lk: a derived draft is EAGLE-3.1 (fc_norm, norm_output), its lm_head and norm start from the target's, LK lambda loss, Muon (the recipe's best measured); eagle3: SpecForge's EAGLE-3 exactly (derived EAGLE-3 draft, random lm_head, KL loss, AdamW). Flags given beside it win; a --draft-model-config keeps its own architecture",
  },
  "draft-type": {
    kind: "choice",
    choices: ["eagle3", "dflash"],
    default: "eagle3",
    section: "model",
    help:
      "eagle3: an EAGLE-3 draft with training-time test (the settings above and below); dflash: a DFlash draft (block-parallel drafting; SpecForge `specforge/modeling/draft/dflash.py`) with the --block-size, --num-draft-layers, --target-layer-ids, --mask-token-id, --sliding-window, --num-anchors, --loss-type, --loss-decay-gamma and --dpace-alpha settings; train-online, or train-offline from prepare-hidden-states --draft-type dflash features",
  },
  "block-size": {
    kind: "int",
    default: 16,
    min: 2,
    section: "model",
    help: "dflash: tokens per block, the anchor and block-size − 1 drafted tokens (SpecForge's recipes: 16)",
  },
  "num-draft-layers": {
    kind: "int",
    default: 1,
    min: 1,
    section: "model",
    help: "dflash: draft decoder layers (SpecForge's derived default 1; its Qwen3-8B recipe 5)",
  },
  "target-layer-ids": {
    kind: "ints",
    default: null,
    min: 0,
    section: "model",
    help:
      "dflash: target layers whose outputs the draft reads, ascending (default: SpecForge's build_target_layer_ids for --num-draft-layers layers)",
  },
  "mask-token-id": {
    kind: "int",
    default: null,
    min: 0,
    section: "model",
    help:
      "dflash: the token of a block's undrafted slots (default: the first embedding row past the tokenizer's vocabulary, else the pad token, else eos, as SpecForge's resolve_mask_token_id)",
  },
  "sliding-window": {
    kind: "int",
    default: null,
    min: 1,
    section: "model",
    help:
      "dflash: every layer but the last attends a window of this many positions (default: all layers full)",
  },
  "num-anchors": {
    kind: "int",
    default: 512,
    min: 1,
    section: "training",
    help: "dflash: blocks per sample, anchored at random supervised positions (SpecForge's default 512)",
  },
  "loss-type": {
    kind: "choice",
    choices: ["dflash", "dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"],
    default: "dflash",
    section: "training",
    help:
      "dflash: the objective: dflash (weighted CE, optionally decayed along the block) or D-PACE's acceptance-weighted variants (arXiv 2605.18810)",
  },
  "loss-decay-gamma": {
    kind: "float",
    default: null,
    min: 0,
    section: "training",
    help:
      "dflash: weight slot k's loss exp(−(k−1)/gamma) (SpecForge's recipe: 7 for block size 16); unset: no decay",
  },
  "dpace-alpha": {
    kind: "float",
    default: 0.5,
    min: 0,
    max: 1,
    section: "training",
    help: "dflash: D-PACE's α in s_k = (1−α)·p_k + α",
  },
  "draft-model-config": {
    kind: "string",
    default: null,
    section: "model",
    help:
      "draft config.json (LlamaForCausalLMEagle3); absent: derived from the target (SpecForge `configs/llama3-8B-eagle3.json` shows one)",
  },
  "norm-output-semantics": {
    kind: "choice",
    choices: ["upstream", "specforge"],
    default: "upstream",
    section: "model",
    help:
      "what the draft config's EAGLE-3.1 norm_output means: upstream (SGLang and vLLM: true feeds the final-normed state to the next step) or specforge (SpecForge a6b6b023: it only says whether the logits use the final norm); exports are always written in SGLang's meaning",
  },
  "init-head-from-target": {
    kind: "bool",
    default: true,
    section: "model",
    help:
      "start the draft's lm_head from the target's lm_head rows of the draft vocabulary and its norm from the target's final norm (dflash: its final norm, the head being the target's); off: SpecForge's init (--draft-preset eagle3 turns it off)",
  },
  "embedding-key": {
    kind: "string",
    default: DEFAULT_EMBEDDING_KEY,
    section: "model",
    help:
      "target tensor used as the draft's frozen embedding (the target's own embedding when the checkpoint lacks the default key, e.g. tied models)",
  },
  "aux-layers": {
    kind: "ints",
    default: null,
    min: 0,
    length: 3,
    section: "model",
    aliases: ["aux_hidden_state_layer_ids"],
    help:
      "three target layer ids to capture, e.g. 1,15,28 (default: the draft config's eagle_config, else [1, N/2-1, N-4])",
  },
  "draft-vocab-size": {
    kind: "int",
    default: null,
    min: 1,
    section: "model",
    help: "draft vocabulary size (default: the draft config's, else min(32000, target vocab))",
  },
  "vocab-mapping-path": {
    kind: "string",
    default: null,
    section: "model",
    aliases: ["vocab_mapping_path"],
    help: "use this d2t/t2d mapping (.safetensors or .json) instead of computing one from the data",
  },
  "train-data-path": {
    kind: "string",
    default: null,
    section: "data",
    aliases: ["prompts_path"],
    help:
      "training data: conversations / preformatted text / pre-tokenized {input_ids, loss_mask} (.jsonl, .json, .parquet); required online",
  },
  "train-hidden-states-path": {
    kind: "string",
    default: null,
    section: "data",
    help: "offline: features directory written by prepare-hidden-states (train-offline requires it)",
  },
  "eval-hidden-states-path": {
    kind: "string",
    default: null,
    section: "data",
    help: "offline: held-out features directory",
  },
  "eval-data-path": { kind: "string", default: null, section: "data", help: "held-out data, same formats" },
  "chat-template": { kind: "string", default: "llama3", section: "data", help: "chat template name" },
  "is-preformatted": { kind: "bool", section: "data", help: 'records are {"text": ...}, already rendered' },
  "train-only-last-turn": { kind: "bool", section: "data", help: "supervise only the last assistant turn" },
  "head-chunk-rows": {
    kind: "int",
    default: null,
    min: 64,
    section: "training",
    check: (n: number): string | null => n % 64 === 0 ? null : "a multiple of 64",
    help:
      "rows of the draft's lm_head, loss and their backward at once, a multiple of 64 (default: every row of a batch, unless the memory plan finds the device short: then the largest window that fits); dflash: rows of the target lm_head's logits, CE and its backward at once, rounded down to whole blocks (default: every row whose logits bind as one storage buffer, unless the memory plan finds the device short: then the largest window that fits)",
  },
  "mlp-saved-dtype": {
    kind: "choice",
    choices: ["f32", "f16"],
    default: "f32",
    section: "training",
    help:
      "dtype of the draft MLP's gate_proj and up_proj outputs kept for the backward: f32, or f16 (half their bytes: Llama-3.1-8B's draft step at T 8,192 holds 19.0 instead of 22.0 GiB; silu(gate)·up is then computed from the f16 values, rounded to nearest even, on any adapter; needs an even intermediate_size)",
  },
  "max-length": {
    kind: "int",
    default: 2048,
    min: 1,
    section: "data",
    help: "tokens kept per sample (right truncation)",
  },
  "cache-dir": { kind: "string", default: "./cache", section: "data", help: "preprocessing cache directory" },
  "output-dir": { kind: "string", required: true, help: "checkpoints, exports, metrics and plots" },
  "num-epochs": {
    kind: "int",
    default: 10,
    min: 1,
    section: "training",
    help: "passes over the training data",
  },
  "batch-size": { kind: "int", default: 1, min: 1, section: "training", help: "samples per micro-batch" },
  "learning-rate": {
    kind: "float",
    default: 1e-4,
    above: 0,
    section: "training",
    help: "peak learning rate",
  },
  "warmup-ratio": {
    kind: "float",
    default: 0.015,
    min: 0,
    below: 1,
    section: "training",
    help: "linear warmup share of the updates",
  },
  "total-steps": {
    kind: "int",
    default: null,
    min: 1,
    section: "training",
    help: "optimizer updates of the schedule (default: num_epochs · ceil(batches per epoch / accumulation))",
  },
  "max-num-steps": {
    kind: "int",
    default: null,
    min: 1,
    section: "training",
    aliases: ["max_steps"],
    help: "stop after this many updates (the schedule keeps --total-steps)",
  },
  "max-grad-norm": {
    kind: "float",
    default: 0.5,
    min: 0,
    section: "training",
    help: "global grad-norm clipping (0: off)",
  },
  "ttt-length": {
    kind: "int",
    default: 7,
    min: 1,
    section: "training",
    help: "test-time-training unroll depth K (TTT positions 0..K-1)",
  },
  "ttt-loss-decay": {
    kind: "float",
    default: 0.8,
    min: 0,
    section: "training",
    help:
      "the loss of TTT position k is weighted decay^k (SpecForge's fixed 0.8; 1 weighs every position alike, favouring later draft steps)",
  },
  "optimizer": {
    kind: "choice",
    choices: ["adamw", "muon"],
    default: "muon",
    section: "training",
    help:
      "adamw: AdamW for every parameter (SpecForge's); muon: Muon (Nesterov momentum, 5 Newton-Schulz steps, lr scaled to AdamW's RMS) for the hidden matrices, AdamW for norms and lm_head (speculators' split; --draft-preset eagle3 sets adamw)",
  },
  "muon-lr": {
    kind: "float",
    default: null,
    above: 0,
    section: "training",
    help:
      "Muon's peak learning rate, on --learning-rate's schedule (default: 10 x --learning-rate, speculators')",
  },
  "muon-momentum": {
    kind: "float",
    default: MUON_DEFAULTS.momentum,
    min: 0,
    max: 1,
    section: "training",
    help: "Muon's momentum (Nesterov)",
  },
  "muon-weight-decay": {
    kind: "float",
    default: MUON_DEFAULTS.weightDecay,
    min: 0,
    section: "training",
    help: "Muon's decoupled weight decay (speculators' default)",
  },
  "lk-loss-type": {
    kind: "choice",
    choices: ["none", "alpha", "lambda"],
    default: "lambda",
    section: "training",
    help:
      "acceptance-targeted LK loss (arXiv 2602.23881, SpecForge lk_loss_type): alpha = -mean log(expected acceptance), lambda = a KL/acceptance mix weighted by --kl-scale, --kl-decay; none = SpecForge's KL loss (--draft-preset eagle3 sets none)",
  },
  "kl-scale": {
    kind: "float",
    default: 1,
    min: 0,
    section: "training",
    help: "lambda LK loss: lambda = kl_scale * exp(-kl_decay * mean acceptance)",
  },
  "kl-decay": {
    kind: "float",
    default: 1,
    min: 0,
    section: "training",
    help: "lambda LK loss: see --kl-scale (SpecForge's YAML default 1; its old CLI and the paper used 3)",
  },
  "draft-accumulation-steps": {
    kind: "int",
    default: 1,
    min: 1,
    section: "training",
    aliases: ["accumulation_steps"],
    help: "micro-batches per optimizer update",
  },
  "seed": {
    kind: "int",
    default: 0,
    min: 0,
    section: "training",
    help: "seed of the draft init and the data order",
  },
  "log-interval": {
    kind: "int",
    default: 50,
    min: 1,
    section: "training",
    help: "updates between progress lines and train metrics",
  },
  "eval-interval": {
    kind: "int",
    default: 5000,
    min: 0,
    section: "training",
    help: "updates between evaluations (0: only at the end)",
  },
  "save-interval": {
    kind: "int",
    default: 5000,
    min: 0,
    section: "training",
    help: "updates between checkpoints (0: only at the end)",
  },
  "resume": {
    kind: "bool",
    section: "training",
    help: "continue from the latest checkpoint in --output-dir",
  },
  "resume-from": {
    kind: "string",
    default: null,
    section: "training",
    aliases: ["resume_from"],
    help: `continue from this checkpoint directory; ${RESUME_LATEST_GOOD}: the newest checkpoint in ` +
      "--output-dir that loads (when the latest is corrupt)",
  },
  "resume-allow-changed": {
    kind: "strings",
    section: "training",
    help: "resume although these changed (comma-separated): a setting (num_epochs, …) or train_data, " +
      "eval_data, tokenizer, chat_template, target_config, draft_config",
  },
  "export-dtype": {
    kind: "choice",
    choices: ["bf16", "f16", "f32"],
    default: "bf16",
    section: "training",
    help: "dtype of the exported SGLang weights",
  },
  "eval-batches": {
    kind: "int",
    default: null,
    min: 1,
    section: "training",
    help: "evaluate on at most this many batches (default: the whole eval set)",
  },
  "eval-spec-samples": {
    kind: "int",
    default: 0,
    min: 0,
    section: "training",
    help:
      "at each eval, also run greedy speculative decoding on this many eval prompts, log tau, and export the draft with the best tau as <output-dir>/best (0: off)",
  },
  "eval-spec-steps": {
    kind: "int",
    default: 3,
    min: 1,
    section: "training",
    help: "draft steps (chain) of that speculative decoding",
  },
  "eval-spec-new-tokens": {
    kind: "int",
    default: 32,
    min: 1,
    section: "training",
    help: "new tokens per prompt of that speculative decoding",
  },
  "tp-size": {
    kind: "int",
    default: 1,
    min: 0,
    check: (n: number): string | null => n === 1 ? null : "1 (Eaglet runs the target on one device)",
    section: "training",
    compat: true,
    help: "target tensor parallelism (must be 1)",
  },
  "attention-backend": {
    kind: "choice",
    choices: ["sdpa", "flex_attention", "fa", "eager"],
    default: "flex_attention",
    section: "training",
    compat: true,
    help: "SpecForge's attention backend (all give the same math here)",
  },
  "target-model-backend": {
    kind: "choice",
    choices: ["sglang", "hf", "custom"],
    default: "sglang",
    section: "model",
    compat: true,
    help: "SpecForge's target backend (the target always runs on WebGPU here)",
  },
  "build-dataset-num-proc": {
    kind: "int",
    default: 8,
    min: 0,
    section: "data",
    compat: true,
    help: "SpecForge's tokenizer workers",
  },
  "dist-timeout": {
    kind: "int",
    default: 20,
    min: 0,
    section: "training",
    compat: true,
    help: "SpecForge's NCCL timeout (minutes)",
  },
  "report-to": {
    kind: "choice",
    choices: ["none", "tensorboard"],
    default: "none",
    section: "training",
    help: "experiment tracker besides <output-dir>/metrics.jsonl: tensorboard writes event files to " +
      "<output-dir>/runs (tensorboard --logdir <output-dir>/runs)",
  },
  "cache-key": {
    kind: "string",
    default: null,
    section: "data",
    compat: true,
    help: "unused, as in SpecForge",
  },
  "verbose": { kind: "bool", compat: true, help: "more messages" },
  "dry-run": {
    kind: "bool",
    help: "print the memory plan (bytes by category at the peak, against the device's limits) and exit, " +
      "loading no weight and writing nothing but the tokenized-data cache",
  },
  "device-memory": DEVICE_MEMORY_FLAG,
  "target-memory-budget": { ...TARGET_MEMORY_BUDGET_FLAG, section: "model" },
  "matmul-autotune": MATMUL_AUTOTUNE_FLAG,
} as const satisfies FlagTable;

/** A flag name of {@link TRAIN_OPTIONS}. */
export type TrainOptionName = keyof typeof TRAIN_OPTIONS;

/** The resolved settings of a run: each flag of {@link TRAIN_OPTIONS} under its camelCase name. */
export type TrainSettings = Settings<typeof TRAIN_OPTIONS>;

/** What a library caller gives {@link trainSettings}: the required settings and any others. */
export type TrainSettingsInput = SettingsInput<typeof TRAIN_OPTIONS>;

/** The flags of the train tasks' command line: `--config` and the settings. */
export const TRAIN_FLAGS = {
  config: {
    kind: "string",
    arg: "file",
    help: "YAML file with any of the settings below (flags override it)",
  },
  ...TRAIN_OPTIONS,
} as const satisfies FlagTable;

const SPECS: FlagTable = TRAIN_OPTIONS;

/** Runs `f`, turning a {@link FlagError} into a {@link TrainConfigError} with the same message. */
function asConfigError<R>(f: () => R): R {
  try {
    return f();
  } catch (e) {
    if (e instanceof FlagError && !(e instanceof TrainConfigError)) throw new TrainConfigError(e.message);
    throw e;
  }
}

/**
 * The settings of a run from a library caller's object (camelCase names, e.g.
 * `trainSettings({ targetModelPath, trainDataPath, outputDir, batchSize: 4 })`): every value checked as its
 * flag's, the draft preset's settings and then the defaults filled, then {@link checkSettings}. Errors name
 * the setting.
 */
export function trainSettings(input: TrainSettingsInput): TrainSettings {
  const presetInput = Object.fromEntries(
    presetSettings(input.draftPreset).map(([flag, value]) => [camelCase(flag), value]),
  );
  const given = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined));
  const s = asConfigError(() =>
    settingsOf(TRAIN_OPTIONS, { ...presetInput, ...given } as TrainSettingsInput)
  );
  checkSettings(s);
  return s;
}

/** The message of a thrown value. */
function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
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
    throw new TrainConfigError(`${file}: not valid YAML (${errorText(e).split("\n")[0]})`);
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
    const home = spec.section ?? "top";
    if (section !== null && home !== section) {
      throw new TrainConfigError(`${file}: '${where}' belongs in section '${home}'`);
    }
    if (out.has(flag)) throw new TrainConfigError(`${file}: '${where}' is set twice`);
    if (value === null && "default" in spec && spec.default === null) out.set(flag, null);
    else out.set(flag, asConfigError(() => parseValue(spec, value, `${file}: ${where}`)));
  };
  for (const [key, value] of Object.entries(doc)) {
    const section = SECTIONS.find((s) => s === key);
    if (section === undefined) {
      put(key, value, null);
      continue;
    }
    if (value === null) continue;
    if (typeof value !== "object" || Array.isArray(value)) {
      throw new TrainConfigError(`${file}: section '${key}' must be a mapping`);
    }
    for (const [k, v] of Object.entries(value)) put(k, v, section);
  }
  return out;
}

/** What {@link parseTrainArgs} returns: the settings, or a request for help. */
export type ParsedTrainArgs =
  | { help: true; debug: boolean }
  | { help: false; debug: boolean; settings: TrainSettings; configFile: string | null };

/** The text of the --config file, or an error naming it. */
async function readConfig(file: string, readText: (path: string) => Promise<string>): Promise<string> {
  try {
    return await readText(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new TrainConfigError(`config file not found: ${file}`);
    throw new TrainConfigError(`cannot read config file ${file}: ${errorText(e)}`);
  }
}

/**
 * Parses command-line arguments: `--config run.yaml` is read first, flags override it, defaults fill the
 * rest; required settings must be given by one of the two. `readText` reads the YAML file (injectable for
 * tests).
 */
export async function parseTrainArgs(
  argv: string[],
  readText: (path: string) => Promise<string> = (p) => Deno.readTextFile(p),
): Promise<ParsedTrainArgs> {
  const args = asConfigError(() => readArgs(TRAIN_FLAGS, argv));
  if (args.help) return { help: true, debug: args.debug };
  const configFile = args.given.get("config");
  args.given.delete("config");
  const values = new Map<string, unknown>();
  if (typeof configFile === "string") {
    for (const [k, x] of readYamlSettings(await readConfig(configFile, readText), configFile)) {
      values.set(k, x);
    }
  }
  for (const [k, x] of args.given) values.set(k, x);
  for (const [flag, spec] of Object.entries(SPECS)) {
    if (spec.required && values.get(flag) === undefined) {
      throw new TrainConfigError(`--${flag} is required (or ${flag.replace(/-/g, "_")} in --config)`);
    }
  }
  const settings = asConfigError(() => resolveSettings(TRAIN_OPTIONS, withPreset(values)));
  checkSettings(settings);
  return {
    help: false,
    debug: args.debug,
    settings,
    configFile: typeof configFile === "string" ? configFile : null,
  };
}

/** The checks across settings (each value's own checks are in {@link TRAIN_OPTIONS}). */
export function checkSettings(s: TrainSettings): void {
  if (s.resume && s.resumeFrom) throw new TrainConfigError("give --resume or --resume-from, not both");
  for (const name of listedNames(s.resumeAllowChanged)) {
    if (!RESUME_CHANGEABLE.includes(name)) {
      throw new TrainConfigError(
        `--resume-allow-changed: unknown name ${JSON.stringify(name)} (one of ${
          RESUME_CHANGEABLE.join(", ")
        })`,
      );
    }
  }
  if (!s.trainDataPath && !s.trainHiddenStatesPath) {
    throw new TrainConfigError(
      "--train-data-path is required (or train_data_path in --config; --train-hidden-states-path for train-offline)",
    );
  }
}

/** Checks --mlp-saved-dtype against the draft's MLP width: f16 keeps gate and up in pairs, so it must be even. */
export function checkMlpSavedDtype(s: TrainSettings, intermediateSize: number): void {
  if (s.mlpSavedDtype === "f16" && intermediateSize % 2 !== 0) {
    throw new TrainConfigError(
      `--mlp-saved-dtype f16 needs an even intermediate_size (f16 pairs), the draft's is ${intermediateSize}`,
    );
  }
}

/** The --help text: every flag with its default, then the YAML layout. */
export function trainUsage(task: "train-online" | "train-offline" = "train-online"): string {
  const data = task === "train-online" ? "--train-data-path <file>" : "--train-hidden-states-path <dir>";
  const usage = `usage: deno task ${task} --target-model-path <dir|hub id> ${data} ` +
    `--output-dir <dir> [options]\n       deno task ${task} --config run.yaml [flags that override it]`;
  return flagHelp(TRAIN_FLAGS, usage) +
    "\nYAML: flat keys (target_model_path: ..., the flag names with underscores) or SpecForge's sections\n" +
    "model: {target_model_path, draft_model_config, embedding_key, aux_hidden_state_layer_ids, ...},\n" +
    "data: {train_data_path | prompts_path, eval_data_path, max_length, chat_template, cache_dir, ...},\n" +
    "training: {num_epochs, batch_size, learning_rate, accumulation_steps, ttt_length, seed, ...}, output_dir.\n" +
    "Unknown keys are errors.\n";
}

/** The settings as the snake_case mapping saved in checkpoints (and accepted back as YAML). */
export function settingsToJson(s: TrainSettings): Record<string, unknown> {
  const values = new Map<string, unknown>(Object.entries(s));
  const out: Record<string, unknown> = {};
  for (const flag of Object.keys(SPECS)) out[flag.replace(/-/g, "_")] = values.get(camelCase(flag));
  return out;
}
