/**
 * A run's fingerprint: what its result depends on besides the settings, as content hashes (the training and
 * eval data, the tokenizer, the chat template, the target's and the draft's configs), saved in every
 * checkpoint. `--resume` compares the saved fingerprint and the settings that change the math with the
 * resumed run's and refuses any difference the user did not name in `--resume-allow-changed`: the same path
 * with other contents, or another tokenizer, would otherwise train on and exit 0 with different weights.
 */
import { canonicalJson } from "../data/cache.ts";
import { sha256Hex } from "../data/tokenizer.ts";

/** Content hashes (sha256, hex) of a run's inputs, by item; an item a run does not use is absent. */
export type RunFingerprint = Partial<Record<FingerprintItem, string>>;

/** The fingerprint's items and what each hashes. */
export const FINGERPRINT_ITEMS = {
  train_data: "the training data file (offline: the tokens and loss masks of the training features)",
  eval_data: "the eval data file (offline: the tokens and loss masks of the eval features)",
  tokenizer: "the target's tokenizer files",
  chat_template: "the chat template",
  target_config: "the target's config.json",
  draft_config: "the draft config (its aux layers included)",
} as const;

/** One item of {@link FINGERPRINT_ITEMS}. */
export type FingerprintItem = keyof typeof FINGERPRINT_ITEMS;

/** The settings that change the math, which a resumed run must keep unless allowed (snake_case names). */
export const RESUME_CONTRACT = [
  "global_batch_size",
  "draft_accumulation_steps",
  "ttt_length",
  "ttt_loss_decay",
  "optimizer",
  "muon_lr",
  "muon_momentum",
  "muon_weight_decay",
  "seed",
  "learning_rate",
  "warmup_ratio",
  "num_epochs",
  "total_steps",
  "max_length",
  "max_grad_norm",
  "norm_output_semantics",
  "lk_loss_type",
  "kl_scale",
  "kl_decay",
  "embedding_key",
  "is_preformatted",
  "train_only_last_turn",
  "draft_type",
  "block_size",
  "num_draft_layers",
  "target_layer_ids",
  "mask_token_id",
  "sliding_window",
  "num_anchors",
  "loss_type",
  "loss_decay_gamma",
  "dpace_alpha",
  "mlp_saved_dtype",
] as const;

/**
 * What a checkpoint saved before a setting of {@link RESUME_CONTRACT} existed ran with (snake_case names): the
 * one value the code had then.
 */
const BEFORE_THE_SETTING: Readonly<Record<string, unknown>> = {
  ttt_loss_decay: 0.8,
  draft_type: "eagle3",
  block_size: 16,
  num_draft_layers: 1,
  num_anchors: 512,
  loss_type: "dflash",
  dpace_alpha: 0.5,
  optimizer: "adamw",
  muon_momentum: 0.95,
  muon_weight_decay: 0.1,
  mlp_saved_dtype: "f32",
};

/**
 * A run's settings (snake_case) as the resume contract compares them: with `global_batch_size`, the batch
 * per rank times the ranks (`worldSize`), so that a run resumes on another number of ranks at the same
 * global batch (and data position).
 */
export function contractSettings(
  settings: Record<string, unknown>,
  worldSize: number,
): Record<string, unknown> {
  return { ...settings, global_batch_size: Number(settings.batch_size) * worldSize };
}

/** Every name `--resume-allow-changed` accepts. */
export const RESUME_CHANGEABLE: readonly string[] = [...RESUME_CONTRACT, ...Object.keys(FINGERPRINT_ITEMS)];

/** The names of a list flag given repeatedly or comma-separated (`--resume-allow-changed a,b --… c`). */
export function listedNames(values: readonly string[] | null): string[] {
  return (values ?? []).flatMap((v) => v.split(",")).map((v) => v.trim()).filter((v) => v !== "");
}

/** The sha256 (hex) of a value's canonical JSON (object keys sorted), the hash of a config or a template. */
export function jsonSha256(value: unknown): string {
  return sha256Hex(canonicalJson(value));
}

/** A difference between a checkpoint's run and the resumed one. */
export interface RunChange {
  /** The setting (snake_case) or fingerprint item. */
  name: string;
  /** What the checkpoint holds: a JSON value, or a hash shortened to 12 digits. */
  saved: string;
  /** What the resumed run has, in the same form. */
  now: string;
  /** Whether saved and now are sha256 hashes (a fingerprint item) or JSON values (a setting). */
  hashes: boolean;
}

/**
 * The differences between a saved run (`savedSettings`, `savedFingerprint`, null for a checkpoint written
 * before fingerprints) and the resumed one: every setting of {@link RESUME_CONTRACT} and every fingerprint
 * item both runs have.
 */
export function runChanges(
  savedSettings: Record<string, unknown>,
  nowSettings: Record<string, unknown>,
  savedFingerprint: RunFingerprint | null,
  nowFingerprint: RunFingerprint,
): RunChange[] {
  const changes: RunChange[] = [];
  for (const key of RESUME_CONTRACT) {
    const saved = JSON.stringify(savedSettings[key] ?? BEFORE_THE_SETTING[key] ?? null);
    const now = JSON.stringify(nowSettings[key] ?? null);
    if (saved !== now) changes.push({ name: key, saved, now, hashes: false });
  }
  for (const item of Object.keys(FINGERPRINT_ITEMS) as FingerprintItem[]) {
    const saved = savedFingerprint?.[item], now = nowFingerprint[item];
    if (saved !== undefined && now !== undefined && saved !== now) {
      changes.push({ name: item, saved: saved.slice(0, 12), now: now.slice(0, 12), hashes: true });
    }
  }
  return changes;
}

/** "train_data (sha256 1a2b… → 3c4d…)" or "num_epochs (2 → 3)": a change for a message. */
export function describeChange(c: RunChange): string {
  return `${c.name} (${c.hashes ? "sha256 " : ""}${c.saved} → ${c.now})`;
}
