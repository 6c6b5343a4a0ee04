/**
 * llama2.c checkpoints (Karpathy's `run.c` format) and tokenizers, converted to a Hugging Face Llama
 * directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...).
 *
 * Checkpoint formats:
 * - legacy (version 0): 7 int32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`
 *   (vocab_size < 0 means an untied classifier follows), then float32 arrays: token_embedding [V,D],
 *   rms_att [L,D], wq [L,D,D], wk [L,KV,D], wv [L,KV,D], wo [L,D,D], rms_ffn [L,D], w1 [L,F,D], w2 [L,D,F],
 *   w3 [L,F,D], rms_final [D], freq_cis_real and freq_cis_imag [seq_len, head_size/2] (unused), then the
 *   classifier [V,D] when untied. Matrices are (out, in), row-major, like PyTorch's nn.Linear.
 * - version 1 (`export.py --version 1`): uint32 magic 0x616b3432 ("ak42"), int32 version = 1, the same 7
 *   ints, a uint8 shared-classifier flag, zero padding to 256 bytes, then float32: rms_att [L,D],
 *   rms_ffn [L,D], rms_final [D], token_embedding, wq, wk, wv, wo, w1, w2, w3, and the classifier if not shared.
 *
 * RoPE: llama2.c rotates interleaved pairs (x[2i], x[2i+1]) of each head; HF Llama rotates halves
 * (x[i], x[i + hd/2]). Permuting the output rows of wq and wk within each head so that new row
 * `p·hd/2 + i` = old row `2i + p` (p ∈ {0,1}) makes the two identical; it is the permutation of
 * transformers' `convert_llama_weights_to_hf.py` (`view(h, hd/2, 2, in).transpose(1, 2)`).
 *
 * Tokenizer (`tokenizer.bin`): int32 max_token_length, then per token float32 score, int32 length, bytes.
 * Ids 0/1/2 are <unk>/BOS/EOS, then 256 byte-fallback tokens `<0xNN>`, then sentencepiece BPE pieces with
 * ' ' for spaces. llama2.c encodes by prepending a space, splitting into code points (byte tokens for those
 * not in the vocabulary), then repeatedly merging the adjacent pair whose concatenation is the vocabulary
 * piece of highest score (leftmost on ties). The tokenizer.json written here reproduces that with an HF BPE
 * model: merges are all (left, right) splits of each piece into two pieces, ranked by the piece's score.
 */
import { join } from "node:path";
import { writeDirAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { fromFloat32, type RawTensor, writeSafetensors } from "../io/safetensors.ts";

/** A malformed llama2.c file; the message names the file. */
export class Llama2cError extends Error {
  override name = "Llama2cError";
}

/** Hyperparameters of a llama2.c checkpoint. */
export interface Llama2cConfig {
  /** Model width D (`dim`), the hidden size. */
  dim: number;
  /** SwiGLU inner width F (`hidden_dim`). */
  hiddenDim: number;
  /** Number of decoder layers L (`n_layers`). */
  numLayers: number;
  /** Query heads (`n_heads`); the head width is dim / numHeads. */
  numHeads: number;
  /** Key/value heads (`n_kv_heads`). */
  numKvHeads: number;
  /** Vocabulary size V (absolute value of the header's `vocab_size`). */
  vocabSize: number;
  /** Longest sequence the model was trained on (`seq_len`), written as max_position_embeddings. */
  seqLen: number;
  /** The classifier is the token embedding. */
  sharedClassifier: boolean;
  /** 0 (legacy) or 1. */
  version: 0 | 1;
}

/** The float32 weights of a llama2.c checkpoint; per-layer tensors are stacked along a leading layer axis. */
export interface Llama2cWeights {
  tokenEmbedding: Float32Array; // [V, D]
  rmsAtt: Float32Array; // [L, D]
  wq: Float32Array; // [L, D, D]
  wk: Float32Array; // [L, KV·hd, D]
  wv: Float32Array; // [L, KV·hd, D]
  wo: Float32Array; // [L, D, D]
  rmsFfn: Float32Array; // [L, D]
  w1: Float32Array; // [L, F, D]
  w2: Float32Array; // [L, D, F]
  w3: Float32Array; // [L, F, D]
  rmsFinal: Float32Array; // [D]
  /** [V, D]; the token embedding when shared. */
  classifier: Float32Array;
}

/** A parsed checkpoint. */
export interface Llama2cCheckpoint {
  config: Llama2cConfig;
  weights: Llama2cWeights;
}

const V1_MAGIC = 0x616b3432;
const V1_HEADER_BYTES = 256;

/** Parses a llama2.c checkpoint (legacy or version 1); `file` names it in errors. */
export function readLlama2cCheckpoint(bytes: Uint8Array, file: string): Llama2cCheckpoint {
  if (bytes.byteLength < 28) {
    throw new Llama2cError(`${file}: ${bytes.byteLength} bytes, too short for a header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version: 0 | 1 = view.getUint32(0, true) === V1_MAGIC ? 1 : 0;
  if (version === 1 && view.getInt32(4, true) !== 1) {
    throw new Llama2cError(
      `${file}: llama2.c export version ${view.getInt32(4, true)} is not supported (0 or 1)`,
    );
  }
  const at = version === 1 ? 8 : 0;
  const ints = Array.from({ length: 7 }, (_, i) => view.getInt32(at + 4 * i, true));
  const [dim, hiddenDim, numLayers, numHeads, numKvHeads, rawVocab, seqLen] = ints;
  const sharedClassifier = version === 1 ? view.getUint8(36) === 1 : rawVocab > 0;
  const config: Llama2cConfig = {
    dim,
    hiddenDim,
    numLayers,
    numHeads,
    numKvHeads,
    vocabSize: Math.abs(rawVocab),
    seqLen,
    sharedClassifier,
    version,
  };
  const names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
  ints.forEach((v, i) => {
    if (v === 0 || (v < 0 && i !== 5) || (v < 0 && version === 1)) {
      throw new Llama2cError(
        `${file}: header ${names[i]} = ${v} is not a positive size (not a llama2.c file?)`,
      );
    }
  });
  if (dim % numHeads !== 0 || (dim / numHeads) % 2 !== 0) {
    throw new Llama2cError(`${file}: dim ${dim} does not split into ${numHeads} heads of even size`);
  }
  if (numHeads % numKvHeads !== 0) {
    throw new Llama2cError(`${file}: n_heads ${numHeads} is not a multiple of n_kv_heads ${numKvHeads}`);
  }
  const { vocabSize: v } = config;
  const hd = dim / numHeads;
  const kv = numKvHeads * hd;
  const L = numLayers;
  const F = hiddenDim;
  const sizes = {
    tokenEmbedding: v * dim,
    rmsAtt: L * dim,
    wq: L * dim * dim,
    wk: L * kv * dim,
    wv: L * kv * dim,
    wo: L * dim * dim,
    rmsFfn: L * dim,
    w1: L * F * dim,
    w2: L * dim * F,
    w3: L * F * dim,
    rmsFinal: dim,
    freqCis: seqLen * hd, // real and imaginary halves together (legacy only)
    classifier: sharedClassifier ? 0 : v * dim,
  };
  type Part = keyof typeof sizes;
  const order: Part[] = version === 0
    ? [
      "tokenEmbedding",
      "rmsAtt",
      "wq",
      "wk",
      "wv",
      "wo",
      "rmsFfn",
      "w1",
      "w2",
      "w3",
      "rmsFinal",
      "freqCis",
      "classifier",
    ]
    : [
      "rmsAtt",
      "rmsFfn",
      "rmsFinal",
      "tokenEmbedding",
      "wq",
      "wk",
      "wv",
      "wo",
      "w1",
      "w2",
      "w3",
      "classifier",
    ];
  const start = version === 0 ? 28 : V1_HEADER_BYTES;
  const expected = start + 4 * order.reduce((s, p) => s + sizes[p], 0);
  if (bytes.byteLength !== expected) {
    throw new Llama2cError(
      `${file}: ${bytes.byteLength} bytes, but the header (${
        names.map((n, i) => `${n}=${ints[i]}`).join(" ")
      }, version ${version}) implies ${expected}`,
    );
  }
  // Copy once into an aligned buffer, then take views.
  const floats = new Float32Array(bytes.slice(start).buffer);
  const parts = {} as Record<Part, Float32Array>;
  let offset = 0;
  for (const p of order) {
    parts[p] = floats.subarray(offset, offset + sizes[p]);
    offset += sizes[p];
  }
  const { freqCis: _unused, classifier, ...rest } = parts;
  return { config, weights: { ...rest, classifier: sharedClassifier ? rest.tokenEmbedding : classifier } };
}

/**
 * Permutes the rows of a projection `[numHeads·headDim, cols]` from llama2.c's interleaved RoPE pairs to HF's
 * half rotation: within each head, new row `p·hd/2 + i` = old row `2i + p`.
 */
export function interleavedToHalfRotation(w: Float32Array, numHeads: number, cols: number): Float32Array {
  return permuteRows(w, numHeads, cols, false);
}

/** The inverse of {@link interleavedToHalfRotation}. */
export function halfRotationToInterleaved(w: Float32Array, numHeads: number, cols: number): Float32Array {
  return permuteRows(w, numHeads, cols, true);
}

function permuteRows(w: Float32Array, numHeads: number, cols: number, inverse: boolean): Float32Array {
  const rows = w.length / cols;
  const hd = rows / numHeads;
  if (!Number.isInteger(hd) || hd % 2 !== 0) {
    throw new Llama2cError(`cannot permute ${rows} rows into ${numHeads} heads of even size`);
  }
  const out = new Float32Array(w.length);
  for (let h = 0; h < numHeads; h++) {
    for (let p = 0; p < 2; p++) {
      for (let i = 0; i < hd / 2; i++) {
        const half = h * hd + p * (hd / 2) + i; // row in the half-rotation layout
        const inter = h * hd + 2 * i + p; // row in the interleaved layout
        const [to, from] = inverse ? [inter, half] : [half, inter];
        out.set(w.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** The HF `config.json` object of a converted checkpoint (LlamaForCausalLM, float32). */
export function hfConfigOf(c: Llama2cConfig): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.dim / c.numHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.seqLen,
    hidden_act: "silu",
    rms_norm_eps: 1e-5, // run.c's RMSNorm epsilon
    rope_theta: 10000.0,
    rope_scaling: null,
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: c.sharedClassifier,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "float32",
  };
}

/**
 * The HF Llama tensors of a checkpoint, in layer order, with wq/wk permuted to half rotation. A shared
 * classifier is stored once, as `model.embed_tokens.weight` (HF ties lm_head to it).
 */
export function hfTensorsOf(ckpt: Llama2cCheckpoint): Array<[string, RawTensor]> {
  const { config: c, weights: w } = ckpt;
  const hd = c.dim / c.numHeads;
  const kv = c.numKvHeads * hd;
  const F = c.hiddenDim;
  const D = c.dim;
  const layer = (a: Float32Array, l: number, n: number) => a.subarray(l * n, (l + 1) * n);
  const out: Array<[string, RawTensor]> = [[
    "model.embed_tokens.weight",
    fromFloat32(w.tokenEmbedding, [c.vocabSize, D]),
  ]];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      [`${p}.input_layernorm.weight`, fromFloat32(layer(w.rmsAtt, l, D), [D])],
      [
        `${p}.self_attn.q_proj.weight`,
        fromFloat32(interleavedToHalfRotation(layer(w.wq, l, D * D), c.numHeads, D), [D, D]),
      ],
      [
        `${p}.self_attn.k_proj.weight`,
        fromFloat32(interleavedToHalfRotation(layer(w.wk, l, kv * D), c.numKvHeads, D), [kv, D]),
      ],
      [`${p}.self_attn.v_proj.weight`, fromFloat32(layer(w.wv, l, kv * D), [kv, D])],
      [`${p}.self_attn.o_proj.weight`, fromFloat32(layer(w.wo, l, D * D), [D, D])],
      [`${p}.post_attention_layernorm.weight`, fromFloat32(layer(w.rmsFfn, l, D), [D])],
      [`${p}.mlp.gate_proj.weight`, fromFloat32(layer(w.w1, l, F * D), [F, D])],
      [`${p}.mlp.down_proj.weight`, fromFloat32(layer(w.w2, l, D * F), [D, F])],
      [`${p}.mlp.up_proj.weight`, fromFloat32(layer(w.w3, l, F * D), [F, D])],
    );
  }
  out.push(["model.norm.weight", fromFloat32(w.rmsFinal, [D])]);
  if (!c.sharedClassifier) out.push(["lm_head.weight", fromFloat32(w.classifier, [c.vocabSize, D])]);
  return out;
}

/** A llama2.c tokenizer: pieces (as text, spaces as ' ') and their BPE scores, indexed by token id. */
export interface Llama2cTokenizer {
  maxTokenLength: number;
  pieces: string[];
  scores: Float32Array;
}

/** Parses a llama2.c `tokenizer.bin` with `vocabSize` tokens; `file` names it in errors. */
export function readLlama2cTokenizer(bytes: Uint8Array, vocabSize: number, file: string): Llama2cTokenizer {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const need = (at: number, n: number, what: string) => {
    if (at + n > bytes.byteLength) {
      throw new Llama2cError(`${file}: ends inside ${what} (at byte ${at}; ${vocabSize} tokens expected)`);
    }
  };
  need(0, 4, "the header");
  const maxTokenLength = view.getInt32(0, true);
  const pieces: string[] = [];
  const scores = new Float32Array(vocabSize);
  let at = 4;
  for (let id = 0; id < vocabSize; id++) {
    need(at, 8, `token ${id}`);
    scores[id] = view.getFloat32(at, true);
    const len = view.getInt32(at + 4, true);
    at += 8;
    if (len < 0 || len > maxTokenLength) {
      throw new Llama2cError(`${file}: token ${id} has length ${len} (max_token_length ${maxTokenLength})`);
    }
    need(at, len, `token ${id}`);
    try {
      pieces.push(utf8.decode(bytes.subarray(at, at + len)));
    } catch {
      throw new Llama2cError(`${file}: token ${id} is not valid UTF-8`);
    }
    at += len;
  }
  if (at !== bytes.byteLength) {
    throw new Llama2cError(
      `${file}: ${bytes.byteLength - at} bytes left after ${vocabSize} tokens (wrong vocab size?)`,
    );
  }
  if (new Set(pieces).size !== pieces.length) throw new Llama2cError(`${file}: duplicate token pieces`);
  return { maxTokenLength, pieces, scores };
}

/** llama2.c's unknown-token id. */
export const LLAMA2C_UNK = 0;
/** llama2.c's BOS id. */
export const LLAMA2C_BOS = 1;
/** llama2.c's EOS id. */
export const LLAMA2C_EOS = 2;
const SPECIAL_NAMES = ["<unk>", "<s>", "</s>"];
const BYTE_PIECE = /^<0x([0-9A-F]{2})>$/;

/**
 * Encodes `text` exactly as llama2.c's `encode()` does (a space is prepended to non-empty text; code points
 * missing from the vocabulary become byte tokens `byte + 3`; then greedy highest-score merges). No BOS/EOS.
 */
export function encodeLlama2c(tok: Llama2cTokenizer, text: string): number[] {
  const lookup = new Map<string, number>();
  tok.pieces.forEach((p, id) => {
    if (id > LLAMA2C_EOS && !BYTE_PIECE.test(p) && !lookup.has(p)) lookup.set(p, id);
  });
  const ids: number[] = [];
  if (text.length > 0) ids.push(lookup.get(" ")!);
  for (const ch of text) {
    const id = lookup.get(ch);
    if (id !== undefined) ids.push(id);
    else for (const b of new TextEncoder().encode(ch)) ids.push(b + 3);
  }
  if (ids[0] === undefined) ids.shift(); // a vocabulary without ' ' (not llama2.c's)
  for (;;) {
    let best = -Infinity;
    let bestId = -1;
    let bestAt = -1;
    for (let i = 0; i + 1 < ids.length; i++) {
      const id = lookup.get(tok.pieces[ids[i]] + tok.pieces[ids[i + 1]]);
      if (id !== undefined && tok.scores[id] > best) {
        best = tok.scores[id];
        bestId = id;
        bestAt = i;
      }
    }
    if (bestAt < 0) return ids;
    ids.splice(bestAt, 2, bestId);
  }
}

/**
 * Decodes ids as llama2.c's `decode()` prints them: byte tokens become their byte, the leading space of the
 * piece after BOS is dropped, and BOS/EOS/unk print nothing.
 */
export function decodeLlama2c(tok: Llama2cTokenizer, ids: number[], prev = LLAMA2C_BOS): string {
  const bytes: number[] = [];
  const enc = new TextEncoder();
  for (const id of ids) {
    if (id > LLAMA2C_EOS) {
      let piece = tok.pieces[id];
      if (prev === LLAMA2C_BOS && piece.startsWith(" ")) piece = piece.slice(1);
      const m = BYTE_PIECE.exec(piece);
      if (m) bytes.push(parseInt(m[1], 16));
      else bytes.push(...enc.encode(piece));
    }
    prev = id;
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/** The HF vocabulary piece of token `id`: special names, byte tokens as is, spaces as U+2581. */
function hfPiece(tok: Llama2cTokenizer, id: number): string {
  if (id <= LLAMA2C_EOS) return SPECIAL_NAMES[id];
  const p = tok.pieces[id];
  return BYTE_PIECE.test(p) ? p : p.replaceAll(" ", "\u2581");
}

/**
 * An HF `tokenizer.json` (sentencepiece-style BPE with byte fallback, like Llama 2's) equivalent to llama2.c's
 * encoder: normalizer prepends U+2581 and maps ' ' to U+2581; merges are every split of a piece into two
 * pieces, ordered by the piece's score (highest first; ties by id, then split point); the decoder maps U+2581
 * back, turns byte tokens into bytes and strips one leading space; BOS is added by the post-processor.
 * One difference remains possible: when two *different* splits of the same piece compete in one word,
 * llama2.c merges the leftmost and HF the lower-ranked split.
 */
export function llama2cTokenizerJson(tok: Llama2cTokenizer): Record<string, unknown> {
  const n = tok.pieces.length;
  const vocab: Record<string, number> = {};
  const mergeable = new Set<string>();
  for (let id = 0; id < n; id++) {
    const piece = hfPiece(tok, id);
    vocab[piece] = id;
    if (id > LLAMA2C_EOS && !BYTE_PIECE.test(tok.pieces[id])) mergeable.add(piece);
  }
  const merges: Array<{ left: string; right: string; score: number; id: number; k: number }> = [];
  for (let id = LLAMA2C_EOS + 1; id < n; id++) {
    const piece = hfPiece(tok, id);
    if (!mergeable.has(piece)) continue;
    const chars = Array.from(piece);
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join("");
      const right = chars.slice(k).join("");
      if (mergeable.has(left) && mergeable.has(right)) {
        merges.push({ left, right, score: tok.scores[id], id, k });
      }
    }
  }
  merges.sort((a, b) => b.score - a.score || a.id - b.id || a.k - b.k);
  const special = (id: number) => ({
    id,
    content: SPECIAL_NAMES[id],
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0), special(1), special(2)],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "\u2581" },
        { type: "Replace", pattern: { String: " " }, content: "\u2581" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [LLAMA2C_BOS], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => [m.left, m.right]),
    },
  };
}

/** `tokenizer_config.json` for the converted tokenizer. */
export function llama2cTokenizerConfig(maxLength: number): Record<string, unknown> {
  return {
    tokenizer_class: "LlamaTokenizerFast",
    add_bos_token: true,
    add_eos_token: false,
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    pad_token: null,
    model_max_length: maxLength,
    clean_up_tokenization_spaces: false,
  };
}

/** What {@link convertLlama2c} wrote. */
export interface Llama2cConversion {
  /** The Hugging Face directory written. */
  outputDir: string;
  /** The checkpoint's hyperparameters. */
  config: Llama2cConfig;
  /** Names of the files written in outputDir (config.json, model.safetensors, tokenizer files...). */
  files: string[];
  /** Number of parameters (f32 values) written to model.safetensors. */
  parameters: number;
}

/**
 * Converts a llama2.c checkpoint and tokenizer to an HF Llama directory `outputDir`, written atomically (a
 * temporary sibling directory renamed into place). An existing `outputDir` is an error unless `overwrite`.
 */
export async function convertLlama2c(opts: {
  checkpoint: string;
  tokenizer: string;
  outputDir: string;
  overwrite?: boolean;
}): Promise<Llama2cConversion> {
  const read = async (path: string) => {
    try {
      return await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new Llama2cError(`${path}: no such file`);
      throw e;
    }
  };
  const ckpt = readLlama2cCheckpoint(await read(opts.checkpoint), opts.checkpoint);
  const tok = readLlama2cTokenizer(await read(opts.tokenizer), ckpt.config.vocabSize, opts.tokenizer);
  const tensors = hfTensorsOf(ckpt);
  const files = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
  ];
  try {
    await writeDirAtomic(opts.outputDir, async (dir) => {
      await writeJsonAtomic(join(dir, "config.json"), hfConfigOf(ckpt.config));
      await writeJsonAtomic(join(dir, "generation_config.json"), { bos_token_id: 1, eos_token_id: 2 });
      await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
      await writeJsonAtomic(join(dir, "special_tokens_map.json"), {
        bos_token: "<s>",
        eos_token: "</s>",
        unk_token: "<unk>",
      });
      await writeJsonAtomic(join(dir, "tokenizer.json"), llama2cTokenizerJson(tok));
      await writeJsonAtomic(join(dir, "tokenizer_config.json"), llama2cTokenizerConfig(ckpt.config.seqLen));
    }, { overwrite: opts.overwrite });
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) {
      throw new Llama2cError(`${opts.outputDir} already exists (pass --overwrite to replace it)`);
    }
    throw e;
  }
  const parameters = tensors.reduce((s, [, t]) => s + t.bytes.byteLength / 4, 0);
  return { outputDir: opts.outputDir, config: ckpt.config, files, parameters };
}
