/**
 * Draft vocabulary (SpecForge `specforge/data/preprocessing.py` `generate_vocab_mapping_file`,
 * `process_token_dict_to_mappings`).
 *
 * 1. Count supervised tokens: for each sample in order, the ids where loss_mask == 1.
 * 2. If fewer than `draftVocabSize` distinct tokens were seen, pad with ids 0, 1, 2, ... not seen (count 0)
 *    until there are `draftVocabSize` candidates.
 * 3. Keep the `draftVocabSize` most frequent; sort the kept target ids ascending: draft index i ↔ used[i].
 * 4. `d2t[i] = used[i] − i` (int64 offsets: target = i + d2t[i]) and `t2d[v] = 1` iff v is kept (bool over
 *    the target vocabulary).
 *
 * Tie-break (deterministic, and the same as SpecForge's `Counter.most_common`, a stable sort by count):
 * among equal counts the token first counted earlier wins; within one sample new tokens are counted in
 * ascending id order (SpecForge adds each sample's `unique()` ids, which are sorted); padding tokens (count 0)
 * rank after every counted token, ascending. Identical data order therefore gives a byte-identical mapping.
 * When `draftVocabSize == targetVocabSize` the mapping is the identity (d2t all 0, t2d all 1), as SpecForge
 * leaves it.
 */

import { parseSafetensors, type RawTensor, serializeSafetensors } from "../io/safetensors.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { DataError } from "./errors.ts";

/** Supervised-token counts with first-seen order (the tie-break order). */
export class TokenCounter {
  #counts = new Float64Array(1024);
  /** Token ids in first-counted order. */
  readonly order: number[] = [];

  /** Counts the supervised tokens of one sample. */
  add(inputIds: ArrayLike<number>, lossMask: ArrayLike<number>): void {
    const fresh: number[] = [];
    for (let i = 0; i < inputIds.length; i++) {
      if (!lossMask[i]) continue;
      const t = inputIds[i];
      if (!(Number.isInteger(t) && t >= 0)) throw new DataError(`invalid token id ${t}`);
      if (t >= this.#counts.length) {
        let cap = this.#counts.length;
        while (cap <= t) cap *= 2;
        const grown = new Float64Array(cap);
        grown.set(this.#counts);
        this.#counts = grown;
      }
      if (this.#counts[t] === 0) fresh.push(t);
      this.#counts[t]++;
    }
    fresh.sort((a, b) => a - b);
    for (const t of fresh) this.order.push(t);
  }

  /** Count of token `t`. */
  count(t: number): number {
    return t < this.#counts.length ? this.#counts[t] : 0;
  }

  /** Number of distinct supervised tokens. */
  get distinct(): number {
    return this.order.length;
  }
}

/** Counts the supervised tokens of samples given as packed arrays (a TokenizedDataset) or views. */
export function countSupervisedTokens(
  samples: Iterable<{ inputIds: ArrayLike<number>; lossMask: ArrayLike<number> }>,
): TokenCounter {
  const c = new TokenCounter();
  for (const s of samples) c.add(s.inputIds, s.lossMask);
  return c;
}

/** A draft ↔ target vocabulary mapping, as data ready for safetensors. */
export interface VocabMapping {
  /** Vd: size of the draft vocabulary (rows of the draft's lm_head). */
  draftVocabSize: number;
  /** V: size of the target vocabulary. */
  targetVocabSize: number;
  /** int64 [draftVocabSize]: target id of draft i is i + d2t[i]. */
  d2t: BigInt64Array;
  /** bool [targetVocabSize] as 0/1 bytes: whether target v is in the draft vocab. */
  t2d: Uint8Array;
  /** int32 [draftVocabSize]: target id of each draft index (ascending). */
  draftToTarget: Int32Array;
}

function fromUsed(used: Int32Array, targetVocabSize: number): VocabMapping {
  const d2t = new BigInt64Array(used.length);
  const t2d = new Uint8Array(targetVocabSize);
  for (let i = 0; i < used.length; i++) {
    d2t[i] = BigInt(used[i] - i);
    t2d[used[i]] = 1;
  }
  return { draftVocabSize: used.length, targetVocabSize, d2t, t2d, draftToTarget: used };
}

/** The identity mapping (draft vocab = target vocab). */
export function identityVocabMapping(vocabSize: number): VocabMapping {
  const used = new Int32Array(vocabSize);
  for (let i = 0; i < vocabSize; i++) used[i] = i;
  return fromUsed(used, vocabSize);
}

/** Selects the draft vocabulary from supervised-token counts (steps 2–4 of the module note). */
export function selectDraftVocab(
  counter: TokenCounter,
  draftVocabSize: number,
  targetVocabSize: number,
): VocabMapping {
  if (!(Number.isInteger(draftVocabSize) && draftVocabSize > 0)) {
    throw new DataError(`draft_vocab_size must be a positive integer, got ${draftVocabSize}`);
  }
  if (!(Number.isInteger(targetVocabSize) && targetVocabSize >= draftVocabSize)) {
    throw new DataError(
      `draft_vocab_size ${draftVocabSize} exceeds the target vocab_size ${targetVocabSize}`,
    );
  }
  const maxSeen = counter.order.reduce((m, t) => Math.max(m, t), -1);
  if (maxSeen >= targetVocabSize) {
    throw new DataError(`supervised token id ${maxSeen} is outside the target vocab_size ${targetVocabSize}`);
  }
  if (draftVocabSize === targetVocabSize) return identityVocabMapping(targetVocabSize);
  // Candidates in insertion order: counted tokens, then padding ids 0.. not counted.
  const candidates = [...counter.order];
  if (candidates.length < draftVocabSize) {
    for (let t = 0; t < draftVocabSize && candidates.length < draftVocabSize; t++) {
      if (counter.count(t) === 0) candidates.push(t);
    }
  }
  // Array.prototype.sort is stable: equal counts keep insertion order (Counter.most_common's tie-break).
  const ranked = candidates.map((t, rank) => ({ t, n: counter.count(t), rank }));
  ranked.sort((a, b) => b.n - a.n || a.rank - b.rank);
  const used = Int32Array.from(ranked.slice(0, draftVocabSize), (e) => e.t).sort();
  return fromUsed(used, targetVocabSize);
}

/** SpecForge's consistency check: nonzero(t2d) == d2t + arange(draftVocabSize), ascending and in range. */
export function validateVocabMapping(m: VocabMapping, what = "vocab mapping"): void {
  if (m.d2t.length !== m.draftVocabSize || m.t2d.length !== m.targetVocabSize) {
    throw new DataError(
      `${what}: d2t has ${m.d2t.length} entries and t2d ${m.t2d.length}, expected ${m.draftVocabSize} and ${m.targetVocabSize}`,
    );
  }
  let k = 0;
  for (let v = 0; v < m.targetVocabSize; v++) {
    if (m.t2d[v] > 1) throw new DataError(`${what}: t2d[${v}] = ${m.t2d[v]} is not a bool`);
    if (!m.t2d[v]) continue;
    if (k >= m.draftVocabSize) throw new DataError(`${what}: t2d marks more than ${m.draftVocabSize} tokens`);
    const target = k + Number(m.d2t[k]);
    if (target !== v) {
      throw new DataError(`${what}: draft ${k} maps to ${target} by d2t but t2d's ${k}-th token is ${v}`);
    }
    k++;
  }
  if (k !== m.draftVocabSize) {
    throw new DataError(`${what}: t2d marks ${k} tokens, d2t has ${m.draftVocabSize}`);
  }
}

/** The mapping as safetensors tensors `d2t` (I64 [draft]) and `t2d` (BOOL [vocab]). */
export function vocabMappingTensors(m: VocabMapping): Map<string, RawTensor> {
  const d2tBytes = new Uint8Array(m.d2t.length * 8);
  const dv = new DataView(d2tBytes.buffer);
  for (let i = 0; i < m.d2t.length; i++) dv.setBigInt64(8 * i, m.d2t[i], true);
  return new Map<string, RawTensor>([
    ["d2t", { dtype: "I64", shape: [m.draftVocabSize], bytes: d2tBytes }],
    ["t2d", { dtype: "BOOL", shape: [m.targetVocabSize], bytes: new Uint8Array(m.t2d) }],
  ]);
}

/** Writes the mapping as a safetensors file with `d2t` and `t2d`, atomically. */
export async function saveVocabMapping(path: string, m: VocabMapping): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(vocabMappingTensors(m), { format: "pt" }));
}

function mappingFromArrays(
  d2tValues: ArrayLike<number | bigint>,
  t2dValues: ArrayLike<number | boolean>,
  what: string,
): VocabMapping {
  const draft = d2tValues.length;
  const used = new Int32Array(draft);
  for (let i = 0; i < draft; i++) used[i] = i + Number(d2tValues[i]);
  const t2d = Uint8Array.from(t2dValues as ArrayLike<number>, (x) => (x ? 1 : 0));
  const m: VocabMapping = {
    draftVocabSize: draft,
    targetVocabSize: t2d.length,
    d2t: BigInt64Array.from(d2tValues as ArrayLike<number>, (x) => BigInt(x)),
    t2d,
    draftToTarget: used,
  };
  validateVocabMapping(m, what);
  return m;
}

/**
 * Reads a mapping given as a file: safetensors with `d2t` (I64 or I32) and `t2d` (BOOL/U8), or JSON
 * `{"d2t": [...], "t2d": [...]}` (t2d as booleans or 0/1). Checks consistency and, when given, the sizes.
 * (SpecForge's `.pt` pickles are not read: convert with `torch.load` + safetensors `save_file`.)
 */
export async function loadVocabMapping(
  path: string,
  expect: { draftVocabSize?: number; targetVocabSize?: number } = {},
): Promise<VocabMapping> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`vocab mapping file not found: ${path}`);
    throw e;
  }
  let m: VocabMapping;
  if (path.endsWith(".json")) {
    let obj: { d2t?: unknown; t2d?: unknown };
    try {
      obj = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      throw new DataError(`${path}: not valid JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(obj.d2t) || !Array.isArray(obj.t2d)) {
      throw new DataError(`${path}: expected {"d2t": [...], "t2d": [...]}`);
    }
    m = mappingFromArrays(obj.d2t, obj.t2d, path);
  } else if (path.endsWith(".pt") || path.endsWith(".pth")) {
    throw new DataError(
      `${path}: PyTorch pickles are not read; convert it: python -c "import torch; from safetensors.torch import save_file; ` +
        `m = torch.load('${path}'); save_file({'d2t': m['d2t'], 't2d': m['t2d']}, 'vocab_mapping.safetensors')"`,
    );
  } else {
    const { tensors } = parseSafetensors(bytes, path);
    const d2t = tensors.get("d2t");
    const t2d = tensors.get("t2d");
    if (!d2t || !t2d) throw new DataError(`${path}: needs tensors d2t and t2d`);
    const dv = new DataView(d2t.bytes.buffer, d2t.bytes.byteOffset, d2t.bytes.byteLength);
    let d2tValues: BigInt64Array;
    if (d2t.dtype === "I64") {
      d2tValues = BigInt64Array.from(
        { length: d2t.bytes.byteLength / 8 },
        (_, i) => dv.getBigInt64(8 * i, true),
      );
    } else if (d2t.dtype === "I32") {
      d2tValues = BigInt64Array.from(
        { length: d2t.bytes.byteLength / 4 },
        (_, i) => BigInt(dv.getInt32(4 * i, true)),
      );
    } else throw new DataError(`${path}: d2t has dtype ${d2t.dtype}, expected I64`);
    if (t2d.dtype !== "BOOL" && t2d.dtype !== "U8") {
      throw new DataError(`${path}: t2d has dtype ${t2d.dtype}, expected BOOL`);
    }
    m = mappingFromArrays(d2tValues, t2d.bytes, path);
  }
  if (expect.draftVocabSize !== undefined && m.draftVocabSize !== expect.draftVocabSize) {
    throw new DataError(`${path}: draft vocab size ${m.draftVocabSize}, expected ${expect.draftVocabSize}`);
  }
  if (expect.targetVocabSize !== undefined && m.targetVocabSize !== expect.targetVocabSize) {
    throw new DataError(
      `${path}: target vocab size ${m.targetVocabSize}, expected ${expect.targetVocabSize}`,
    );
  }
  return m;
}
